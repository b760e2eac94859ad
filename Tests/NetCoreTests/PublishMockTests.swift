import CNetlink
import Glibc
import Netlink
import TestSupport
import Testing
@testable import NetCore

/// Publishing over mock netlink sockets: the exact nftables requests, and what a kernel
/// refusal leaves behind (nothing). No root needed.
@Suite("Publishing over a mock firewall socket")
struct PublishMockTests {
    static let newSetElem: UInt16 = 10 << 8 | 12, delTable: UInt16 = 10 << 8 | 2

    @Test("one mapping is one element in one batch: key tcp . 18080, value 10.88.0.2 . 80")
    func exactRequest() throws {
        let mock = try MockManager(web: true), firewall = mock.firewall
        defer { mock.remove() }
        let published = try mock.manager.publish(endpoint: "web1", [PortMapping(hostPort: 18080, containerPort: 80)])
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
        let mock = try MockManager(web: true), manager = mock.manager
        defer { mock.remove() }
        mock.firewall.responder = { [MockNetlinkSocket.ack($0, error: $0.type == PublishMockTests.newSetElem ? EPERM : 0)] }
        let error = #expect(throws: NetctlError.self) {
            try manager.publish(endpoint: "web1", [PortMapping(hostPort: 18081, containerPort: 80), PortMapping(hostPort: 18082, containerPort: 81)])
        }
        #expect(error?.description.contains("publishing ports of web1") == true)
        #expect(error?.description.contains("unchanged") == true)
        #expect(try manager.ports().isEmpty)
    }

    @Test("a table that went missing is rebuilt from state, this mapping included")
    func rebuildsMissingTable() throws {
        let mock = try MockManager(web: true), firewall = mock.firewall, manager = mock.manager
        defer { mock.remove() }
        var refused = false
        firewall.responder = { message in
            guard message.type == PublishMockTests.newSetElem, !refused else { return nil }
            refused = true
            return [MockNetlinkSocket.ack(message, error: ENOENT)]
        }
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

/// Detaching in the background over a mock host socket: the exact requests. No root needed.
@Suite("Detaching in the background over a mock host socket")
struct RetireMockTests {
    @Test("the host end goes down, off the bridge and into the retired group; its deletion goes to a detached process")
    func retireRequests() throws {
        let mock = try MockManager(), socket = mock.host, manager = mock.manager
        defer { mock.remove() }
        // The kernel's answer to "look up nc00000001": index 7, our endpoint group, peer #3 in namespace id 0.
        socket.responder = { request in
            guard request.type == NetlinkMessageType.getLink else { return nil }
            return linkReply(to: request, index: 7, name: "nc00000001", group: LinkGroups.endpoint, peer: 3)
        }
        let endpoint = webEndpoint(id: "e1", name: "web1", hostInterface: "nc00000001", ip: "10.88.0.2")
        try manager.attachments.retire([endpoint])

        let changes = socket.sent.filter { $0.type == NetlinkMessageType.newLink }
        #expect(changes.count == 1)
        let change = try #require(changes.first)
        // ifinfomsg: index at 4, flags at 8, change mask at 12 (host byte order).
        func word(_ offset: Int) -> UInt32 { change.payload[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        #expect(word(4) == 7)                      // by index
        #expect(word(8) & LinkFlags.up == 0)       // down...
        #expect(word(12) & LinkFlags.up != 0)      // ...as a change
        let attributes = change.attributes(after: 16)
        #expect(attributes.integer(UInt16(IFLA_MASTER), as: Int32.self) == 0)          // off the bridge
        #expect(attributes.integer(UInt16(IFLA_GROUP), as: UInt32.self) == LinkGroups.retired)
        // The namespace /run/netns/x is not the endpoint's (it has no recorded identity): untouched.
        #expect(socket.sent.allSatisfy { $0.type != NetlinkMessageType.delLink })
        #expect(socket.detached.count == 1)
        let deletion = try #require(try NetlinkMessage.parse(socket.detached[0]).first)
        #expect(deletion.type == NetlinkMessageType.delLink)
        #expect(deletion.attributes(after: 16).integer(UInt16(IFLA_GROUP), as: UInt32.self) == LinkGroups.retired)
    }

    @Test("a link that is gone, or no longer netctl's, is left alone and nothing is deleted")
    func retireSkipsForeign() throws {
        let mock = try MockManager(), socket = mock.host, manager = mock.manager
        defer { mock.remove() }
        socket.responder = { request in
            guard request.type == NetlinkMessageType.getLink else { return nil }
            return [MockNetlinkSocket.ack(request, error: ENODEV)]
        }
        try manager.attachments.retire([webEndpoint(id: "e2", name: "web2", hostInterface: "nc00000002", ip: "10.88.0.3", netns: "/run/netns/y")])
        #expect(socket.sent.allSatisfy { $0.type == NetlinkMessageType.getLink })
        #expect(socket.detached.isEmpty)
    }
}
