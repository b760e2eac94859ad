import Foundation
import Glibc
import Netlink
import Primitives
import Testing

/// A sandbox with a neighbour: another "host" on the LAN, a namespace joined to the sandbox
/// host by a veth pair (uplink0 <-> eth0) and routed through it.
final class World {
    static let hostIP = "198.51.100.1", neighbourIP = "198.51.100.2"
    /// A second address of the host, on the same link.
    static let otherHostIP = "203.0.113.1"
    static let hostIP6 = "2001:db8:90::1", neighbourIP6 = "2001:db8:90::2"

    let sandbox: Sandbox
    let neighbour: NetworkNamespace
    let neighbourInterface: Int32
    let uplinkMAC: [UInt8]

    /// `agent` false: see `Sandbox.init(agent:)`.
    init(agent: Bool = true) throws {
        sandbox = try Sandbox(agent: agent)
        let neighbourFile = try sandbox.makeNamespaceFile("neighbour")
        neighbour = try NetworkNamespace(path: sandbox.outsidePath(neighbourFile))
        let host = try RouteNetlink.open(in: sandbox.hostNamespace)
        try host.perform(.createVeth(VethSpec(name: "uplink0", peerName: "eth0", peerNamespaceFD: neighbour.fd)))
        let uplink = try host.link(named: "uplink0")!
        uplinkMAC = uplink.mac
        try host.perform([
            .setLink(index: uplink.index, LinkChange(up: true)),
            .addAddress(InterfaceAddress(index: uplink.index, address: IPAddress(World.hostIP)!, prefixLength: 24)),
            .addAddress(InterfaceAddress(index: uplink.index, address: IPAddress(World.otherHostIP)!, prefixLength: 24)),
            .addAddress(InterfaceAddress(index: uplink.index, address: IPAddress(World.hostIP6)!, prefixLength: 64)),
        ])
        let inside = try RouteNetlink.open(in: neighbour)
        let eth0 = try inside.link(named: "eth0")!, lo = try inside.link(named: "lo")!
        neighbourInterface = eth0.index
        try inside.perform([
            .setLink(index: lo.index, LinkChange(up: true)),
            .setLink(index: eth0.index, LinkChange(up: true)),
            .addAddress(InterfaceAddress(index: eth0.index, address: IPAddress(World.neighbourIP)!, prefixLength: 24)),
            .addAddress(InterfaceAddress(index: eth0.index, address: IPAddress("203.0.113.2")!, prefixLength: 24)),
            .addAddress(InterfaceAddress(index: eth0.index, address: IPAddress(World.neighbourIP6)!, prefixLength: 64)),
            .addRoute(.defaultRoute(via: IPAddress(World.hostIP)!)),
            .addRoute(.defaultRoute(via: IPAddress(World.hostIP6)!)),
        ])
        // The link is new: wait (bounded) until neighbour discovery works both ways, so an NS
        // lost while the links came up can't fail a test that is about something else.
        for _ in 0..<10 {
            if try sandbox.run("/usr/bin/nsenter", ["--net=\(neighbourFile)", "/usr/bin/ping", "-6", "-c1", "-W1", World.hostIP6],
                               timeout: 5).ok { break }
        }
    }

    /// The namespace of a container made with `attach --new NAME`.
    func container(_ name: String) throws -> NetworkNamespace {
        try NetworkNamespace(path: sandbox.outsidePath(sandbox.stateDirectory + "/netns/\(name)"))
    }

    func nft(_ arguments: String...) throws -> String {
        let result = try sandbox.run("/usr/sbin/nft", arguments)
        guard result.ok else { throw SandboxError("nft \(arguments.joined(separator: " ")): \(result.stderr)") }
        return result.stdout
    }
}

