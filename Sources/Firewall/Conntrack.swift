import CNftables
import Glibc
import Netlink
import Primitives

/// Connection tracking over ctnetlink. When a mapping is added or removed, the conntrack
/// entries for its **host** port must go: otherwise a UDP client that never pauses keeps
/// its old entry (and its old DNAT target) forever.
public final class ConntrackClient {
    private let socket: NetlinkSocket
    private var sequence = UInt32(truncatingIfNeeded: time(nil)) &* 7

    public init(socket: NetlinkSocket) {
        self.socket = socket
    }

    public var descriptor: Int32? { socket.descriptor }

    public convenience init() throws {
        self.init(socket: try LibnlSocket(.netfilter))
    }

    /// One tracked flow as the original direction saw it.
    public struct Entry: Equatable, Sendable {
        public var family: UInt8
        public var proto: UInt8
        public var source: IPAddress?
        public var destination: IPAddress?
        public var destinationPort: UInt16
        /// The raw CTA_TUPLE_ORIG attribute, sent back to delete exactly this entry.
        var tuple: [UInt8]

        /// An entry as a dump would give it (`tuple` empty: for deciding which to delete).
        public init(family: UInt8, proto: UInt8, source: IPAddress?, destination: IPAddress?, destinationPort: UInt16) {
            self.init(family: family, proto: proto, source: source, destination: destination, destinationPort: destinationPort, tuple: [])
        }

        init(family: UInt8, proto: UInt8, source: IPAddress?, destination: IPAddress?, destinationPort: UInt16, tuple: [UInt8]) {
            self.family = family; self.proto = proto; self.source = source; self.destination = destination
            self.destinationPort = destinationPort; self.tuple = tuple
        }
    }

    static func messageType(_ message: cntl_msg_types) -> UInt16 {
        UInt16(NFNL_SUBSYS_CTNETLINK) << 8 | UInt16(message.rawValue)
    }

    public func entries() throws -> [Entry] {
        var request = MessageBuilder(type: ConntrackClient.messageType(IPCTNL_MSG_CT_GET),
                                     flags: NetlinkFlags.request | NetlinkFlags.dump)
        request.nfgen(family: UInt8(AF_UNSPEC))
        sequence &+= 1
        return try socket.dump(request.finish(sequence: sequence), "listing conntrack entries")
            .compactMap(ConntrackClient.entry)
    }

    static func entry(_ message: NetlinkMessage) -> Entry? {
        guard message.payload.count >= 4 else { return nil }
        let attributes = message.attributes(after: 4)
        guard let tuple = attributes[UInt16(CTA_TUPLE_ORIG.rawValue)],
              let ip = attributes.nested(UInt16(CTA_TUPLE_ORIG.rawValue))?.nested(UInt16(CTA_TUPLE_IP.rawValue)),
              let proto = attributes.nested(UInt16(CTA_TUPLE_ORIG.rawValue))?.nested(UInt16(CTA_TUPLE_PROTO.rawValue)),
              let number = proto.integer(UInt16(CTA_PROTO_NUM.rawValue), as: UInt8.self) else { return nil }
        let family = message.payload[0]
        let (src, dst) = family == UInt8(AF_INET) ? (CTA_IP_V4_SRC, CTA_IP_V4_DST) : (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        return Entry(family: family, proto: number,
                     source: ip[UInt16(src.rawValue)].flatMap { IPAddress(bytes: $0) },
                     destination: ip[UInt16(dst.rawValue)].flatMap { IPAddress(bytes: $0) },
                     destinationPort: proto.integer(UInt16(CTA_PROTO_DST_PORT.rawValue), as: UInt16.self)
                         .map { UInt16(bigEndian: $0) } ?? 0,
                     tuple: tuple)
    }

    /// Deletes these entries, each by its own tuple. Returns how many went; an entry that
    /// expired meanwhile is not an error.
    @discardableResult
    public func flush(_ entries: [Entry]) throws -> Int {
        guard !entries.isEmpty else { return 0 }
        var datagram: [UInt8] = []
        let first = sequence &+ 1
        for entry in entries {
            var request = MessageBuilder(type: ConntrackClient.messageType(IPCTNL_MSG_CT_DELETE),
                                         flags: NetlinkFlags.request | NetlinkFlags.ack)
            request.nfgen(family: entry.family)
            request.attribute(UInt16(CTA_TUPLE_ORIG.rawValue) | UInt16(NLA_F_NESTED), bytes: entry.tuple)
            sequence &+= 1
            datagram += request.finish(sequence: sequence)
        }
        let codes = try socket.transact(datagram, sequences: first..<(sequence &+ 1))
        if let code = codes.first(where: { $0 != 0 && $0 != ENOENT }) {
            throw NetlinkError(operation: "deleting conntrack entries", code: code)
        }
        return codes.filter { $0 == 0 }.count
    }
}
