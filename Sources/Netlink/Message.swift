import CNetlink
import Glibc

/// Netlink header flags and message types we use, typed once so callers never cast.
public enum NetlinkFlags {
    public static let request = UInt16(NLM_F_REQUEST)
    public static let ack = UInt16(NLM_F_ACK)
    public static let dump = UInt16(NLM_F_DUMP)
    public static let create = UInt16(NLM_F_CREATE)
    public static let exclusive = UInt16(NLM_F_EXCL)
    public static let replace = UInt16(NLM_F_REPLACE)
}

public enum NetlinkMessageType {
    public static let error = UInt16(NLMSG_ERROR)
    public static let done = UInt16(NLMSG_DONE)
    public static let newLink = UInt16(RTM_NEWLINK)
    public static let delLink = UInt16(RTM_DELLINK)
    public static let getLink = UInt16(RTM_GETLINK)
    public static let newAddress = UInt16(RTM_NEWADDR)
    public static let delAddress = UInt16(RTM_DELADDR)
    public static let getAddress = UInt16(RTM_GETADDR)
    public static let newRoute = UInt16(RTM_NEWROUTE)
    public static let delRoute = UInt16(RTM_DELROUTE)
    public static let getRoute = UInt16(RTM_GETROUTE)
}

/// The one place netlink messages and their attributes are encoded: a header, a fixed
/// family header (ifinfomsg, ifaddrmsg, rtmsg), then type-length-value attributes, each
/// padded to 4 bytes, nested attributes included. Integers are in host byte order, as
/// netlink wants; addresses are raw network-order bytes.
public struct MessageBuilder {
    public private(set) var bytes: [UInt8]
    public let type: UInt16
    public let flags: UInt16

    public init(type: UInt16, flags: UInt16) {
        self.type = type
        self.flags = flags
        bytes = []
        bytes.reserveCapacity(128)
        append(UInt32(0))  // length, set by finish
        append(type)
        append(flags)
        append(UInt32(0))  // sequence, set by finish
        append(UInt32(0))  // port id: 0 = the kernel assigns/accepts ours
    }

    /// A message encoded elsewhere (by libnl-route), its header flags set to `flags`;
    /// attributes can be appended, and `finish` sets its length and sequence as for any other.
    public init(encoded: [UInt8], flags: UInt16) {
        precondition(encoded.count >= 16, "a netlink message has a 16-byte header")
        type = encoded.readInteger(at: 4, as: UInt16.self)
        self.flags = flags
        bytes = encoded
        withUnsafeBytes(of: flags) { bytes.replaceSubrange(6..<8, with: $0) }
    }

    // MARK: Family headers

    /// struct ifinfomsg (16 bytes).
    public mutating func ifinfo(family: UInt8 = UInt8(AF_UNSPEC), type: UInt16 = 0, index: Int32 = 0,
                                flags: UInt32 = 0, change: UInt32 = 0) {
        append(family); append(UInt8(0)); append(type); append(index); append(flags); append(change)
    }

    /// struct ifaddrmsg (8 bytes).
    public mutating func ifaddr(family: UInt8, prefixLength: UInt8, flags: UInt8 = 0, scope: UInt8 = 0,
                                index: UInt32) {
        append(family); append(prefixLength); append(flags); append(scope); append(index)
    }

    /// struct rtmsg (12 bytes).
    public mutating func rtmsg(family: UInt8, dstLength: UInt8 = 0, table: UInt8 = UInt8(RT_TABLE_MAIN.rawValue),
                               protocol: UInt8 = UInt8(RTPROT_BOOT), scope: UInt8 = UInt8(RT_SCOPE_UNIVERSE.rawValue),
                               type: UInt8 = UInt8(RTN_UNICAST), flags: UInt32 = 0) {
        append(family); append(dstLength); append(UInt8(0)); append(UInt8(0))
        append(table); append(`protocol`); append(scope); append(type); append(flags)
    }

    /// struct nfgenmsg (4 bytes), the family header of every nfnetlink message.
    public mutating func nfgen(family: UInt8, resourceID: UInt16 = 0) {
        append(family); append(UInt8(0) /* NFNETLINK_V0 */); append(resourceID.bigEndian)
    }

    // MARK: Attributes

    public mutating func attribute(_ type: UInt16, bytes payload: [UInt8]) {
        append(UInt16(4 + payload.count))
        append(type)
        bytes.append(contentsOf: payload)
        pad()
    }

    public mutating func attribute(_ type: UInt16, string: String) {
        attribute(type, bytes: Array(string.utf8) + [0])
    }

