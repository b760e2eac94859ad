import Glibc
import Netlink
import Testing
@testable import NetCore

/// Publishing over mock netlink sockets: the exact nftables requests, and what a kernel
/// refusal leaves behind (nothing). No root needed.
@Suite("Publishing over a mock firewall socket")
struct PublishMockTests {
    static let newSetElem: UInt16 = 10 << 8 | 12, delTable: UInt16 = 10 << 8 | 2

    /// A manager whose state holds one active endpoint, web1 (10.88.0.2), on network web.
    func manager(_ firewall: MockNetlinkSocket, _ directory: String) throws -> NetworkManager {
        let manager = try NetworkManager(stateDirectory: directory, host: RouteNetlink(socket: MockNetlinkSocket()), firewall: firewall)
        try manager.store.transaction {
            try manager.store.insert(Network(name: "web", bridge: "nc-web", subnet: "10.88.0.0/24", gateway: "10.88.0.1",
                                             subnet6: nil, gateway6: nil, mtu: 1500, created: timestamp()))
            try manager.store.insert(Endpoint(id: "e1", name: "web1", network: "web", hostInterface: "nc00000001", interface: "eth0",
                                              mac: "02:6e:0a:58:00:02", ipv4: "10.88.0.2/24", ipv6: nil, gateway: "10.88.0.1",
                                              gateway6: nil, netns: "/run/netns/x", pid: nil, ownsNetns: false, state: .active,
                                              created: timestamp()))
        }
        return manager
    }

    @Test("one mapping is one element in one batch: key tcp . 18080, value 10.88.0.2 . 80")
    func exactRequest() throws {
        let directory = makeTemporaryDirectory()
        defer { removeTree(directory) }
        let firewall = MockNetlinkSocket()
        let published = try manager(firewall, directory).publish(endpoint: "web1", [PortMapping(hostPort: 18080, containerPort: 80)])
        #expect(published == [PublishedPort(endpoint: "web1", proto: .tcp, hostIP: "", hostPort: 18080, containerPort: 80, servesIPv6: false)])
        #expect(firewall.datagrams.count == 1)
        let elements = firewall.sent.filter { $0.type == PublishMockTests.newSetElem }
        #expect(elements.count == 1)
        // The element's key and data sit in the message as nft lays them out.
        let payload = elements[0].payload
        #expect(payload.contains(subsequence: [6, 0, 0, 0, 0x46, 0xa0, 0, 0]))   // tcp . 18080
        #expect(payload.contains(subsequence: [10, 88, 0, 2, 0, 80, 0, 0]))      // 10.88.0.2 . 80
        #expect(payload.contains(subsequence: Array("v4_any".utf8)))
    }

    @Test("a batch the kernel rejects leaves state unchanged and says what failed")
    func rejected() throws {
        let directory = makeTemporaryDirectory()
        defer { removeTree(directory) }
        let firewall = MockNetlinkSocket()
        firewall.responder = { [MockNetlinkSocket.ack($0, error: $0.type == PublishMockTests.newSetElem ? EPERM : 0)] }
        let manager = try manager(firewall, directory)
        let error = #expect(throws: NetctlError.self) {
            try manager.publish(endpoint: "web1", [PortMapping(hostPort: 18081, containerPort: 80), PortMapping(hostPort: 18082, containerPort: 81)])
        }
        #expect(error?.description.contains("publishing ports of web1") == true)
        #expect(error?.description.contains("unchanged") == true)
        #expect(try manager.ports().isEmpty)
    }

    @Test("a table that went missing is rebuilt from state, this mapping included")
    func rebuildsMissingTable() throws {
        let directory = makeTemporaryDirectory()
        defer { removeTree(directory) }
        let firewall = MockNetlinkSocket()
        var refused = false
        firewall.responder = { message in
            guard message.type == PublishMockTests.newSetElem, !refused else { return nil }
            refused = true
            return [MockNetlinkSocket.ack(message, error: ENOENT)]
        }
        let manager = try manager(firewall, directory)
        try manager.publish(endpoint: "web1", [PortMapping(hostPort: 18083, containerPort: 80)])
        #expect(firewall.datagrams.count == 2)
        let rebuild = try NetlinkMessage.parse(firewall.datagrams[1])
        #expect(rebuild.contains { $0.type == PublishMockTests.delTable })
        #expect(rebuild.contains { $0.type == PublishMockTests.newSetElem && $0.payload.contains(subsequence: [6, 0, 0, 0, 0x46, 0xa3, 0, 0]) })
        #expect(try manager.ports().map(\.hostPort) == [18083])
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard subsequence.count <= count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<($0 + subsequence.count)]) == subsequence }
    }
}
