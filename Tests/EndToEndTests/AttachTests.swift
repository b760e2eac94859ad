import Foundation
import Glibc
import Netlink
import Primitives
import Testing

/// netctl driven as a user would, on real kernel objects, each test in its own sandbox.
@Suite("End to end: networks and endpoints", .enabled(if: Sandbox.isRoot, "needs root for namespaces and netlink"))
struct AttachTests {
    @Test("two containers on a bridge: host, sibling and gateway traffic; detach leaves nothing")
    func twoContainers() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK("network create web --subnet 10.20.0.0/24".split(separator: " ").map(String.init))
        let web = try #require(try sandbox.json("network", "ls") as? [[String: Any]]).first
        #expect(web?["bridge"] as? String == "nc-web")
        #expect(web?["gateway"] as? String == "10.20.0.1")

        // Container 1: a namespace netctl makes. Container 2: a running process's namespace.
        let c1 = try #require(try sandbox.json("attach", "web", "--new", "c1", "--name", "c1") as? [String: Any])
        let pid = try sandbox.startContainerProcess()
        let c2 = try #require(try sandbox.json("attach", "web", "--pid", "\(pid)", "--name", "c2", "--ifname", "net0") as? [String: Any])
        #expect(c1["ipv4"] as? String == "10.20.0.2/24")
        #expect(c2["ipv4"] as? String == "10.20.0.3/24")
        #expect(c2["interface"] as? String == "net0")

        let ns1 = try NetworkNamespace(path: sandbox.outsidePath(sandbox.stateDirectory + "/netns/c1"))
        let ns2 = try NetworkNamespace(pid: pid)
        // Inside: the address, lo up, a default route via the gateway.
        let inside = try RouteNetlink.open(in: ns1)
        let eth0 = try #require(try inside.link(named: "eth0"))
        #expect(eth0.isUp && eth0.mac == [0x02, 0x6e, 10, 20, 0, 2])
        #expect(try inside.link(named: "lo")?.isUp == true)
        #expect(try inside.addresses().contains(InterfaceAddress(index: eth0.index, address: IPAddress("10.20.0.2")!, prefixLength: 24)))
        #expect(try inside.routes(family: UInt8(AF_INET)).contains { $0.destination == nil && $0.gateway == IPAddress("10.20.0.1") })
        // Host side: the veth end is up, on the bridge, in netctl's group.
        let links = try sandbox.hostLinks()
        let bridge = try #require(links["nc-web"])
        let hostEnd = try #require(links[c1["hostInterface"] as! String])
        #expect(hostEnd.master == bridge.index && hostEnd.isUp && hostEnd.group == LinkGroups.endpoint)

        // Real TCP: host -> each container, container -> container, container -> gateway.
        let l1 = try Traffic.listen(in: ns1), l2 = try Traffic.listen(in: ns2)
        let lh = try Traffic.listen(in: sandbox.hostNamespace)
        defer { close(l1.fd); close(l2.fd); close(lh.fd) }
        #expect(try Traffic.roundTrip(from: sandbox.hostNamespace, to: "10.20.0.2", port: l1.port, listener: l1.fd) == "10.20.0.1")
        try Traffic.roundTrip(from: sandbox.hostNamespace, to: "10.20.0.3", port: l2.port, listener: l2.fd)
        #expect(try Traffic.roundTrip(from: ns1, to: "10.20.0.3", port: l2.port, listener: l2.fd) == "10.20.0.2")
        try Traffic.roundTrip(from: ns2, to: "10.20.0.2", port: l1.port, listener: l1.fd)
        #expect(try Traffic.roundTrip(from: ns1, to: "10.20.0.1", port: lh.port, listener: lh.fd) == "10.20.0.2")

