import CNftables
import Glibc
import Netlink

/// One nftables expression of a rule, as `nft --debug=netlink` prints them.
public enum NftExpression: Equatable, Sendable {
    case meta(key: UInt32, into: UInt32)
    case payload(base: UInt32, offset: UInt32, length: UInt32, into: UInt32)
    /// `fib daddr type` into a register.
    case fibDestinationType(into: UInt32)
    /// A conntrack key (`ct status`, ...) into a register.
    case ct(key: UInt32, into: UInt32)
    /// register = (register & mask) ^ 0, over mask.count bytes.
    case bitwise(register: UInt32, mask: [UInt8])
    case compare(register: UInt32, op: UInt32, data: [UInt8])
    /// A set (`into` nil) or map lookup by name (and by id when the set is made in the same batch).
    case lookup(register: UInt32, set: String, setID: UInt32?, into: UInt32?)
    /// The register's value is not in the set (`!= @set`).
    case notInSet(register: UInt32, set: String, setID: UInt32?)
    case dnat(family: UInt32, addressRegister: UInt32, portRegister: UInt32)
    case masquerade
    /// Constant data into a register (the per-port rule layout tools/bench-dnat compares with).
    case immediateData([UInt8], into: UInt32)
    case verdict(Int32, chain: String? = nil)

    /// nft's register numbering: 1-4 are 16-byte registers, 8-23 the 4-byte ones used for
    /// concatenations.
    public static let reg1: UInt32 = 1, reg2: UInt32 = 2, reg9: UInt32 = 9, reg10: UInt32 = 10

    func build() -> OpaquePointer {
        func make(_ name: String) -> OpaquePointer { nftnl_expr_alloc(name)! }
        switch self {
        case .meta(let key, let register):
            let e = make("meta")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_KEY), key)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_DREG), register)
            return e
        case .payload(let base, let offset, let length, let register):
            let e = make("payload")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_BASE), base)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_LEN), length)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_DREG), register)
            return e
        case .fibDestinationType(let register):
            let e = make("fib")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_FLAGS), UInt32(NFTA_FIB_F_DADDR.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_RESULT), UInt32(NFT_FIB_RESULT_ADDRTYPE.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_DREG), register)
            return e
        case .ct(let key, let register):
            let e = make("ct")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CT_KEY), key)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CT_DREG), register)
            return e
        case .bitwise(let register, let mask):
            let e = make("bitwise")
            let xor = [UInt8](repeating: 0, count: mask.count)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_SREG), register)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_DREG), register)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
            mask.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_BITWISE_MASK), $0.baseAddress, UInt32($0.count)) }
            xor.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_BITWISE_XOR), $0.baseAddress, UInt32($0.count)) }
            return e
        case .compare(let register, let op, let data):
            let e = make("cmp")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_SREG), register)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_OP), op)
            data.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_CMP_DATA), $0.baseAddress, UInt32($0.count)) }
            return e
        case .lookup(let register, let set, let setID, let into):
            let e = make("lookup")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SREG), register)
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            if let setID { nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SET_ID), setID) }
            if let into { nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_DREG), into) }
            return e
        case .notInSet(let register, let set, let setID):
            let e = make("lookup")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SREG), register)
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            if let setID { nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SET_ID), setID) }
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_FLAGS), UInt32(NFT_LOOKUP_F_INV.rawValue))
            return e
        case .dnat(let family, let addressRegister, let portRegister):
            let e = make("nat")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_TYPE), UInt32(NFT_NAT_DNAT.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_FAMILY), family)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_REG_ADDR_MIN), addressRegister)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_REG_PROTO_MIN), portRegister)
            return e
        case .masquerade:
            return make("masq")
        case .immediateData(let data, let register):
            let e = make("immediate")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), register)
            data.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_IMM_DATA), $0.baseAddress, UInt32($0.count)) }
            return e
        case .verdict(let verdict, let chain):
            let e = make("immediate")
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), 0)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: verdict))
            if let chain { nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_IMM_CHAIN), chain) }
            return e
        }
    }
}