@Suite("End to end: publishing ports (kernel DNAT)", .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct PublishTests {
    @Test("TCP and UDP reach the container from a neighbour, from the host (its address and 127.0.0.1) and by hairpin; outbound is masqueraded")
    func trafficPaths() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "5353:53/udp")
        try s.netctlOK("attach", "web", "--new", "c2", "--name", "c2")
        let c1 = try world.container("c1"), c2 = try world.container("c2")
        let tcp = try Traffic.listen(in: c1, port: 80)
        let udp = try Traffic.udpSocket(in: c1, port: 53)
        defer { close(tcp.fd); close(udp.fd) }

        // From another host: the container sees the real client address.
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: tcp.fd) == World.neighbourIP)
        #expect(try Traffic.udpRoundTrip(from: world.neighbour, to: World.hostIP, port: 5353, server: udp.fd) == World.neighbourIP)
        // From the host itself, to its own address and to 127.0.0.1.
        for address in [World.hostIP, "127.0.0.1"] {
            #expect(throws: Never.self) { try Traffic.roundTrip(from: s.hostNamespace, to: address, port: 8080, listener: tcp.fd) }
            #expect(throws: Never.self) { try Traffic.udpRoundTrip(from: s.hostNamespace, to: address, port: 5353, server: udp.fd) }
        }
        // Hairpin: a container through the host's address to itself and to a sibling.
        for client in [c1, c2] {
            #expect(try Traffic.roundTrip(from: client, to: World.hostIP, port: 8080, listener: tcp.fd) == "10.90.0.1")
            #expect(try Traffic.udpRoundTrip(from: client, to: World.hostIP, port: 5353, server: udp.fd) == "10.90.0.1")
        }
        // Outbound: the neighbour sees the host's address, and forwarding is on.
        let outside = try Traffic.listen(in: world.neighbour, port: 7000)
        defer { close(outside.fd) }
        let outsideUDP = try Traffic.udpSocket(in: world.neighbour, port: 7000)
        defer { close(outsideUDP.fd) }
        #expect(try Traffic.roundTrip(from: c1, to: World.neighbourIP, port: 7000, listener: outside.fd) == World.hostIP)
        #expect(try Traffic.udpRoundTrip(from: c1, to: World.neighbourIP, port: 7000, server: outsideUDP.fd) == World.hostIP)
        #expect(try s.run("/usr/bin/cat", ["/proc/sys/net/ipv4/ip_forward"]).stdout == "1\n")
    }

    @Test("127.0.0.1 and host-address mappings are unreachable from the LAN, crafted packets to 127.0.0.1 included")
    func localhostIsNotExposed() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "127.0.0.1:8082:80", "-p", "\(World.hostIP):8083:80",
                       "-p", "127.0.0.1:5300:53/udp", "-p", "5301:53/udp")
        let c1 = try world.container("c1")
        let tcp = try Traffic.listen(in: c1, port: 80)
        let udp = try Traffic.udpSocket(in: c1, port: 53)
        defer { close(tcp.fd); close(udp.fd) }

        #expect(throws: Never.self) { try Traffic.roundTrip(from: s.hostNamespace, to: "127.0.0.1", port: 8082, listener: tcp.fd) }
        #expect(try Traffic.tcpBlocked(from: world.neighbour, to: World.hostIP, port: 8082))
        // Bound to one host address: reachable there, not on the host's other address.
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8083, listener: tcp.fd) == World.neighbourIP)
        #expect(try Traffic.tcpBlocked(from: world.neighbour, to: World.otherHostIP, port: 8083))

        // An attacker on the LAN addresses 127.0.0.1 directly to the host's MAC. The control
        // packet, to the host's address, shows the crafted path itself works.
        try Traffic.craftedUDP(in: world.neighbour, interface: world.neighbourInterface, to: world.uplinkMAC,
                               source: World.neighbourIP, destination: "127.0.0.1", port: 5300, payload: Array("attack".utf8))
        try Traffic.craftedUDP(in: world.neighbour, interface: world.neighbourInterface, to: world.uplinkMAC,
                               source: World.neighbourIP, destination: World.hostIP, port: 5301, payload: Array("control".utf8))
        #expect(Traffic.receiveUDP(udp.fd).map { String(decoding: $0.payload, as: UTF8.self) } == "control")
        #expect(Traffic.receiveUDP(udp.fd) == nil)

        // A container addresses the host's 127.0.0.1 through the bridge (where route_localnet
        // is on): a host service on all addresses must not see it.
        let service = try Traffic.udpSocket(in: s.hostNamespace, port: 0)
        defer { close(service.fd) }
        let bridge = try s.hostLinks()["nc-web"]!
        let inside = try RouteNetlink.open(in: c1).link(named: "eth0")!
        try Traffic.craftedUDP(in: c1, interface: inside.index, to: bridge.mac, source: "10.90.0.2",
                               destination: "127.0.0.1", port: service.port, payload: Array("attack".utf8))
        try Traffic.craftedUDP(in: c1, interface: inside.index, to: bridge.mac, source: "10.90.0.2",
                               destination: "10.90.0.1", port: service.port, payload: Array("control".utf8))
        #expect(Traffic.receiveUDP(service.fd).map { String(decoding: $0.payload, as: UTF8.self) } == "control")
        #expect(Traffic.receiveUDP(service.fd) == nil)
    }

    @Test("networks are isolated from each other; siblings on one network are not")
    func isolation() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "a", "--subnet", "10.91.0.0/24")
        try s.netctlOK("network", "create", "b", "--subnet", "10.92.0.0/24")
        try s.netctlOK("attach", "a", "--new", "a1", "--name", "a1")
        try s.netctlOK("attach", "a", "--new", "a2", "--name", "a2")
        try s.netctlOK("attach", "b", "--new", "b1", "--name", "b1")
        let a1 = try world.container("a1"), a2 = try world.container("a2"), b1 = try world.container("b1")
        let inB = try Traffic.listen(in: b1, port: 80), inA = try Traffic.listen(in: a2, port: 80)
        defer { close(inB.fd); close(inA.fd) }
        #expect(try Traffic.tcpBlocked(from: a1, to: "10.92.0.2", port: 80))
        #expect(try Traffic.tcpBlocked(from: b1, to: "10.91.0.3", port: 80))
        #expect(try Traffic.roundTrip(from: a1, to: "10.91.0.3", port: 80, listener: inA.fd) == "10.91.0.2")
        // UDP likewise: nothing from a1 arrives in b1; a1 to its sibling a2 does.
        let udpB = try Traffic.udpSocket(in: b1, port: 53), udpA = try Traffic.udpSocket(in: a2, port: 53)
        defer { close(udpB.fd); close(udpA.fd) }
        let sender = try Traffic.udpSocket(in: a1)
        defer { close(sender.fd) }
        try Traffic.sendUDP(sender.fd, to: "10.92.0.2", port: 53, Array("across".utf8))
        #expect(Traffic.receiveUDP(udpB.fd) == nil)
        #expect(try Traffic.udpRoundTrip(from: a1, to: "10.91.0.3", port: 53, server: udpA.fd) == "10.91.0.2")
    }

    @Test("IPv6: a neighbour reaches a dual-stack container over IPv6, TCP and UDP, with its real address")
    func ipv6() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "six", "--subnet", "10.93.0.0/24", "--subnet6", "fd00:93::/64")
        let out = try s.netctlOK("attach", "six", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "5353:53/udp").stdout
        #expect(out.contains("80/tcp -> [::]:8080"))
        let c1 = try world.container("c1")
        let tcp = try Traffic.listen(in: c1, ipv6: true, port: 80)
        let udp = try Traffic.udpSocket(in: c1, ipv6: true, port: 53)
        defer { close(tcp.fd); close(udp.fd) }
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP6, port: 8080, listener: tcp.fd) == World.neighbourIP6)
        #expect(try Traffic.udpRoundTrip(from: world.neighbour, to: World.hostIP6, port: 5353, server: udp.fd) == World.neighbourIP6)
        // The v4 side of the same mapping still works (the listener is dual-stack).
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: tcp.fd).hasSuffix(World.neighbourIP))
    }

    @Test("UDP conntrack: a sender that never pauses follows a remap to a second container")
    func conntrackFlush() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "5353:53/udp")
        try s.netctlOK("attach", "web", "--new", "c2", "--name", "c2")
        let first = try Traffic.udpSocket(in: try world.container("c1"), port: 53)
        let second = try Traffic.udpSocket(in: try world.container("c2"), port: 53)
        let sender = try Traffic.udpSocket(in: world.neighbour)  // one source port: one conntrack entry
        defer { close(first.fd); close(second.fd); close(sender.fd) }

        let stop = Flag()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            // Bounded: at most 800 datagrams, 10 ms apart.
            for i in 0..<800 where !stop.isSet {
                try? Traffic.sendUDP(sender.fd, to: World.hostIP, port: 5353, Array("n\(i)".utf8))
                usleep(10_000)
            }
            done.signal()
        }
        defer { stop.set(); done.wait() }
        #expect(Traffic.receiveUDP(first.fd) != nil)
        try s.netctlOK("port", "rm", "c1", "53/udp")
        try s.netctlOK("port", "add", "c2", "5353:53/udp")
        #expect(Traffic.receiveUDP(second.fd) != nil, "traffic stayed pinned to the old container")
        // Drain what c1 got before the remap; it gets nothing after.
        var timeout = timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(first.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        while Traffic.receiveUDP(first.fd) != nil {}
        #expect(Traffic.receiveUDP(second.fd) != nil)
        #expect(Traffic.receiveUDP(first.fd) == nil)
    }

    @Test("reload restores every mapping after `nft flush ruleset`; gc removes unknown elements and restores lost ones")
    func reloadAndGC() throws {
        // What the commands do by themselves: no agent to put the table back first.
        let world = try World(agent: false)
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "8081:80")
        let tcp = try Traffic.listen(in: try world.container("c1"), port: 80)
        defer { close(tcp.fd) }
        _ = try world.nft("flush", "ruleset")
        #expect(try Traffic.tcpBlocked(from: world.neighbour, to: World.hostIP, port: 8080))
        #expect(try s.netctlOK("reload").stdout.contains("2 map elements"))
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: tcp.fd) == World.neighbourIP)

        _ = try world.nft("add", "element", "inet", "netctl", "v4_any", "{ tcp . 9999 : 10.90.0.50 . 80 }")
        _ = try world.nft("delete", "element", "inet", "netctl", "v4_any", "{ tcp . 8081 }")
        let report = try s.json("gc") as! [String: Any]
        #expect(report["removedMappings"] as? [String] == ["tcp *:9999 -> 10.90.0.50:80"])
        #expect(report["restoredMappings"] as? [String] == ["tcp *:8081 -> 10.90.0.2:80"])
        let listed = try world.nft("list", "map", "inet", "netctl", "v4_any")
        #expect(!listed.contains("9999") && listed.contains("8081"))
        let again = try s.json("gc") as! [String: Any]
        #expect((again["removedMappings"] as? [String])?.isEmpty == true)
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8081, listener: tcp.fd) == World.neighbourIP)
    }

    @Test("detach and network rm leave no element or rule behind")
    func teardownIsComplete() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp")
        try s.netctlOK("detach", "c1")
        #expect(try s.netctlOK("port", "ls").stdout.isEmpty)
        for map in ["v4_any", "v4_host"] { #expect(!(try world.nft("list", "map", "inet", "netctl", map)).contains("elements")) }
        try s.netctlOK("network", "rm", "web")
        let table = try world.nft("list", "table", "inet", "netctl")
        #expect(!table.contains("nc-web") && !table.contains("10.90.0.0"))
    }
}

