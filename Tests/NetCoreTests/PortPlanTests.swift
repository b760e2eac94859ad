import Firewall
import Glibc
import Primitives
import Testing
@testable import NetCore
import TestSupport

@Suite("The publishing plan: the kernel's share and the proxy's")
struct PortPlanTests {
    static let v4Only = webEndpoint(id: "e1", name: "web1", hostInterface: "nc00000001", ip: "10.88.0.2")
    static var dual: Endpoint {
        var e = v4Only
        e.ipv6 = "fd00::2/64"
        e.gateway6 = "fd00::1"
        return e
    }

    func plan(_ hostIP: String, _ backend: PortBackend, _ endpoint: Endpoint, proto: PortMapping.Proto = .tcp) -> (kernel: [String], relays: [String]) {
        let port = PublishedPort(endpoint: endpoint.name, proto: proto, hostIP: hostIP, hostPort: 8080, containerPort: 80,
                                 servesIPv6: endpoint.ipv6 != nil, backend: backend)
        let plan = PortPlan(port, on: endpoint)
        return (plan.kernel.map(\.description), plan.relays.map(\.description))
    }

    @Test("kernel DNAT: one element per family the scope covers and the endpoint has; never a relay")
    func nft() {
        #expect(plan("", .nft, Self.v4Only) == (["tcp *:8080 -> 10.88.0.2:80"], []))
        #expect(plan("", .nft, Self.dual) == (["tcp *:8080 -> 10.88.0.2:80", "tcp *:8080 -> [fd00::2]:80"], []))
        #expect(plan("127.0.0.1", .nft, Self.v4Only) == (["tcp 127.0.0.1:8080 -> 10.88.0.2:80"], []))
        #expect(plan("::", .nft, Self.dual) == (["tcp *:8080 -> [fd00::2]:80"], []))
        #expect(plan("0.0.0.0", .nft, Self.dual, proto: .sctp) == (["sctp *:8080 -> 10.88.0.2:80"], []))
    }

    @Test("the proxy backend relays the whole mapping, IPv6 to IPv4 when the endpoint has no IPv6")
    func proxy() {
        #expect(plan("", .proxy, Self.v4Only) == ([], ["tcp 0.0.0.0:8080 -> 10.88.0.2:80", "tcp [::]:8080 -> 10.88.0.2:80"]))
        #expect(plan("", .proxy, Self.dual) == ([], ["tcp 0.0.0.0:8080 -> 10.88.0.2:80", "tcp [::]:8080 -> [fd00::2]:80"]))
        #expect(plan("127.0.0.1", .proxy, Self.v4Only, proto: .udp) == ([], ["udp 127.0.0.1:8080 -> 10.88.0.2:80"]))
        #expect(plan("::1", .proxy, Self.v4Only) == ([], ["tcp [::1]:8080 -> 10.88.0.2:80"]))
    }

    @Test("auto: the kernel where it can; the proxy for ::1 and for IPv6 to an IPv4-only endpoint")
    func auto() {
        #expect(plan("", .auto, Self.v4Only) == (["tcp *:8080 -> 10.88.0.2:80"], ["tcp [::]:8080 -> 10.88.0.2:80"]))
        #expect(plan("", .auto, Self.dual) == (["tcp *:8080 -> 10.88.0.2:80", "tcp *:8080 -> [fd00::2]:80"],
                                                ["tcp [::1]:8080 -> [fd00::2]:80"]))
        #expect(plan("0.0.0.0", .auto, Self.v4Only) == (["tcp *:8080 -> 10.88.0.2:80"], []))
        #expect(plan("::1", .auto, Self.v4Only) == ([], ["tcp [::1]:8080 -> 10.88.0.2:80"]))
        #expect(plan("::1", .auto, Self.dual) == ([], ["tcp [::1]:8080 -> [fd00::2]:80"]))
        #expect(plan("2001:db8::1", .auto, Self.v4Only) == ([], ["tcp [2001:db8::1]:8080 -> 10.88.0.2:80"]))
        #expect(plan("2001:db8::1", .auto, Self.dual) == (["tcp [2001:db8::1]:8080 -> [fd00::2]:80"], []))
    }

    @Test("SCTP is never relayed, so publishing refuses it where the plan would need the proxy")
    func sctp() throws {
        #expect(plan("::1", .proxy, Self.v4Only, proto: .sctp).relays.isEmpty)
        let mock = try MockManager(web: true)
        defer { mock.remove() }
        #expect { try mock.manager.publish(endpoint: "web1", [PortMapping(hostPort: 9000, containerPort: 9, proto: .sctp)], backend: .auto) }
            throws: { "\($0)".contains("the proxy relays TCP and UDP only") }
        #expect(try mock.manager.ports().isEmpty)
    }
}

@Suite("Who relays an endpoint's proxied ports")
struct RelayClaimTests {
    /// A live process that is not this one, and one that is gone.
    static let other = ProcessIdentity.of(getppid())!
    static let dead = ProcessIdentity(pid: getpid(), startTime: ProcessIdentity.current().startTime + 1)