/// An nftables transaction: messages the kernel applies all together or not at all. Built
/// with libnftnl objects, encoded into one datagram between batch-begin and batch-end.
public struct NftBatch {
    public let family: UInt16
    /// Each message as encoded, sequence number still 0 (set on encoding).
    public private(set) var messages: [[UInt8]] = []
    /// Whether the batch deletes anything (a table, map elements).
    public private(set) var removes = false
    /// Rules added per chain (what a healthy table holds, for checking one).
    public private(set) var ruleCounts: [String: Int] = [:]

    public init(family: UInt16 = UInt16(NFPROTO_INET)) {
        self.family = family
    }

    private static let create = UInt16(NLM_F_CREATE) | UInt16(NLM_F_ACK)

    /// A table. `owned`: it belongs to the socket that sends the batch; nobody else may
    /// change or delete it (`nft flush ruleset` passes it by), and it goes when that socket
    /// closes.
    public mutating func addTable(_ name: String, owned: Bool = false) {
        let table = nftnl_table_alloc()!
        defer { nftnl_table_free(table) }
        nftnl_table_set_u32(table, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(family))
        nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
        if owned { nftnl_table_set_u32(table, UInt16(NFTNL_TABLE_FLAGS.rawValue), UInt32(NFT_TABLE_F_OWNER.rawValue)) }
        append(NFT_MSG_NEWTABLE, flags: NftBatch.create) { nftnl_table_nlmsg_build_payload($0, table) }
    }

    public mutating func deleteTable(_ name: String) {
        let table = nftnl_table_alloc()!
        defer { nftnl_table_free(table) }
        nftnl_table_set_u32(table, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(family))
        nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
        append(NFT_MSG_DELTABLE, flags: UInt16(NLM_F_ACK)) { nftnl_table_nlmsg_build_payload($0, table) }
    }

