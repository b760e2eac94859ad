import CNetlink
import Glibc
import Primitives
import TestSupport
import Testing
@_spi(Fuzzing) @testable import Netlink

@Suite("Netlink message encoding")
struct MessageBuilderTests {
    @Test("delete by index encodes header and ifinfomsg byte for byte")
    func deleteLinkBytes() {
        let bytes = RouteRequest.deleteLink(index: 7).message.finish(sequence: 42)
        let expected: [UInt8] = [
            32, 0, 0, 0,      // length
            17, 0,            // RTM_DELLINK
            5, 0,             // NLM_F_REQUEST | NLM_F_ACK
            42, 0, 0, 0,      // sequence
            0, 0, 0, 0,       // port id
            0, 0, 0, 0,       // family, pad, type
            7, 0, 0, 0,       // index
            0, 0, 0, 0,       // flags
            0, 0, 0, 0,       // change
        ]
        #expect(bytes == expected)
    }

    @Test("string attributes are NUL-terminated and padded to 4 bytes")
    func stringAttributePadding() {
        var m = MessageBuilder(type: 0, flags: 0)
        m.attribute(3, string: "eth0")  // 4 + 5 bytes, padded to 12
        m.attribute(4, UInt32(1500))
        #expect(Array(m.bytes[16...]) == [9, 0, 3, 0, 0x65, 0x74, 0x68, 0x30, 0, 0, 0, 0,
                                          8, 0, 4, 0, 0xdc, 0x05, 0, 0])
    }

    @Test("IPv4 address request carries local, address and broadcast")
    func addAddressBytes() {
        let request = RouteRequest.addAddress(InterfaceAddress(index: 3, address: IPAddress("10.1.2.3")!, prefixLength: 24))
        let bytes = request.message.finish(sequence: 1)
        let expected: [UInt8] = [
            48, 0, 0, 0, 20, 0, 0x05, 0x06, 1, 0, 0, 0, 0, 0, 0, 0,  // RTM_NEWADDR, REQUEST|ACK|EXCL|CREATE
            2, 24, 0, 0, 3, 0, 0, 0,                                  // AF_INET, /24, index 3
            8, 0, 2, 0, 10, 1, 2, 3,                                  // IFA_LOCAL
            8, 0, 1, 0, 10, 1, 2, 3,                                  // IFA_ADDRESS
            8, 0, 4, 0, 10, 1, 2, 255,                                // IFA_BROADCAST
        ]
        #expect(bytes == expected)
    }

    @Test("IPv6 addresses skip duplicate address detection")
    func ipv6NoDAD() throws {
        let request = RouteRequest.addAddress(InterfaceAddress(index: 3, address: IPAddress("fd00::2")!, prefixLength: 64))
        let message = try #require(try NetlinkMessage.parse(request.message.finish(sequence: 1)).first)
        let attrs = message.attributes(after: 8)
        #expect(message.payload[2] == UInt8(IFA_F_NODAD), "ifaddrmsg's flags")
        #expect(attrs[UInt16(IFA_LOCAL)] == IPAddress("fd00::2")!.bytes && attrs[UInt16(IFA_BROADCAST)] == nil)
        #expect(message.payload[0] == UInt8(AF_INET6) && message.payload[1] == 64)
    }

    @Test("veth request nests the peer, its name and its namespace inside the link info")
    func vethNesting() throws {
        let spec = VethSpec(name: "nc12345678", peerName: "eth0", peerNamespaceFD: 9, peerMAC: [2, 0x6e, 10, 0, 0, 2],
                            mtu: 1500, master: 4, group: LinkGroups.endpoint, up: true)
        let message = try #require(try NetlinkMessage.parse(RouteRequest.createVeth(spec).message.finish(sequence: 3)).first)
        #expect(message.type == NetlinkMessageType.newLink)
        #expect(message.flags == NetlinkFlags.request | NetlinkFlags.ack | NetlinkFlags.create | NetlinkFlags.exclusive)
        #expect(message.payload.readInteger(at: 8, as: UInt32.self) == LinkFlags.up)
        let attrs = message.attributes(after: 16)
        #expect(attrs.string(UInt16(IFLA_IFNAME)) == "nc12345678")
        #expect(attrs.integer(UInt16(IFLA_MASTER), as: Int32.self) == 4)
        #expect(attrs.integer(UInt16(IFLA_GROUP), as: UInt32.self) == LinkGroups.endpoint)
        let info = try #require(attrs.nested(UInt16(IFLA_LINKINFO)))
        #expect(info.string(UInt16(IFLA_INFO_KIND)) == "veth")
        let peerRaw = try #require(info.nested(UInt16(IFLA_INFO_DATA))?[UInt16(VETH_INFO_PEER)])
        let peer = Attributes(peerRaw, from: 16)  // the peer's own ifinfomsg comes first
        #expect(peer.string(UInt16(IFLA_IFNAME)) == "eth0")
        #expect(peer.integer(UInt16(IFLA_NET_NS_FD), as: UInt32.self) == 9)
        #expect(peer[UInt16(IFLA_ADDRESS)] == [2, 0x6e, 10, 0, 0, 2])
        #expect(peer.integer(UInt16(IFLA_MTU), as: UInt32.self) == 1500)
        // One queue each way on both ends: no queue cut (and RCU wait) after creation.
        for side in [attrs, peer] {
            #expect(side.integer(UInt16(IFLA_NUM_TX_QUEUES), as: UInt32.self) == 1)
            #expect(side.integer(UInt16(IFLA_NUM_RX_QUEUES), as: UInt32.self) == 1)
        }
    }

    @Test("default route: gateway, a /0 destination, universe scope, the main table")
    func defaultRoute() throws {
        let request = RouteRequest.addRoute(.defaultRoute(via: IPAddress("172.17.0.1")!))
        let message = try #require(try NetlinkMessage.parse(request.message.finish(sequence: 1)).first)
        #expect(Array(message.payload[0..<8]) == [UInt8(AF_INET), 0, 0, 0, UInt8(RT_TABLE_MAIN.rawValue),
                                                   UInt8(RTPROT_BOOT), UInt8(RT_SCOPE_UNIVERSE.rawValue), UInt8(RTN_UNICAST)])
        let attrs = message.attributes(after: 12)
        #expect(attrs[UInt16(RTA_GATEWAY.rawValue)] == [172, 17, 0, 1])
        #expect(attrs[UInt16(RTA_DST.rawValue)] == [0, 0, 0, 0] && message.payload[1] == 0, "0.0.0.0/0")
        #expect(attrs.integer(UInt16(RTA_TABLE.rawValue), as: UInt32.self) == UInt32(RT_TABLE_MAIN.rawValue))
    }

    @Test("a change by name carries the name (libnl sends one only to rename); hairpin is bridge port data")
    func changeByName() throws {
        let request = RouteRequest.setLink(name: "nc00000001", LinkChange(group: 77, hairpin: true))
        let message = try #require(try NetlinkMessage.parse(request.message.finish(sequence: 5)).first)
        #expect(message.type == NetlinkMessageType.newLink && message.flags == NetlinkFlags.request | NetlinkFlags.ack)
        #expect(message.payload.readInteger(at: 4, as: Int32.self) == 0, "no index: by name")
        let attrs = message.attributes(after: 16)
        #expect(attrs.string(UInt16(IFLA_IFNAME)) == "nc00000001")
        #expect(attrs.integer(UInt16(IFLA_GROUP), as: UInt32.self) == 77)
        let info = try #require(attrs.nested(UInt16(IFLA_LINKINFO)))
        #expect(info.string(UInt16(IFLA_INFO_SLAVE_KIND)) == "bridge")
        #expect(info.nested(UInt16(IFLA_INFO_SLAVE_DATA))?.integer(UInt16(IFLA_BRPORT_MODE), as: UInt8.self) == 1)
        // By index, a new name is a rename.
        let rename = try #require(try NetlinkMessage.parse(RouteRequest.setLink(index: 9, LinkChange(up: false, name: "x")).message.finish(sequence: 6)).first)
        #expect(rename.payload.readInteger(at: 4, as: Int32.self) == 9 && rename.attributes(after: 16).string(UInt16(IFLA_IFNAME)) == "x")
        #expect(rename.payload.readInteger(at: 8, as: UInt32.self) == 0 && rename.payload.readInteger(at: 12, as: UInt32.self) == LinkFlags.up,
                "down, as a change")
    }
}

