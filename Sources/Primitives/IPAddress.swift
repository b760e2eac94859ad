import Glibc

/// An IPv4 or IPv6 address. Values are host-order integers so that address arithmetic
/// (IPAM) is plain integer arithmetic; `bytes` gives the network-order form netlink wants.
public enum IPAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt128)

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no zone, no brackets).
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.init(bytes: withUnsafeBytes(of: &v6) { Array($0) })
            return
        }
        return nil
    }

    /// From network-order bytes: 4 for IPv4, 16 for IPv6.
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: self = .v4(bytes.reduce(0) { $0 << 8 | UInt32($1) })
        case 16: self = .v6(bytes.reduce(0) { $0 << 8 | UInt128($1) })
        default: return nil
        }
    }

    public var isIPv4: Bool { if case .v4 = self { return true } else { return false } }
    public var family: UInt8 { isIPv4 ? UInt8(AF_INET) : UInt8(AF_INET6) }
    public var bitWidth: Int { isIPv4 ? 32 : 128 }

    public var bytes: [UInt8] {
        switch self {
        case .v4(let v): return (0..<4).reversed().map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
        case .v6(let v): return (0..<16).reversed().map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
        }
    }

    public var description: String {
        var raw = bytes
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(isIPv4 ? AF_INET : AF_INET6, &raw, &text, socklen_t(text.count))
        return String(cBuffer: text)
    }

    /// The address `offset` places further on, or nil past the end of the family.
    public func advanced(by offset: UInt128) -> IPAddress? {
        switch self {
        case .v4(let v):
            let (sum, overflow) = UInt128(v).addingReportingOverflow(offset)
            return overflow || sum > UInt128(UInt32.max) ? nil : .v4(UInt32(sum))
        case .v6(let v):
            let (sum, overflow) = v.addingReportingOverflow(offset)
            return overflow ? nil : .v6(sum)
        }
    }

    var value: UInt128 {
        switch self {
        case .v4(let v): return UInt128(v)
        case .v6(let v): return v
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        if lhs.isIPv4 != rhs.isIPv4 { return lhs.isIPv4 }
        return lhs.value < rhs.value
    }
}

/// A CIDR prefix such as 10.88.0.0/16; `address` always has its host bits cleared.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    /// Parses `ADDRESS/LENGTH`. A host address with host bits set (10.0.0.5/24) is refused
    /// unless `strict` is false, in which case it is masked.
    public init?(_ text: String, strict: Bool = true) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPAddress(String(parts[0])),
              let length = Int(parts[1]), parts[1].allSatisfy(\.isASCII),
              length >= 0, length <= address.bitWidth else { return nil }
        let network = IPNetwork(address: address, prefixLength: length)
        if strict && network.address != address { return nil }
        self = network
    }

    public init(address: IPAddress, prefixLength: Int) {
        self.prefixLength = prefixLength
        let hostBits = address.bitWidth - prefixLength
        let mask: UInt128 = hostBits >= 128 ? 0 : ~((UInt128(1) << hostBits) - 1)
        switch address {
        case .v4(let v): self.address = .v4(UInt32(truncatingIfNeeded: UInt128(v) & mask))
        case .v6(let v): self.address = .v6(v & mask)
        }
    }

    public var isIPv4: Bool { address.isIPv4 }
    public var description: String { "\(address)/\(prefixLength)" }

    /// How many addresses the prefix spans.
    public var size: UInt128 {
        let hostBits = address.bitWidth - prefixLength
        return hostBits >= 128 ? UInt128.max : UInt128(1) << hostBits
    }

    public var last: IPAddress { address.advanced(by: size - 1)! }

    /// The IPv4 broadcast address, or nil for IPv6 and for /31 and /32.
    public var broadcast: IPAddress? {
        isIPv4 && prefixLength < 31 ? last : nil
    }

    public func contains(_ ip: IPAddress) -> Bool {
        ip.isIPv4 == isIPv4 && IPNetwork(address: ip, prefixLength: prefixLength).address == address
    }

    public func overlaps(_ other: IPNetwork) -> Bool {
        isIPv4 == other.isIPv4 && (contains(other.address) || other.contains(address))
    }
}
