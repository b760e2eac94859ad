import CNftables
import Glibc
import Netlink
import Primitives
import TestSupport
import Testing
@testable import Firewall

@Suite("Ruleset pieces and conntrack over a mock socket")
struct RulesetTests {
    @Test("map elements decode back to the mapping they encode, in every map")
    func elementRoundTrip() {
        let mappings = [
            DNATMapping(hostIP: nil, proto: .tcp, hostPort: 8080, containerIP: IPAddress("10.0.0.2")!, containerPort: 80),
            DNATMapping(hostIP: IPAddress("192.0.2.1")!, proto: .udp, hostPort: 53, containerIP: IPAddress("10.0.0.3")!, containerPort: 5353),
            DNATMapping(hostIP: nil, proto: .sctp, hostPort: 65535, containerIP: IPAddress("fd00::2")!, containerPort: 1),
            DNATMapping(hostIP: IPAddress("2001:db8::1")!, proto: .tcp, hostPort: 443, containerIP: IPAddress("fd00::3")!, containerPort: 8443),
        ]
        for (mapping, map) in zip(mappings, [PublishRuleset.Map.v4Any, .v4Host, .v6Any, .v6Host]) {
            #expect(PublishRuleset.decode(map, key: PublishRuleset.key(mapping), data: PublishRuleset.data(mapping)) == mapping)
        }
        #expect(PublishRuleset.decode(.v4Host, key: [1, 2, 3], data: []) == nil)
        #expect(mappings[1].description == "udp 192.0.2.1:53 -> 10.0.0.3:5353")
        #expect(mappings[2].description == "sctp *:65535 -> [fd00::2]:1")
    }

    @Test("subnet matches: whole bytes when the prefix ends on one, else the address under a mask")
    func prefixes() {
        let load = { (offset: UInt32, length: UInt32) in
            NftExpression.payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: offset, length: length, into: 1)
        }
        #expect(PublishRuleset.source(IPNetwork("127.0.0.0/8")!, destination: true) ==
                [load(16, 1), .compare(register: 1, op: PublishRuleset.eq, data: [127])])
        #expect(PublishRuleset.source(IPNetwork("10.91.16.0/20")!) ==
                [load(12, 4), .bitwise(register: 1, mask: [0xff, 0xff, 0xf0, 0]),
                 .compare(register: 1, op: PublishRuleset.eq, data: [10, 91, 16, 0])])
        #expect(PublishRuleset.source(IPNetwork("fd00:93::/64")!) ==
                [load(8, 8), .compare(register: 1, op: PublishRuleset.eq, data: [0xfd, 0, 0, 0x93, 0, 0, 0, 0])])
        #expect(PublishRuleset.ifname("nc-web") == Array("nc-web".utf8) + [UInt8](repeating: 0, count: 10))
    }

    @Test("a rebuild replaces the table in one batch: create, delete, then everything again")
    func rebuildShape() throws {
        let socket = MockNetlinkSocket()
        let batch = PublishRuleset.rebuild(networks: [BridgeNetwork(bridge: "nc-web", subnet: IPNetwork("10.90.0.0/24")!)], mappings: [])
        try NftClient(socket: socket).commit(batch, "rebuilding")
        let types = socket.sent.map { $0.type & 0xff }.dropFirst().dropLast()
        // NEWTABLE, DELTABLE, NEWTABLE, then seven sets (four maps, bridges, gateways4 and 6) and
        // seven chains before any rule.
        #expect(Array(types.prefix(3)) == [UInt16(NFT_MSG_NEWTABLE.rawValue), UInt16(NFT_MSG_DELTABLE.rawValue), UInt16(NFT_MSG_NEWTABLE.rawValue)])
        #expect(types.filter { $0 == UInt16(NFT_MSG_NEWSET.rawValue) }.count == 7)
        #expect(types.filter { $0 == UInt16(NFT_MSG_NEWCHAIN.rawValue) }.count == 7)
        // Fixed rules (guard, 4 DNAT, 2 jumps, forward accept, localhost masquerade) + 6 per isolated
        // IPv4 network without a gateway: 2 forward, 2 input (one per family), 2 masquerade.
        #expect(types.filter { $0 == UInt16(NFT_MSG_NEWRULE.rawValue) }.count == 9 + 6)
    }

    /// A conntrack dump reply for one UDP flow, as the kernel encodes it.
    func conntrackReply(sequence: UInt32, destination: [UInt8], port: UInt16) -> NetlinkMessage {
        var m = MessageBuilder(type: ConntrackClient.messageType(IPCTNL_MSG_CT_NEW), flags: UInt16(NLM_F_MULTI))
        m.nfgen(family: UInt8(AF_INET))
        m.nested(UInt16(CTA_TUPLE_ORIG.rawValue)) { tuple in
            tuple.nested(UInt16(CTA_TUPLE_IP.rawValue)) { ip in
                ip.attribute(UInt16(CTA_IP_V4_SRC.rawValue), bytes: [198, 51, 100, 2])
                ip.attribute(UInt16(CTA_IP_V4_DST.rawValue), bytes: destination)
            }
            tuple.nested(UInt16(CTA_TUPLE_PROTO.rawValue)) { proto in
                proto.attribute(UInt16(CTA_PROTO_NUM.rawValue), UInt8(IPPROTO_UDP))
                proto.attribute(UInt16(CTA_PROTO_SRC_PORT.rawValue), UInt16(40000).bigEndian)
                proto.attribute(UInt16(CTA_PROTO_DST_PORT.rawValue), port.bigEndian)
            }
        }
        return try! NetlinkMessage.parse(m.finish(sequence: sequence))[0]
    }

    @Test("conntrack flush: the entries given are deleted by their own tuple; others stay")
    func conntrackFlush() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { request in
            guard request.type == ConntrackClient.messageType(IPCTNL_MSG_CT_GET) else { return nil }
            return [self.conntrackReply(sequence: request.sequence, destination: [198, 51, 100, 1], port: 5353),
                    self.conntrackReply(sequence: request.sequence, destination: [198, 51, 100, 1], port: 9999),
                    NetlinkMessage(type: NetlinkMessageType.done, flags: 0, sequence: request.sequence, payload: [0, 0, 0, 0])]
        }
        let client = ConntrackClient(socket: socket)
        #expect(try client.entries().map(\.destinationPort) == [5353, 9999])
        #expect(try client.flush(try client.entries().filter { $0.destinationPort == 5353 }) == 1)
        let deletes = socket.sent.filter { $0.type == ConntrackClient.messageType(IPCTNL_MSG_CT_DELETE) }
        #expect(deletes.count == 1)
        let tuple = deletes[0].attributes(after: 4).nested(UInt16(CTA_TUPLE_ORIG.rawValue))?.nested(UInt16(CTA_TUPLE_PROTO.rawValue))
        #expect(tuple?.integer(UInt16(CTA_PROTO_DST_PORT.rawValue), as: UInt16.self).map { UInt16(bigEndian: $0) } == 5353)
        #expect(try client.flush([]) == 0)
    }
}