@Suite("RouteNetlink over a mock socket")
struct RouteNetlinkTests {
    @Test("a batch goes out in one datagram and every acknowledgement is awaited")
    func batchInOneDatagram() throws {
        let socket = MockNetlinkSocket()
        let client = RouteNetlink(socket: socket)
        try client.perform([.setLink(index: 1, LinkChange(up: true)), .deleteLink(index: 2), .deleteLink(index: 3)])
        #expect(socket.datagrams.count == 1)
        #expect(socket.sent.map(\.type) == [NetlinkMessageType.newLink, NetlinkMessageType.delLink, NetlinkMessageType.delLink])
        #expect(Set(socket.sent.map(\.sequence)).count == 3)
    }

    @Test("a kernel error names the operation that failed; ignored errors pass")
    func errorsNameTheOperation() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { [MockNetlinkSocket.ack($0, error: $0.type == NetlinkMessageType.delLink ? ENODEV : EEXIST)] }
        let client = RouteNetlink(socket: socket)
        #expect(throws: NetlinkError(operation: "creating bridge br0", code: EEXIST)) {
            try client.perform(.createBridge(name: "br0"))
        }
        try client.perform(.deleteLink(index: 5).ignoring(ENODEV))
    }

    @Test("many links are deleted with group moves and a single group delete")
    func batchDeleteUsesAGroup() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { request in
            let name = request.attributes(after: 16).string(UInt16(IFLA_IFNAME))
            return [MockNetlinkSocket.ack(request, error: name == "gone" ? ENODEV : 0)]
        }
        try RouteNetlink(socket: socket).deleteLinks(names: ["a", "b", "gone"])
        #expect(socket.datagrams.count == 2)
        let moves = socket.sent.prefix(3)
        let groups = Set(moves.compactMap { $0.attributes(after: 16).integer(UInt16(IFLA_GROUP), as: UInt32.self) })
        #expect(groups.count == 1)
        let group = try #require(groups.first)
        #expect(group >> 24 == 0x6d)
        let delete = try #require(socket.sent.last)
        #expect(delete.type == NetlinkMessageType.delLink)
        #expect(delete.payload.readInteger(at: 4, as: Int32.self) == 0)
        #expect(delete.attributes(after: 16).integer(UInt16(IFLA_GROUP), as: UInt32.self) == group)
    }

    @Test("a link dump is decoded until NLMSG_DONE")
    func linkDump() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { request in
            var link = MessageBuilder(type: NetlinkMessageType.newLink, flags: 2)
            link.ifinfo(index: 4, flags: LinkFlags.up)
            link.attribute(UInt16(IFLA_IFNAME), string: "nc-web")
            link.attribute(UInt16(IFLA_GROUP), LinkGroups.bridge)
            link.nested(UInt16(IFLA_LINKINFO)) { $0.attribute(UInt16(IFLA_INFO_KIND), string: "bridge") }
            let bytes = link.finish(sequence: request.sequence)
            let decoded = try! NetlinkMessage.parse(bytes)[0]
            return [decoded, NetlinkMessage(type: NetlinkMessageType.done, flags: 2, sequence: request.sequence, payload: [0, 0, 0, 0])]
        }
        let links = try RouteNetlink(socket: socket).links()
        #expect(links == [Link(index: 4, name: "nc-web", kind: "bridge", mtu: 0, mac: [], isUp: true, group: LinkGroups.bridge)])
        #expect(socket.sent.first?.flags == NetlinkFlags.request | NetlinkFlags.dump)
    }

    @Test("a missing link is nil, not an error")
    func missingLink() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { [MockNetlinkSocket.ack($0, error: ENODEV)] }
        #expect(try RouteNetlink(socket: socket).link(named: "nope") == nil)
    }
}

