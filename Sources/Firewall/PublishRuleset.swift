import CNftables
import Glibc
import Netlink
import Primitives

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

extension DNATMapping: CustomStringConvertible {
    /// e.g. `tcp *:8080 -> 10.0.0.2:80`.
    public var description: String {
        let host = hostIP.map { $0.isIPv4 ? "\($0)" : "[\($0)]" } ?? "*"
        let target = containerIP.isIPv4 ? "\(containerIP)" : "[\(containerIP)]"
        return "\(proto) \(host):\(hostPort) -> \(target):\(containerPort)"
    }
}

/// A bridge network as the firewall sees it: which sources to masquerade, which bridge to
/// isolate, whether anything may leave it.
public struct BridgeNetwork: Hashable, Sendable {
    public var bridge: String
    public var subnet: IPNetwork
    public var subnet6: IPNetwork?
    /// Nothing forwarded in or out, no masquerade.
    public var `internal`: Bool
    /// No traffic with other netctl networks, routed or to their gateway addresses.
    public var isolated: Bool
    /// The host's addresses on the bridge.
    public var gateways: [IPAddress]

    public init(bridge: String, subnet: IPNetwork, subnet6: IPNetwork? = nil, internal: Bool = false, isolated: Bool = true,
                gateways: [IPAddress] = []) {
        self.bridge = bridge; self.subnet = subnet; self.subnet6 = subnet6
        self.internal = `internal`; self.isolated = isolated; self.gateways = gateways
    }
}

/// netctl's own table, `inet netctl`. Every mapping is one element of a map, never a rule,
/// so the rules stay fixed and adding mapping 10,000 costs what mapping 1 does; only
/// networks (a handful) add rules:
///
///     guard (filter, raw):        iifname != "lo" ip daddr 127.0.0.0/8 drop
///     prerouting/output (nat, dstnat): jump publish
///     publish:                    ip daddr . l4proto . dport -> @v4_host, fib daddr local -> @v4_any,
///                                 the same for ipv6: dnat to the map's value
///     forward (filter):           ct status dnat accept; per isolated network: iifname BR
///                                 oifname != BR oifname @bridges drop, and the same the other
///                                 way; per internal network: iifname BR oifname != BR drop,
///                                 oifname BR iifname != BR drop
///     input (filter):             per isolated network: iifname BR ip daddr != its gateway
///                                 ip daddr @gateways4 drop, ip daddr its gateway iifname != BR
///                                 iifname @bridges drop (the same for IPv6): not through the
///                                 host's addresses on other networks either
///     postrouting (nat, srcnat):  ip saddr 127.0.0.0/8 ct status dnat masquerade (host -> 127.0.0.1);
///                                 per network not internal: ip saddr NET oifname != @bridges
///                                 masquerade (outbound), ip saddr NET ct status dnat masquerade
///                                 (hairpin)
///
/// The guard is what makes `route_localnet` (needed on bridges for 127.0.0.1 mappings) safe:
/// nothing from the wire addressed to 127/8 reaches DNAT or a local socket.
public enum PublishRuleset {
    public static let table = "netctl"
    /// Its family (inet), as nftables notifications carry it.
    public static let family = UInt8(NFPROTO_INET)
    static let bridgesSet = "bridges"
    static let bridgesSetID: UInt32 = 10
    static let gatewaySets: [(name: String, id: UInt32, type: NftType, ipv6: Bool)] = [
        ("gateways4", 11, .ipv4, false), ("gateways6", 12, .ipv6, true),
    ]

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

    /// Drops what arrives from the wire for 127/8 (what makes route_localnet safe).
    public static let guardChain = "guard"

    static let chains: [(name: String, hook: (type: String, number: UInt32, priority: Int32)?)] = [
        (guardChain, ("filter", UInt32(NF_INET_PRE_ROUTING.rawValue), -300)),
        ("publish", nil),
        ("prerouting", ("nat", UInt32(NF_INET_PRE_ROUTING.rawValue), -100)),
        ("output", ("nat", UInt32(NF_INET_LOCAL_OUT.rawValue), -100)),
        ("forward", ("filter", UInt32(NF_INET_FORWARD.rawValue), 0)),
        ("input", ("filter", UInt32(NF_INET_LOCAL_IN.rawValue), 0)),
        ("postrouting", ("nat", UInt32(NF_INET_POST_ROUTING.rawValue), 100)),
    ]