/// A flag shared with a helper thread.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

@Suite("End to end: port conflicts, bad input and concurrent callers", .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct PortConflictTests {
    /// Everything a refused command must leave as it was: the ports in state and the table.
    func portState(_ world: World) throws -> String {
        try world.sandbox.netctlOK("port", "ls").stdout + (try world.nft("list", "table", "inet", "netctl"))
    }

    func expectRefused(_ world: World, _ arguments: [String], saying text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try portState(world)
        let result = try world.sandbox.run(Sandbox.netctl, arguments)
        #expect(result.status == 1, sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("netctl: error: ") && result.stderr.contains(text), "\(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.split(separator: "\n").count == 1, sourceLocation: sourceLocation)
        #expect(try portState(world) == before, "a refused command changed something", sourceLocation: sourceLocation)
    }

    @Test("a claimed host port, a port held by another program and bad specs are refused with one line, changing nothing")
    func refusals() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "web1", "-p", "8080:80", "-p", "\(World.hostIP):9090:90")
        try s.netctlOK("attach", "web", "--new", "c2", "--name", "web2")
        try expectRefused(world, ["port", "add", "web2", "8080:80"], saying: "port 8080/tcp is already published on all addresses by endpoint web1")
        // All addresses against one address, both ways round.
        try expectRefused(world, ["port", "add", "web2", "\(World.hostIP):8080:80"], saying: "by endpoint web1")
        try expectRefused(world, ["port", "add", "web2", "9090:90"], saying: "port 9090/tcp is already published on \(World.hostIP)")
        // Another address, or another protocol, is free.
        try s.netctlOK("port", "add", "web2", "\(World.otherHostIP):9090:90", "8080:80/udp")

        // A port some program listens on.
        let program = try Traffic.listen(in: s.hostNamespace, port: 0)
        defer { close(program.fd) }
        try expectRefused(world, ["port", "add", "web2", "\(program.port):80"], saying: "host port \(program.port)/tcp is in use by another program")
        // A batch with one bad mapping publishes none of them.
        try expectRefused(world, ["port", "add", "web2", "7001:80", "8080:81"], saying: "already published")
        try expectRefused(world, ["port", "add", "web2", "10.1.2.3:7002:80"], saying: "host address 10.1.2.3 is not assigned")
        try expectRefused(world, ["port", "add", "web2", "[::1]:7003:80"], saying: "the kernel does not DNAT from ::1")
        try expectRefused(world, ["port", "add", "web2", "80:80/icmp"], saying: "unknown protocol")
        try expectRefused(world, ["port", "add", "nobody", "7004:80"], saying: "no endpoint named nobody")
        try expectRefused(world, ["port", "rm", "web1", "7777"], saying: "endpoint web1 has no published port matching 7777")
        // An attach whose -p is refused leaves no endpoint behind.
        try expectRefused(world, ["attach", "web", "--new", "c3", "--name", "web3", "-p", "8080:80"], saying: "already published")
        #expect(try s.run(Sandbox.netctl, ["endpoints"]).stdout.contains("web3") == false)
        #expect(!FileManager.default.fileExists(atPath: s.outsidePath(s.stateDirectory + "/netns/c3")))

        // A host range skips the port that is taken; a dynamic port is in the ephemeral range.
        let ranged = try s.json("port", "add", "web2", "8079-8081:80") as! [[String: Any]]
        #expect(ranged.first?["hostPort"] as? Int == 8079)
        let again = try s.json("port", "add", "web2", "8079-8081:81") as! [[String: Any]]
        #expect(again.first?["hostPort"] as? Int == 8081)
        let dynamic = try s.json("port", "add", "web2", "82") as! [[String: Any]]
        let port = dynamic.first?["hostPort"] as? Int ?? 0
        #expect((32768...60999).contains(port))
        #expect(try s.netctlOK("port", "ls", "web2").stdout.contains("82/tcp -> 0.0.0.0:\(port)"))
        try expectRefused(world, ["port", "add", "web2", "8079-8081:83"], saying: "no free tcp host port in 8079-8081")
    }

    @Test("concurrent callers publishing at once: every mapping lands, none twice, state and kernel agree")
    func concurrentPublishers() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        for i in 1...2 { try s.netctlOK("attach", "web", "--new", "c\(i)", "--name", "web\(i)") }
        var children: [Child] = []
        for i in 0..<6 {
            children.append(try s.startNetctl(["port", "add", "web\(i % 2 + 1)", "\(9100 + i):80", "\(90 + i)"]))
        }
        // Two callers race for one port: exactly one wins.
        children.append(try s.startNetctl(["port", "add", "web1", "9200:80"]))
        children.append(try s.startNetctl(["port", "add", "web2", "9200:80"]))
        let statuses = try children.map { try $0.wait(timeout: 60) }
        #expect(statuses.prefix(6).allSatisfy { $0 == 0 })
        #expect(statuses.suffix(2).sorted() == [0, 1])
        let ports = try s.json("port", "ls") as! [[String: Any]]
        #expect(ports.count == 13)
        #expect(Set(ports.map { $0["hostPort"] as! Int }).count == 13)
        let report = try s.json("gc") as! [String: Any]
        #expect((report["removedMappings"] as? [String])?.isEmpty == true)
        #expect((report["restoredMappings"] as? [String])?.isEmpty == true)
    }
}