@Suite("IP addresses and prefixes")
struct IPAddressTests {
    @Test func parsesAndPrints() {
        #expect(IPAddress("10.0.0.1") == .v4(0x0A00_0001))
        #expect(IPAddress("fd00::1")?.description == "fd00::1")
        #expect(IPAddress("10.0.0.256") == nil)
        #expect(IPAddress("example.com") == nil)
        #expect(IPAddress("10.0.0.1")!.bytes == [10, 0, 0, 1])
    }

    @Test func prefixes() throws {
        let net = try #require(IPNetwork("172.17.0.0/16"))
        #expect(net.contains(IPAddress("172.17.255.254")!))
        #expect(!net.contains(IPAddress("172.18.0.1")!))
        #expect(net.broadcast == IPAddress("172.17.255.255"))
        #expect(IPNetwork("172.17.0.1/16") == nil)
        #expect(IPNetwork("172.17.0.1/16", strict: false) == net)
        #expect(IPNetwork("10.0.0.0/33") == nil)
        #expect(net.overlaps(IPNetwork("172.0.0.0/8")!))
        #expect(!net.overlaps(IPNetwork("172.16.0.0/16")!))
        #expect(IPNetwork("fd00:1::/64")!.size == UInt128(1) << 64)
    }
}

@Suite("Netlink parsing of hostile datagrams")
struct HostileDatagramTests {
    @Test("every prefix and every one-byte corruption of a link, address and route reply decodes or is refused, never crashes")
    func truncatedAndCorrupted() {
        var link = MessageBuilder(type: NetlinkMessageType.newLink, flags: 0)
        link.ifinfo(index: 3)
        link.attribute(UInt16(IFLA_IFNAME), string: "eth0")
        link.attribute(UInt16(IFLA_MTU), UInt32(1500))
        let datagram = link.finish(sequence: 1)
        #expect(Link(try! NetlinkMessage.parse(datagram)[0])?.name == "eth0")
        for length in 0...datagram.count {
            NetlinkFuzzing.exercise(Array(datagram.prefix(length)))
        }
        for index in datagram.indices {
            for value: UInt8 in [0, 1, 0x7f, 0xff] {
                var bad = datagram
                bad[index] = value
                NetlinkFuzzing.exercise(bad)
            }
        }
    }
}