    /// A second guard, in a table of its own owned by a resident process's socket (netctl's
    /// agent): `nft flush ruleset` and other programs cannot remove it, so 127/8 stays
    /// unreachable from the wire while the main table is being put back. It goes with the
    /// process; the main table keeps its own guard.
    public static let ownedGuardTable = "netctl-guard"

    public static func ownedGuard() -> NftBatch {
        var batch = NftBatch()
        batch.addTable(ownedGuardTable, owned: true)
        batch.addChain(table: ownedGuardTable, name: guardChain, hook: ("filter", UInt32(NF_INET_PRE_ROUTING.rawValue), -301))
        batch.addRule(table: ownedGuardTable, chain: guardChain, guardRule)
        // Empty NAT chains at each hook NAT uses: the kernel translates a connection's packets
        // by its conntrack binding only while some NAT chain holds the hook, so without these
        // every published connection in flight broke (reset) in the moment netctl's table was
        // flushed, however fast it came back.
        for (name, hook, priority) in [("nat-prerouting", NF_INET_PRE_ROUTING, Int32(-100)), ("nat-input", NF_INET_LOCAL_IN, 100),
                                       ("nat-output", NF_INET_LOCAL_OUT, -100), ("nat-postrouting", NF_INET_POST_ROUTING, 100)] {
            batch.addChain(table: ownedGuardTable, name: name, hook: ("nat", UInt32(hook.rawValue), priority))
        }
        return batch
    }

    /// iifname != "lo" ip daddr 127.0.0.0/8 drop
    static var guardRule: [NftExpression] {
        let nfproto: NftExpression = .meta(key: UInt32(NFT_META_NFPROTO.rawValue), into: NftExpression.reg1)
        let ipv4: NftExpression = .compare(register: NftExpression.reg1, op: eq, data: [UInt8(NFPROTO_IPV4)])
        return [.meta(key: UInt32(NFT_META_IIFNAME.rawValue), into: NftExpression.reg1),
                .compare(register: NftExpression.reg1, op: neq, data: ifname("lo")),
                nfproto, ipv4] + source(IPNetwork("127.0.0.0/8")!, destination: true) + [.verdict(Int32(NF_DROP))]
    }

    /// The whole table in one batch, replacing whatever is there: `nft flush ruleset`, a
    /// stale table from a crash or elements nobody knows are all repaired atomically.
    public static func rebuild(networks: [BridgeNetwork], mappings: [DNATMapping]) -> NftBatch {
        var batch = NftBatch()
        batch.addTable(table)     // create-if-missing, so that the delete below cannot fail
        batch.deleteTable(table)
        appendRules(networks: networks, to: &batch)
        add(mappings, to: &batch)
        return batch
    }