        // Detach both in one call: kernel and state are clean, the netctl-made namespace is gone.
        try sandbox.netctlOK("detach", "c1", "c2")
        // At return the pairs are out of use (deleting them is left to a detached process): no
        // host end is up on the bridge, the interface in the namespace that stays is gone
        // under its name; moments later the pairs are gone.
        #expect(try sandbox.hostLinks().values.allSatisfy { $0.name == "lo" || $0.name == "nc-web" || (!$0.isUp && $0.master == nil) })
        #expect(try RouteNetlink.open(in: ns2).link(named: "net0") == nil)
        #expect(try eventually(5) { try Set(sandbox.hostLinks().keys) == ["lo", "nc-web"] })
        #expect(try (sandbox.json("endpoints") as? [Any])?.isEmpty == true)
        #expect(!FileManager.default.fileExists(atPath: sandbox.stateDirectory + "/netns/c1"))
        try sandbox.netctlOK("network", "rm", "web")
        #expect(try Set(sandbox.hostLinks().keys) == ["lo"])
        #expect(try (sandbox.json("network", "ls") as? [Any])?.isEmpty == true)
    }

    @Test("attach to a bind-mounted namespace file; an address can be asked for")
    func namespaceFileAndFixedAddress() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK("network", "create", "db", "--subnet", "10.30.0.0/16", "--gateway", "10.30.255.254")
        let path = try sandbox.makeNamespaceFile("db1")
        let endpoint = try #require(try sandbox.json("attach", "db", "--netns", path, "--ip", "10.30.1.1",
                                                     "--mac", "02:aa:bb:cc:dd:ee") as? [String: Any])
        #expect(endpoint["ipv4"] as? String == "10.30.1.1/16")
        #expect(endpoint["ownsNetns"] as? Bool == false)
        let ns = try NetworkNamespace(path: sandbox.outsidePath(path))
        #expect(try RouteNetlink.open(in: ns).link(named: "eth0")?.mac == [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
        let listener = try Traffic.listen(in: ns)
        defer { close(listener.fd) }
        try Traffic.roundTrip(from: sandbox.hostNamespace, to: "10.30.1.1", port: listener.port, listener: listener.fd)
        try sandbox.netctlOK("detach", endpoint["name"] as! String)
        // A namespace netctl did not make is left alone, minus our interface.
        #expect(try RouteNetlink.open(in: ns).link(named: "eth0") == nil)
        #expect(try RouteNetlink.open(in: ns).link(named: "lo") != nil)
    }

    @Test("IPv6: dual-stack network, traffic over IPv6 from the host")
    func ipv6() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK("network", "create", "v6", "--subnet", "10.40.0.0/24", "--subnet6", "fd00:40::/64")
        let endpoint = try #require(try sandbox.json("attach", "v6", "--new", "six") as? [String: Any])
        #expect(endpoint["ipv6"] as? String == "fd00:40::2/64")
        #expect(endpoint["gateway6"] as? String == "fd00:40::1")
        let ns = try NetworkNamespace(path: sandbox.outsidePath(sandbox.stateDirectory + "/netns/six"))
        #expect(try RouteNetlink.open(in: ns).routes(family: UInt8(AF_INET6)).contains {
            $0.destination == nil && $0.gateway == IPAddress("fd00:40::1")
        })
        let listener = try Traffic.listen(in: ns, ipv6: true)
        defer { close(listener.fd) }
        #expect(try Traffic.roundTrip(from: sandbox.hostNamespace, to: "fd00:40::2", port: listener.port, listener: listener.fd)
                == "fd00:40::1")
    }

    @Test("the default network is made on first use, on a subnet clear of host routes")
    func defaultNetwork() throws {
        let sandbox = try Sandbox()
        // A host route over 172.17.0.0/16 (as with a running Docker) pushes us to the next pool.
        try sandbox.run("/usr/sbin/ip", ["link", "add", "taken0", "type", "bridge"])
        try sandbox.run("/usr/sbin/ip", ["addr", "add", "172.17.0.1/16", "dev", "taken0"])
        try sandbox.run("/usr/sbin/ip", ["link", "set", "taken0", "up"])
        let endpoint = try #require(try sandbox.json("attach", "--new", "first") as? [String: Any])
        #expect(endpoint["network"] as? String == "netctl")
        #expect(endpoint["ipv4"] as? String == "172.18.0.2/16")
        #expect(try sandbox.hostLinks()["netctl0"]?.isUp == true)
    }

    @Test("network rm refuses while endpoints are attached; --force detaches them")
    func removeNetwork() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK("network", "create", "web", "--subnet", "10.50.0.0/24")
        try sandbox.netctlOK("attach", "web", "--new", "a", "--name", "a")
        try sandbox.netctlOK("attach", "web", "--new", "b", "--name", "b")
        let before = try sandbox.snapshot()
        let refused = try sandbox.netctl("network", "rm", "web")
        #expect(!refused.ok)
        #expect(refused.stderr == "netctl: error: network web has attached endpoints (a, b); detach them or use --force\n")
        #expect(try sandbox.snapshot() == before)
        try sandbox.netctlOK("network", "rm", "web", "--force")
        #expect(try eventually(5) { try Set(sandbox.hostLinks().keys) == ["lo"] })  // the pairs deleted in the background
        #expect(try (sandbox.json("endpoints") as? [Any])?.isEmpty == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory + "/netns").isEmpty)
    }

    @Test("many netctl processes attaching at once never share an address, even when the pool runs out")
    func concurrentAttaches() throws {
        let sandbox = try Sandbox()
        // A /28 has 14 hosts; one is the gateway, so 13 endpoints fit and 3 must fail cleanly.
        try sandbox.netctlOK("network", "create", "small", "--subnet", "10.60.0.0/28")
        let children = try (0..<16).map { i in
            try Child.spawn(["/usr/bin/nsenter", "--target", "\(sandbox.holder.pid)", "--net", "--mount", "--", Sandbox.netctl,
                             "attach", "small", "--new", "n\(i)", "--name", "n\(i)", "--state-dir", sandbox.stateDirectory])
        }
        let results = try children.map { try $0.wait(timeout: 120) }
        #expect(results.filter { $0 == 0 }.count == 13)
        let endpoints = try #require(try sandbox.json("endpoints") as? [[String: Any]])
        let addresses = endpoints.compactMap { $0["ipv4"] as? String }
        #expect(addresses.count == 13 && Set(addresses).count == 13)
        #expect(endpoints.allSatisfy { $0["state"] as? String == "active" })
        // Failed attaches left nothing behind: one veth per endpoint, one namespace each.
        #expect(try sandbox.hostLinks().values.filter { $0.group == LinkGroups.endpoint }.count == 13)
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory + "/netns").count == 13)
        // Detaching many at once goes through one batch and leaves only the bridge.
        try sandbox.netctlOK(["detach"] + endpoints.map { $0["name"] as! String })
        #expect(try eventually(5) { try Set(sandbox.hostLinks().keys) == ["lo", "nc-small"] })
    }
}

extension Sandbox {
    func netctl(_ arguments: [String]) throws -> Result {
        try run(Sandbox.netctl, arguments)
    }
}