    /// A chain; a base chain when `hook` is given: (type "nat"/"filter", hook number, priority).
    public mutating func addChain(table: String, name: String, hook: (type: String, number: UInt32, priority: Int32)? = nil) {
        let chain = nftnl_chain_alloc()!
        defer { nftnl_chain_free(chain) }
        nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_FAMILY.rawValue), UInt32(family))
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_NAME.rawValue), name)
        if let hook {
            nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TYPE.rawValue), hook.type)
            nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), hook.number)
            nftnl_chain_set_s32(chain, UInt16(NFTNL_CHAIN_PRIO.rawValue), hook.priority)
            nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_POLICY.rawValue), UInt32(NF_ACCEPT))
        }
        append(NFT_MSG_NEWCHAIN, flags: NftBatch.create) { nftnl_chain_nlmsg_build_payload($0, chain) }
    }

    /// A map (or, with no data type, a set) with concatenated key and data types.
    public mutating func addMap(table: String, name: String, id: UInt32, key: NftType, data: NftType?) {
        let set = nftnl_set_alloc()!
        defer { nftnl_set_free(set) }
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(family))
        nftnl_set_set_str(set, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(set, UInt16(NFTNL_SET_NAME.rawValue), name)
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_ID.rawValue), id)
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_KEY_TYPE.rawValue), key.id)
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_KEY_LEN.rawValue), key.length)
        if key.hostByteOrder {
            // nft reads the key's byte order from the set's user data (a TLV: type 0 =
            // key byte order, 1 = host); without it, `nft list` shows strings reversed.
            let userdata: [UInt8] = [0, 4, 1, 0, 0, 0]
            userdata.withUnsafeBytes { _ = nftnl_set_set_data(set, UInt16(NFTNL_SET_USERDATA.rawValue), $0.baseAddress, UInt32($0.count)) }
        }
        if let data {
            nftnl_set_set_u32(set, UInt16(NFTNL_SET_FLAGS.rawValue), UInt32(NFT_SET_MAP.rawValue))
            nftnl_set_set_u32(set, UInt16(NFTNL_SET_DATA_TYPE.rawValue), data.id)
            nftnl_set_set_u32(set, UInt16(NFTNL_SET_DATA_LEN.rawValue), data.length)
        }
        append(NFT_MSG_NEWSET, flags: NftBatch.create) { nftnl_set_nlmsg_build_payload($0, set) }
    }

    public mutating func addRule(table: String, chain: String, _ expressions: [NftExpression]) {
        let rule = nftnl_rule_alloc()!
        defer { nftnl_rule_free(rule) }
        nftnl_rule_set_u32(rule, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(family))
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        for expression in expressions { nftnl_rule_add_expr(rule, expression.build()) }  // the rule owns them
        ruleCounts[chain, default: 0] += 1
        append(NFT_MSG_NEWRULE, flags: NftBatch.create | UInt16(NLM_F_APPEND)) { nftnl_rule_nlmsg_build_payload($0, rule) }
    }

    /// Adds (or deletes) map elements, key -> data, in messages of bounded size.
    public mutating func setElements(table: String, set name: String, _ elements: [(key: [UInt8], data: [UInt8]?)], delete: Bool = false) {
        for chunk in stride(from: 0, to: elements.count, by: 256).map({ elements[$0..<min($0 + 256, elements.count)] }) {
            let set = nftnl_set_alloc()!
            defer { nftnl_set_free(set) }
            nftnl_set_set_u32(set, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(family))
            nftnl_set_set_str(set, UInt16(NFTNL_SET_TABLE.rawValue), table)
            nftnl_set_set_str(set, UInt16(NFTNL_SET_NAME.rawValue), name)
            for element in chunk {
                let e = nftnl_set_elem_alloc()!
                element.key.withUnsafeBytes { _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
                if let data = element.data {
                    data.withUnsafeBytes { _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) }
                }
                nftnl_set_elem_add(set, e)
            }
            append(delete ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM, flags: delete ? UInt16(NLM_F_ACK) : NftBatch.create) {
                nftnl_set_elems_nlmsg_build_payload($0, set)
            }
        }
    }

    /// The datagram: batch-begin, the messages numbered from `first` + 1, batch-end; and the
    /// sequence numbers that will be acknowledged.
    public func encoded(first: UInt32) -> (datagram: [UInt8], acknowledged: Range<UInt32>) {
        var datagram: [UInt8] = []
        var scratch = [CChar](repeating: 0, count: 64)
        scratch.withUnsafeMutableBufferPointer { buf in
            let begin = nftnl_batch_begin(buf.baseAddress, first)!
            datagram += UnsafeRawBufferPointer(start: begin, count: Int(begin.pointee.nlmsg_len))
        }
        for (i, message) in messages.enumerated() {
            var m = message
            withUnsafeBytes(of: first &+ 1 &+ UInt32(i)) { m.replaceSubrange(8..<12, with: $0) }
            datagram += m
        }
        let endSequence = first &+ 1 &+ UInt32(messages.count)
        scratch.withUnsafeMutableBufferPointer { buf in
            let end = nftnl_batch_end(buf.baseAddress, endSequence)!
            datagram += UnsafeRawBufferPointer(start: end, count: Int(end.pointee.nlmsg_len))
        }
        return (datagram, (first &+ 1)..<endSequence)
    }

    /// libnftnl builds each message in a scratch buffer, copied out. Messages stay far below
    /// its size (element lists are cut into chunks of 256). Not zeroed: libnftnl writes all
    /// it uses, and zeroing 64 KB cost 16 page faults per short-lived process. A plain
    /// allocation: a temporary one this large checks the stack's size, which on the main
    /// thread reads /proc/self/maps.
    private mutating func append(_ type: nf_tables_msg_types, flags: UInt16, _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        let scratch = UnsafeMutablePointer<CChar>.allocate(capacity: 1 << 16)
        defer { scratch.deallocate() }
        let header = nftnl_nlmsg_build_hdr(scratch, UInt16(type.rawValue), family, flags, 0)!
        payload(header)
        messages.append(Array(UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len))))
        if NftBatch.deletions.contains(type) { removes = true }
    }

    private static let deletions: Set<nf_tables_msg_types> = [NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE,
                                                              NFT_MSG_DELSET, NFT_MSG_DELSETELEM, NFT_MSG_DELOBJ]
}

/// nft data types, concatenations included: a type id as nft composes it (6 bits per part)
/// and the key length with each part padded to 4 bytes.
public struct NftType: Equatable, Sendable {
    public let id: UInt32
    public let length: UInt32

    public static let ipv4 = NftType(id: 7, length: 4)
    public static let ipv6 = NftType(id: 8, length: 16)
    public static let inetProto = NftType(id: 12, length: 1)
    public static let inetService = NftType(id: 13, length: 2)
    public static let ifname = NftType(id: 41, length: 16, hostByteOrder: true)
    /// Strings such as interface names; nft needs to be told (see `addMap`).
    public var hostByteOrder = false

