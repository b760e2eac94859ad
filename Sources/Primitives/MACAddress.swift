/// An Ethernet (EUI-48) address, written as six lower-case hex octets: 02:42:ac:11:00:02.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// From six bytes; nil for any other count.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// Parses six colon-separated hex octets (either case).
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard parts.count == 6, bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// Unicast (the group bit clear) and not all zero: what an interface may carry.
    public var isAssignable: Bool { bytes[0] & 1 == 0 && bytes.contains { $0 != 0 } }

    public var description: String {
        bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
    }

    /// A random locally administered unicast address.
    public static func random() -> MACAddress {
        var bytes = (0..<6).map { _ in UInt8.random(in: 0...255) }
        bytes[0] = (bytes[0] & 0xfc) | 0x02
        return MACAddress(bytes: bytes)!
    }
}