    /// State with endpoint web1 publishing [::1]:8080 through the proxy.
    func world() throws -> MockManager {
        let mock = try MockManager(web: true)
        try mock.manager.context.store.transaction {
            try mock.manager.context.store.insert(PublishedPort(endpoint: "web1", proto: .tcp, hostIP: "::1", hostPort: 8080, containerPort: 80,
                                                                servesIPv6: false, backend: .auto), endpointID: "e1")
        }
        return mock
    }

    func claim(_ mock: MockManager, _ scope: RelayScope, by owner: ProcessIdentity) throws {
        try mock.manager.context.store.transaction { try mock.manager.context.store.setRelayClaim(scope.key, owner: owner) }
    }

    @Test("a lone claimant of either scope relays the endpoint")
    func alone() throws {
        for scope in [RelayScope.all, .endpoint("web1")] {
            let mock = try world()
            defer { mock.remove() }
            let assigned = try mock.manager.relayAssignment(for: scope)
            #expect(assigned.relays.keys.map(\.description) == ["tcp [::1]:8080 -> 10.88.0.2:80"])
            #expect(assigned.servedBy == nil && assigned.skipped.isEmpty)
            #expect(try mock.manager.context.store.relayClaims()[scope.key] == .current())
            mock.manager.releaseRelays(scope)
            #expect(try mock.manager.context.store.relayClaims().isEmpty)
        }
    }

    @Test("a second claimant of one scope is refused, naming the first")
    func second() throws {
        for scope in [RelayScope.all, .endpoint("web1")] {
            let mock = try world()
            defer { mock.remove() }
            try claim(mock, scope, by: Self.other)
            #expect(throws: NetctlError.relaysClaimed(scope: scope.description, pid: Self.other.pid)) {
                try mock.manager.relayAssignment(for: scope)
            }
        }
    }

    @Test("the shared service leaves an endpoint to its own live service; a scoped one stands aside for a live shared one")
    func exactlyOne() throws {
        let mock = try world()
        defer { mock.remove() }
        try claim(mock, .endpoint("web1"), by: Self.other)
        let shared = try mock.manager.relayAssignment(for: .all)
        #expect(shared.relays.isEmpty && shared.skipped == ["web1": Self.other] && shared.dependsOnOthers)
        mock.manager.releaseRelays(.all)

        let other = try world()
        defer { other.remove() }
        try claim(other, .all, by: Self.other)
        let scoped = try other.manager.relayAssignment(for: .endpoint("web1"))
        #expect(scoped.relays.isEmpty && scoped.servedBy == Self.other && scoped.dependsOnOthers)
        #expect(try other.manager.context.store.relayClaims()[RelayScope.endpoint("web1").key] == nil, "standing aside holds no claim")
    }

    @Test("a dead process's claim is void: the next claimant takes over")
    func deadClaims() throws {
        for (held, asked) in [(RelayScope.all, RelayScope.all), (.endpoint("web1"), .endpoint("web1")),
                              (.endpoint("web1"), .all), (.all, .endpoint("web1"))] {
            let mock = try world()
            defer { mock.remove() }
            try claim(mock, held, by: Self.dead)
            let assigned = try mock.manager.relayAssignment(for: asked)
            #expect(assigned.relays.count == 1 && !assigned.dependsOnOthers, "\(held) held by a dead process, \(asked) asked")
        }
    }
}

@Suite("Which conntrack entries a port change flushes (the filter production runs)")
struct StaleFlowTests {
    func entry(_ destination: String, _ port: UInt16, proto: Int = Int(IPPROTO_UDP)) -> ConntrackClient.Entry {
        let ip = IPAddress(destination)!
        return ConntrackClient.Entry(family: UInt8(ip.isIPv4 ? AF_INET : AF_INET6), proto: UInt8(proto),
                                     source: IPAddress("10.90.0.2"), destination: ip, destinationPort: port)
    }

    @Test("clients of the host port go; a container's own flows, other ports, TCP and other addresses stay")
    func filter() {
        let local: Set = [IPAddress("192.0.2.1")!, IPAddress("192.0.2.2")!]
        let all = PublishedPort(endpoint: "web1", proto: .udp, hostIP: "", hostPort: 5353, containerPort: 53)
        let bound = PublishedPort(endpoint: "web1", proto: .udp, hostIP: "192.0.2.2", hostPort: 6000, containerPort: 53)
        let entries = [
            entry("192.0.2.1", 5353),                   // a client of 5353 on the host's address: goes
            entry("127.0.0.1", 5353),                   // from the host itself: goes
            entry("::1", 5353),                         // from the host itself, IPv6: goes
            entry("8.8.8.8", 5353),                     // a container's flow out to some server: stays
            entry("192.0.2.1", 5354),                   // another port: stays
            entry("192.0.2.1", 5353, proto: Int(IPPROTO_TCP)),  // TCP: stays
            entry("192.0.2.2", 6000),                   // the bound port's own address: goes
            entry("192.0.2.1", 6000),                   // the bound port on another host address: stays
        ]
        let stale = PortPublisher.staleFlows(entries, of: [all, bound], local: local)
        #expect(stale == [entries[0], entries[1], entries[2], entries[6]])
        #expect(PortPublisher.staleFlows(entries, of: [], local: local).isEmpty)
    }
}