    init(id: UInt32, length: UInt32, hostByteOrder: Bool = false) {
        self.id = id; self.length = length; self.hostByteOrder = hostByteOrder
    }

    public static func concat(_ parts: NftType...) -> NftType {
        NftType(id: parts.reduce(0) { $0 << 6 | $1.id }, length: parts.reduce(0) { $0 + ($1.length + 3) / 4 * 4 })
    }
}

/// Sends batches and reports the first failure; the kernel applies a batch all or nothing.
public final class NftClient {
    private let socket: NetlinkSocket
    private var sequence = UInt32(truncatingIfNeeded: time(nil))

    /// The socket's descriptor (see `NetworkManager.holdSocketsUntilExit`).
    public var descriptor: Int32? { socket.descriptor }

    public init(socket: NetlinkSocket) {
        self.socket = socket
    }

    public convenience init() throws {
        self.init(socket: try LibnlSocket(.netfilter))
    }

    /// Every mapping in the table's maps, as the kernel holds them; nil when the table is
    /// missing (e.g. after `nft flush ruleset`).
    public func mappings() throws -> [DNATMapping]? {
        var found: [DNATMapping] = []
        for map in PublishRuleset.Map.allCases {
            var request = MessageBuilder(type: UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(NFT_MSG_GETSETELEM.rawValue),
                                         flags: NetlinkFlags.request | NetlinkFlags.dump)
            request.nfgen(family: UInt8(NFPROTO_INET))
            request.attribute(UInt16(NFTA_SET_ELEM_LIST_TABLE.rawValue), string: PublishRuleset.table)
            request.attribute(UInt16(NFTA_SET_ELEM_LIST_SET.rawValue), string: map.rawValue)
            sequence &+= 1
            let replies: [NetlinkMessage]
            do {
                replies = try socket.dump(request.finish(sequence: sequence), "listing nftables map \(map.rawValue)")
            } catch let error as NetlinkError where error.code == ENOENT {
                return nil
            }
            for reply in replies {
                guard let list = reply.attributes(after: 4)[UInt16(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue)] else { continue }
                for element in Attributes.list(list) {
                    let fields = Attributes(element.value)
                    let value = UInt16(NFTA_DATA_VALUE.rawValue)
                    guard let key = fields.nested(UInt16(NFTA_SET_ELEM_KEY.rawValue))?[value],
                          let data = fields.nested(UInt16(NFTA_SET_ELEM_DATA.rawValue))?[value],
                          let mapping = PublishRuleset.decode(map, key: key, data: data) else { continue }
                    found.append(mapping)
                }
            }
        }
        return found
    }

    /// How many rules a chain of the netctl table holds; 0 when the chain or table is missing.
    public func ruleCount(chain: String) throws -> Int {
        try ruleCount(table: PublishRuleset.table, chain: chain)
    }

    public func ruleCount(table: String, chain: String) throws -> Int {
        var request = MessageBuilder(type: UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(NFT_MSG_GETRULE.rawValue),
                                     flags: NetlinkFlags.request | NetlinkFlags.dump)
        request.nfgen(family: UInt8(NFPROTO_INET))
        request.attribute(UInt16(NFTA_RULE_TABLE.rawValue), string: table)
        request.attribute(UInt16(NFTA_RULE_CHAIN.rawValue), string: chain)
        sequence &+= 1
        do {
            return try socket.dump(request.finish(sequence: sequence), "listing chain \(chain)").count
        } catch let error as NetlinkError where error.code == ENOENT {
            return 0
        }
    }

    /// Whether a batch sent on this socket deleted something: the kernel then frees what it
    /// deleted after an RCU grace period, and the socket's last close waits for that.
    public private(set) var sentRemovals = false

    public func commit(_ batch: NftBatch, _ operation: String) throws {
        guard !batch.messages.isEmpty else { return }
        if batch.removes { sentRemovals = true }
        let (datagram, acknowledged) = batch.encoded(first: sequence)
        sequence = acknowledged.upperBound &+ 1
        let codes = try socket.transact(datagram, sequences: acknowledged)
        if let code = codes.first(where: { $0 != 0 }) {
            throw NetlinkError(operation: operation, code: code)
        }
    }
}
