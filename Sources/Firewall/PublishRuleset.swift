import CNftables
import Glibc
import Netlink

/// One published port on the kernel path: traffic to hostIP:hostPort/proto (any local
/// address when hostIP is nil) is DNATed to containerIP:containerPort.
public struct DNATMapping: Hashable, Sendable {
    public enum Proto: UInt8, Sendable {
        case tcp = 6, udp = 17, sctp = 132
    }

    public var hostIP: IPAddress?
    public var proto: Proto
    public var hostPort: UInt16
    public var containerIP: IPAddress
    public var containerPort: UInt16

    public init(hostIP: IPAddress?, proto: Proto, hostPort: UInt16, containerIP: IPAddress, containerPort: UInt16) {
        self.hostIP = hostIP; self.proto = proto; self.hostPort = hostPort
        self.containerIP = containerIP; self.containerPort = containerPort
    }
}

/// netctl's own table, `inet netctl`. Every mapping is one element of a map, never a rule,
/// so the rules stay fixed and adding mapping 10,000 costs what mapping 1 does:
///
///     chain publish: nfproto ipv4 & ip daddr . l4proto . dport in @v4_host -> dnat to the map's value
///                    nfproto ipv4 & fib daddr type local & l4proto . dport in @v4_any -> dnat
///                    (the same for ipv6)
///     prerouting (nat, dstnat) and output (nat, -100) jump to publish.
public enum PublishRuleset {
    public static let table = "netctl"

    enum Map: String, CaseIterable {
        case v4Host = "v4_host", v4Any = "v4_any", v6Host = "v6_host", v6Any = "v6_any"

        var id: UInt32 { UInt32(Map.allCases.firstIndex(of: self)! + 1) }
        var ipv6: Bool { self == .v6Host || self == .v6Any }
        var byHost: Bool { self == .v4Host || self == .v6Host }

        var key: NftType {
            let address: NftType = ipv6 ? .ipv6 : .ipv4
            return byHost ? .concat(address, .inetProto, .inetService) : .concat(.inetProto, .inetService)
        }

        var data: NftType { .concat(ipv6 ? .ipv6 : .ipv4, .inetService) }
    }

    /// The whole table in one batch, replacing whatever is there: `nft flush ruleset` or a
    /// stale table from a crash are both repaired atomically.
    public static func rebuild(with mappings: [DNATMapping]) -> NftBatch {
        var batch = NftBatch()
        batch.addTable(table)     // create-if-missing, so that the delete below cannot fail
        batch.deleteTable(table)
        batch.addTable(table)
        for map in Map.allCases {
            batch.addMap(table: table, name: map.rawValue, id: map.id, key: map.key, data: map.data)
        }
        batch.addChain(table: table, name: "publish")
        for map in Map.allCases { batch.addRule(table: table, chain: "publish", rule(for: map)) }
        batch.addChain(table: table, name: "prerouting", hook: ("nat", UInt32(NF_INET_PRE_ROUTING.rawValue), -100))
        batch.addRule(table: table, chain: "prerouting", [.verdict(NFT_JUMP.rawValue, chain: "publish")])
        batch.addChain(table: table, name: "output", hook: ("nat", UInt32(NF_INET_LOCAL_OUT.rawValue), -100))
        batch.addRule(table: table, chain: "output", [.verdict(NFT_JUMP.rawValue, chain: "publish")])
        add(mappings, to: &batch)
        return batch
    }

    /// Adds mappings to the table's maps.
    public static func add(_ mappings: [DNATMapping], to batch: inout NftBatch) {
        for (map, elements) in group(mappings) {
            batch.setElements(table: table, set: map.rawValue, elements.map { (key($0), data($0)) })
        }
    }

    /// Removes mappings: only their own elements are touched.
    public static func remove(_ mappings: [DNATMapping], to batch: inout NftBatch) {
        for (map, elements) in group(mappings) {
            batch.setElements(table: table, set: map.rawValue, elements.map { (key($0), nil) }, delete: true)
        }
    }

    private static func group(_ mappings: [DNATMapping]) -> [(Map, [DNATMapping])] {
        let grouped = Dictionary(grouping: mappings) { m -> Map in
            m.containerIP.isIPv4 ? (m.hostIP == nil ? .v4Any : .v4Host) : (m.hostIP == nil ? .v6Any : .v6Host)
        }
        return Map.allCases.compactMap { map in grouped[map].map { (map, $0) } }
    }

    private static func rule(for map: Map) -> [NftExpression] {
        let nfproto: UInt8 = map.ipv6 ? UInt8(NFPROTO_IPV6) : UInt8(NFPROTO_IPV4)
        var expressions: [NftExpression] = [
            .meta(key: UInt32(NFT_META_NFPROTO.rawValue), into: NftExpression.reg1),
            .compare(register: NftExpression.reg1, op: UInt32(NFT_CMP_EQ.rawValue), data: [nfproto]),
        ]
        if map.byHost {
            // ip daddr / ip6 daddr into the concatenation's first field.
            expressions.append(.payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: map.ipv6 ? 24 : 16,
                                        length: map.ipv6 ? 16 : 4, into: NftExpression.reg1))
        } else {
            expressions += [.fibDestinationType(into: NftExpression.reg1),
                            .compare(register: NftExpression.reg1, op: UInt32(NFT_CMP_EQ.rawValue),
                                     data: withUnsafeBytes(of: UInt32(2 /* RTN_LOCAL */)) { Array($0) })]
        }
        // Registers as nft assigns them in a concatenation: 16-byte registers 1-4 overlay the
        // 4-byte registers 8-23 (reg 1 = 8..11, reg 2 = 12..15), each field rounded up to 4 bytes.
        let (protoRegister, portRegister): (UInt32, UInt32) = map.byHost ? (map.ipv6 ? (2, 13) : (9, 10)) : (1, 9)
        expressions += [
            .meta(key: UInt32(NFT_META_L4PROTO.rawValue), into: protoRegister),
            .payload(base: UInt32(NFT_PAYLOAD_TRANSPORT_HEADER.rawValue), offset: 2, length: 2, into: portRegister),
            .lookup(register: NftExpression.reg1, set: map.rawValue, setID: map.id, into: NftExpression.reg1),
            .dnat(family: UInt32(map.ipv6 ? NFPROTO_IPV6 : NFPROTO_IPV4), addressRegister: NftExpression.reg1,
                  portRegister: map.ipv6 ? NftExpression.reg2 : NftExpression.reg9),
        ]
        return expressions
    }

    // Element encodings: each field padded to 4 bytes; ports in network byte order.
    static func key(_ m: DNATMapping) -> [UInt8] {
        (m.hostIP?.bytes ?? []) + [m.proto.rawValue, 0, 0, 0] + port(m.hostPort)
    }

    static func data(_ m: DNATMapping) -> [UInt8] {
        m.containerIP.bytes + port(m.containerPort)
    }

    private static func port(_ p: UInt16) -> [UInt8] { [UInt8(p >> 8), UInt8(p & 0xff), 0, 0] }
}