    public mutating func attribute<T: FixedWidthInteger>(_ type: UInt16, _ value: T) {
        attribute(type, bytes: withUnsafeBytes(of: value) { Array($0) })
    }

    /// Writes a nested attribute whose payload is whatever `body` appends.
    public mutating func nested(_ type: UInt16, _ body: (inout MessageBuilder) -> Void) {
        let start = bytes.count
        append(UInt16(0))
        append(type | UInt16(NLA_F_NESTED))
        body(&self)
        set(UInt16(bytes.count - start), at: start)
    }

    /// The finished message with its length and sequence number filled in.
    public func finish(sequence: UInt32) -> [UInt8] {
        var out = bytes
        withUnsafeBytes(of: UInt32(out.count)) { out.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: sequence) { out.replaceSubrange(8..<12, with: $0) }
        return out
    }

    // MARK: Raw encoding

    public mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
    }

    private mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value) { bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: $0) }
    }

    private mutating func pad() {
        while bytes.count % 4 != 0 { bytes.append(0) }
    }
}

/// One decoded netlink message.
public struct NetlinkMessage: Sendable {
    public let type: UInt16
    public let flags: UInt16
    public let sequence: UInt32
    public let payload: [UInt8]

    public init(type: UInt16, flags: UInt16, sequence: UInt32, payload: [UInt8]) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.payload = payload
    }

    /// Splits a datagram into its messages.
    public static func parse(_ datagram: [UInt8]) throws -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = 0
        while datagram.count - offset >= 16 {
            let length = Int(datagram.readInteger(at: offset, as: UInt32.self))
            guard length >= 16, offset + length <= datagram.count else {
                throw NetlinkError(operation: "parsing a netlink reply", code: EBADMSG)
            }
            messages.append(NetlinkMessage(
                type: datagram.readInteger(at: offset + 4, as: UInt16.self),
                flags: datagram.readInteger(at: offset + 6, as: UInt16.self),
                sequence: datagram.readInteger(at: offset + 8, as: UInt32.self),
                payload: Array(datagram[(offset + 16)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return messages
    }

    /// For NLMSG_ERROR: 0 for an acknowledgement, else a positive errno.
    public var errorCode: Int32 {
        guard payload.count >= 4 else { return EBADMSG }
        return -payload.readInteger(at: 0, as: Int32.self)
    }

    /// Attributes that follow a fixed family header of `headerSize` bytes.
    public func attributes(after headerSize: Int) -> Attributes {
        Attributes(payload, from: headerSize)
    }
}

/// Decoded attributes of one level, keyed by type (flag bits stripped).
public struct Attributes: Sendable {
    public private(set) var values: [UInt16: [UInt8]] = [:]

    public init(_ bytes: [UInt8], from start: Int = 0) {
        var offset = start
        while bytes.count - offset >= 4 {
            let length = Int(bytes.readInteger(at: offset, as: UInt16.self))
            let type = bytes.readInteger(at: offset + 2, as: UInt16.self) & 0x3fff /* NLA_TYPE_MASK */
            guard length >= 4, offset + length <= bytes.count else { break }
            values[type] = Array(bytes[(offset + 4)..<(offset + length)])
            offset += (length + 3) & ~3
        }
    }

    /// Every attribute of one level in order, repeated types included (netlink lists).
    public static func list(_ bytes: [UInt8]) -> [(type: UInt16, value: [UInt8])] {
        var items: [(type: UInt16, value: [UInt8])] = []
        var offset = 0
        while bytes.count - offset >= 4 {
            let length = Int(bytes.readInteger(at: offset, as: UInt16.self))
            guard length >= 4, offset + length <= bytes.count else { break }
            items.append((bytes.readInteger(at: offset + 2, as: UInt16.self) & 0x3fff, Array(bytes[(offset + 4)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return items
    }

    public subscript(type: UInt16) -> [UInt8]? { values[type] }

    public func integer<T: FixedWidthInteger>(_ type: UInt16, as: T.Type = T.self) -> T? {
        guard let raw = values[type], raw.count >= MemoryLayout<T>.size else { return nil }
        return raw.readInteger(at: 0, as: T.self)
    }

    public func string(_ type: UInt16) -> String? {
        guard let raw = values[type] else { return nil }
        return String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }

    public func nested(_ type: UInt16) -> Attributes? {
        values[type].map { Attributes($0) }
    }
}

extension Array where Element == UInt8 {
    /// Reads a host-order integer at a byte offset (no alignment needed).
    func readInteger<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        var value = T.zero
        Swift.withUnsafeMutableBytes(of: &value) { dst in
            self.withUnsafeBytes { src in
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offset..<offset + MemoryLayout<T>.size]))
            }
        }
        return value
    }
}
