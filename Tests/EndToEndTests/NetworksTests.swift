import Foundation
import Glibc
import Netlink
import Primitives
import Testing

extension World {
    /// Default routes inside a namespace: family -> gateway (text).
    func defaultRoutes(_ namespace: NetworkNamespace) throws -> [String] {
        let inside = try RouteNetlink.open(in: namespace)
        return try (inside.routes(family: UInt8(AF_INET)) + inside.routes(family: UInt8(AF_INET6)))
            .filter { $0.destination == nil }.compactMap { $0.gateway.map { "\($0)" } }.sorted()
    }

    func interfaces(_ namespace: NetworkNamespace) throws -> [String] {
        try RouteNetlink.open(in: namespace).links().map(\.name).filter { $0 != "lo" }.sorted()
    }
}

@Suite("End to end: several networks per namespace, internal networks, isolation",
       .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct NetworksTests {
    @Test("a namespace on three networks: eth0, eth1, eth2; one default route per family, moved by priority and detach")
    func severalNetworks() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "a", "--subnet", "10.81.0.0/24", "--subnet6", "fd00:81::/64")
        try s.netctlOK("network", "create", "b", "--subnet", "10.82.0.0/24")
        try s.netctlOK("network", "create", "c", "--subnet", "10.83.0.0/24", "--subnet6", "fd00:83::/64")
        try s.netctlOK("attach", "a", "--new", "x", "--name", "xa", "--ip6", "fd00:81::99", "--mac", "02:00:00:00:81:99")
        let path = s.stateDirectory + "/netns/x"
        let x = try world.container("x")
        try s.netctlOK("attach", "b", "--netns", path, "--name", "xb")
        #expect(try world.interfaces(x) == ["eth0", "eth1"])
        #expect(try world.defaultRoutes(x) == ["10.81.0.1", "fd00:81::1"], "the first network's")
        let endpoints = try s.json("endpoints") as! [[String: Any]]
        let xa = try #require(endpoints.first { $0["name"] as? String == "xa" })
        #expect(xa["ipv6"] as? String == "fd00:81::99/64" && xa["mac"] as? String == "02:00:00:00:81:99")

        // A higher gateway priority takes the default routes; detaching it gives them back.
        try s.netctlOK("attach", "c", "--netns", path, "--name", "xc", "--gateway-priority", "10")
        #expect(try world.interfaces(x) == ["eth0", "eth1", "eth2"])
        #expect(try world.defaultRoutes(x) == ["10.83.0.1", "fd00:83::1"])
        try s.netctlOK("detach", "xc")
        #expect(try world.defaultRoutes(x) == ["10.81.0.1", "fd00:81::1"])
        // The network holding them goes: the next one takes IPv4 (b has no IPv6).
        try s.netctlOK("detach", "xa")
        #expect(try world.defaultRoutes(x) == ["10.82.0.1"])
        #expect(fileExists(s.outsidePath(path)), "the namespace file stays while an endpoint is in it")
        // Traffic out through the network that holds the default route now.
        let outside = try Traffic.listen(in: world.neighbour, port: 7000)
        defer { close(outside.fd) }
        #expect(try Traffic.roundTrip(from: x, to: World.neighbourIP, port: 7000, listener: outside.fd) == World.hostIP)
        // --no-default-route: attached, but the default stays where it is.
        try s.netctlOK("attach", "a", "--netns", path, "--name", "xa2", "--no-default-route")
        #expect(try world.defaultRoutes(x) == ["10.82.0.1"])
        try s.netctlOK("detach", "xb", "xa2")
        #expect(!fileExists(s.outsidePath(path)), "netctl's namespace file goes with its last endpoint")
    }

    @Test("an internal network: its containers talk to each other, nothing goes out or comes in, ports are refused")
    func internalNetwork() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "inner", "--subnet", "10.84.0.0/24", "--internal")
        try s.netctlOK("network", "create", "quiet", "--subnet", "10.86.0.0/24", "--internal", "--disable-dns")
        try s.netctlOK("network", "create", "outer", "--subnet", "10.85.0.0/24")
        try s.netctlOK("attach", "inner", "--new", "i1", "--name", "i1")
        try s.netctlOK("attach", "inner", "--new", "i2", "--name", "i2")
        try s.netctlOK("attach", "outer", "--new", "o1", "--name", "o1")
        try s.netctlOK("attach", "quiet", "--new", "q1", "--name", "q1")
        let i1 = try world.container("i1"), i2 = try world.container("i2"), o1 = try world.container("o1")
        #expect(try world.defaultRoutes(i1).isEmpty, "no route out")
        // Within the network: yes.
        let peer = try Traffic.listen(in: i2, port: 8000)
        defer { close(peer.fd) }
        #expect(try Traffic.roundTrip(from: i1, to: "10.84.0.3", port: 8000, listener: peer.fd) == "10.84.0.2")
        // Out, even with a route added by hand through the bridge (which has its address, for
        // names): no. The same from a network that is not internal: yes (the control).
        try s.run("/usr/bin/nsenter", ["--net=" + s.stateDirectory + "/netns/i1", "/usr/sbin/ip", "route", "add", "default", "via", "10.84.0.1"])
        let outside = try Traffic.listen(in: world.neighbour, port: 7001)
        defer { close(outside.fd) }
        #expect(try Traffic.roundTrip(from: o1, to: World.neighbourIP, port: 7001, listener: outside.fd) == World.hostIP)
        #expect(try Traffic.tcpBlocked(from: i1, to: World.neighbourIP, port: 7001))
        // In: a neighbour routed to the network through the host reaches nothing.
        try s.run("/usr/bin/nsenter", ["--net=" + s.stateDirectory + "/ns-neighbour", "/usr/sbin/ip", "route", "add", "10.84.0.0/24",
                                       "via", World.hostIP])
        #expect(try Traffic.tcpBlocked(from: world.neighbour, to: "10.84.0.3", port: 8000))
        // The bridge of an internal network without names has no address.
        let links = try s.hostLinks()
        let addresses = try RouteNetlink.open(in: s.hostNamespace).addresses()
        #expect(addresses.contains { $0.index == links["nc-inner"]!.index && $0.address == IPAddress("10.84.0.1") })
        #expect(!addresses.contains { $0.index == links["nc-quiet"]!.index && $0.address == IPAddress("10.86.0.1") })
        // Published ports: refused, saying why, changing nothing.
        let refused = try s.netctl("port", "add", "i1", "8080:80")
        #expect(refused.status == 1 && refused.stderr.contains("endpoint i1 is on network inner, which is internal"), "\(refused.stderr)")
        #expect(try s.netctlOK("port", "ls").stdout.isEmpty)
    }

    @Test("isolation: no traffic between two networks, through the host's addresses either; open networks talk")
    func isolation() throws {
        let world = try World()
        let s = world.sandbox
        for (name, subnet, open) in [("p", "10.87.0.0/24", false), ("q", "10.88.0.0/24", false),
                                     ("o1", "10.89.0.0/24", true), ("o2", "10.90.0.0/24", true)] {
            try s.netctlOK(["network", "create", name, "--subnet", subnet] + (open ? ["--no-isolate"] : []))
            try s.netctlOK("attach", name, "--new", "c" + name, "--name", "c" + name)
        }
        let cp = try world.container("cp"), cq = try world.container("cq"), co1 = try world.container("co1"), co2 = try world.container("co2")
        let inQ = try Traffic.listen(in: cq, port: 8000), inO2 = try Traffic.listen(in: co2, port: 8000), inP = try Traffic.listen(in: cp, port: 8000)
        defer { close(inQ.fd); close(inO2.fd); close(inP.fd) }
        #expect(try Traffic.roundTrip(from: co1, to: "10.90.0.2", port: 8000, listener: inO2.fd) == "10.89.0.2", "open to open")
        #expect(try Traffic.tcpBlocked(from: cp, to: "10.88.0.2", port: 8000), "isolated to isolated")
        #expect(try Traffic.tcpBlocked(from: co1, to: "10.87.0.2", port: 8000), "open to isolated")
        #expect(try Traffic.tcpBlocked(from: cp, to: "10.90.0.2", port: 8000), "isolated to open")
        // The host's address on another network: a host service there is out of reach too,
        // while the container's own gateway answers (the control).
        let onQGateway = try Traffic.listen(in: s.hostNamespace, address: "10.88.0.1", port: 9000)
        let onPGateway = try Traffic.listen(in: s.hostNamespace, address: "10.87.0.1", port: 9000)
        defer { close(onQGateway.fd); close(onPGateway.fd) }
        #expect(try Traffic.roundTrip(from: cp, to: "10.87.0.1", port: 9000, listener: onPGateway.fd) == "10.87.0.2")
        #expect(try Traffic.tcpBlocked(from: cp, to: "10.88.0.1", port: 9000))
        #expect(try Traffic.tcpBlocked(from: co1, to: "10.88.0.1", port: 9000))
    }
}