    private static func appendRules(networks: [BridgeNetwork], to batch: inout NftBatch) {
        batch.addTable(table)
        for map in Map.allCases {
            batch.addMap(table: table, name: map.rawValue, id: map.id, key: map.key, data: map.data)
        }
        batch.addMap(table: table, name: bridgesSet, id: bridgesSetID, key: .ifname, data: nil)
        for set in gatewaySets { batch.addMap(table: table, name: set.name, id: set.id, key: set.type, data: nil) }
        for chain in chains { batch.addChain(table: table, name: chain.name, hook: chain.hook) }
        let ipv4: NftExpression = .compare(register: NftExpression.reg1, op: eq, data: [UInt8(NFPROTO_IPV4)])
        let nfproto: NftExpression = .meta(key: UInt32(NFT_META_NFPROTO.rawValue), into: NftExpression.reg1)
        let dnatted: [NftExpression] = [
            .ct(key: UInt32(NFT_CT_STATUS.rawValue), into: NftExpression.reg1),
            .bitwise(register: NftExpression.reg1, mask: bytes(of: UInt32(0x20) /* IPS_DST_NAT */)),
            .compare(register: NftExpression.reg1, op: neq, data: bytes(of: UInt32(0))),
        ]
        let loopback = IPNetwork("127.0.0.0/8")!
        let masquerade: [NftExpression] = [.masquerade]
        let accept: [NftExpression] = [.verdict(Int32(NF_ACCEPT))]
        let drop: [NftExpression] = [.verdict(Int32(NF_DROP))]

        batch.addRule(table: table, chain: guardChain, guardRule)
        for map in Map.allCases { batch.addRule(table: table, chain: "publish", rule(for: map)) }
        for chain in ["prerouting", "output"] {
            batch.addRule(table: table, chain: chain, [.verdict(NFT_JUMP.rawValue, chain: "publish")])
        }
        batch.addRule(table: table, chain: "forward", dnatted + accept)
        batch.addRule(table: table, chain: "postrouting", [nfproto, ipv4] + source(loopback) + dnatted + masquerade)
        let iif: NftExpression = .meta(key: UInt32(NFT_META_IIFNAME.rawValue), into: NftExpression.reg1)
        let oif: NftExpression = .meta(key: UInt32(NFT_META_OIFNAME.rawValue), into: NftExpression.reg1)
        for network in networks.sorted(by: { $0.bridge < $1.bridge }) {
            let name = ifname(network.bridge)
            let isBridge: NftExpression = .compare(register: NftExpression.reg1, op: eq, data: name)
            let isNotBridge: NftExpression = .compare(register: NftExpression.reg1, op: neq, data: name)
            if network.internal {
                // Nothing leaves and nothing is routed in.
                batch.addRule(table: table, chain: "forward", [iif, isBridge, oif, isNotBridge] + drop)
                batch.addRule(table: table, chain: "forward", [oif, isBridge, iif, isNotBridge] + drop)
            } else if network.isolated {
                // Nothing routed to or from another netctl network, either way (an open one's
                // datagrams included).
                let otherBridge: NftExpression = .lookup(register: NftExpression.reg1, set: bridgesSet, setID: bridgesSetID, into: nil)
                batch.addRule(table: table, chain: "forward", [iif, isBridge, oif, isNotBridge, otherBridge] + drop)
                batch.addRule(table: table, chain: "forward", [oif, isBridge, iif, isNotBridge, otherBridge] + drop)
            }
            if network.isolated {
                // Nor through the host's addresses on the bridges: not from here to another
                // network's, not from another network to this one's.
                for set in gatewaySets {
                    let own = network.gateways.filter { $0.isIPv4 != set.ipv6 }
                    let family: NftExpression = .compare(register: NftExpression.reg1, op: eq,
                                                         data: [UInt8(set.ipv6 ? NFPROTO_IPV6 : NFPROTO_IPV4)])
                    let destination: NftExpression = .payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue),
                                                              offset: set.ipv6 ? 24 : 16, length: set.ipv6 ? 16 : 4,
                                                              into: NftExpression.reg1)
                    batch.addRule(table: table, chain: "input", [iif, isBridge, nfproto, family, destination] +
                        own.map { .compare(register: NftExpression.reg1, op: neq, data: $0.bytes) } +
                        [.lookup(register: NftExpression.reg1, set: set.name, setID: set.id, into: nil)] + drop)
                    for gateway in own {
                        batch.addRule(table: table, chain: "input", [nfproto, family, destination,
                            .compare(register: NftExpression.reg1, op: eq, data: gateway.bytes), iif, isNotBridge,
                            .lookup(register: NftExpression.reg1, set: bridgesSet, setID: bridgesSetID, into: nil)] + drop)
                    }
                }
            }
            guard !network.internal else { continue }
            for subnet in [network.subnet] + [network.subnet6].compactMap({ $0 }) {
                let family: NftExpression = .compare(register: NftExpression.reg1, op: eq,
                                                     data: [UInt8(subnet.isIPv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)])
                // Outbound, not to another netctl network (an open one's peers see who calls).
                batch.addRule(table: table, chain: "postrouting", [nfproto, family] + source(subnet) +
                    [oif, .notInSet(register: NftExpression.reg1, set: bridgesSet, setID: bridgesSetID)] + masquerade)
                batch.addRule(table: table, chain: "postrouting", [nfproto, family] + source(subnet) + dnatted + masquerade)
            }
        }
        let bridges = networks.map { (key: ifname($0.bridge), data: [UInt8]?.none) }
        if !bridges.isEmpty { batch.setElements(table: table, set: bridgesSet, bridges) }
        for set in gatewaySets {
            let gateways = Set(networks.flatMap(\.gateways).filter { $0.isIPv4 != set.ipv6 }).sorted().map { (key: $0.bytes, data: [UInt8]?.none) }
            if !gateways.isEmpty { batch.setElements(table: table, set: set.name, gateways) }
        }
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

    static let eq = UInt32(NFT_CMP_EQ.rawValue), neq = UInt32(NFT_CMP_NEQ.rawValue)

    /// `ip saddr NET` (or daddr) as nft writes it: the prefix's bytes when it ends on a
    /// byte, else the whole address under a mask.
    static func source(_ network: IPNetwork, destination: Bool = false) -> [NftExpression] {
        let length = network.prefixLength % 8 == 0 ? network.prefixLength / 8 : network.address.bytes.count
        let offset: UInt32 = network.isIPv4 ? (destination ? 16 : 12) : (destination ? 24 : 8)
        let address = Array(network.address.bytes.prefix(length))
        var expressions: [NftExpression] = [.payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: offset,
                                                     length: UInt32(length), into: NftExpression.reg1)]
        if network.prefixLength % 8 != 0 {
            let mask = (0..<length).map { i -> UInt8 in
                let bits = min(max(network.prefixLength - i * 8, 0), 8)
                return UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            }
            expressions.append(.bitwise(register: NftExpression.reg1, mask: mask))
        }
        return expressions + [.compare(register: NftExpression.reg1, op: eq, data: address)]
    }

    /// An interface name as nft compares it: zero-padded to IFNAMSIZ.
    static func ifname(_ name: String) -> [UInt8] {
        let raw = Array(name.utf8.prefix(15))
        return raw + [UInt8](repeating: 0, count: 16 - raw.count)
    }

    static func bytes(of value: UInt32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    private static func rule(for map: Map) -> [NftExpression] {
        let nfproto: UInt8 = map.ipv6 ? UInt8(NFPROTO_IPV6) : UInt8(NFPROTO_IPV4)
        var expressions: [NftExpression] = [
            .meta(key: UInt32(NFT_META_NFPROTO.rawValue), into: NftExpression.reg1),
            .compare(register: NftExpression.reg1, op: eq, data: [nfproto]),
        ]
        if map.byHost {
            // ip daddr / ip6 daddr into the concatenation's first field.
            expressions.append(.payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: map.ipv6 ? 24 : 16,
                                        length: map.ipv6 ? 16 : 4, into: NftExpression.reg1))
        } else {
            expressions += [.fibDestinationType(into: NftExpression.reg1),
                            .compare(register: NftExpression.reg1, op: eq, data: bytes(of: 2 /* RTN_LOCAL */))]
            if map.ipv6 {
                // ::1 is local too, but the kernel can't send its traffic out of a bridge: leave
                // it to local listeners (and to the proxy backend) instead of black-holing it.
                expressions += [.payload(base: UInt32(NFT_PAYLOAD_NETWORK_HEADER.rawValue), offset: 24, length: 16, into: NftExpression.reg1),
                                .compare(register: NftExpression.reg1, op: neq, data: IPAddress("::1")!.bytes)]
            }
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

    /// The mapping an element of `map` encodes (the inverse of `key` and `data`).
    static func decode(_ map: Map, key: [UInt8], data: [UInt8]) -> DNATMapping? {
        let width = map.ipv6 ? 16 : 4
        let hostLength = map.byHost ? width : 0
        guard key.count == hostLength + 8, data.count == width + 4,
              let proto = DNATMapping.Proto(rawValue: key[hostLength]),
              let containerIP = IPAddress(bytes: Array(data.prefix(width))) else { return nil }
        return DNATMapping(hostIP: map.byHost ? IPAddress(bytes: Array(key.prefix(width))) : nil, proto: proto,
                           hostPort: UInt16(key[hostLength + 4]) << 8 | UInt16(key[hostLength + 5]),
                           containerIP: containerIP, containerPort: UInt16(data[width]) << 8 | UInt16(data[width + 1]))
    }
}
