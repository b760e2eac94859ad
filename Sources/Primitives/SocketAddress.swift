import Glibc

/// An IP address and port as the socket calls want it: a sockaddr_storage and its length.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    public let ip: IPAddress
    public let port: UInt16

    public init(_ ip: IPAddress, _ port: UInt16) {
        self.ip = ip
        self.port = port
    }

    public var description: String { ip.isIPv4 ? "\(ip):\(port)" : "[\(ip)]:\(port)" }

    public var family: Int32 { ip.isIPv4 ? AF_INET : AF_INET6 }
    /// 0.0.0.0 or ::, compared as numbers (this is asked per datagram: no text parsing).
    public var isWildcard: Bool { ip == .v4(0) || ip == .v6(0) }
    public var length: socklen_t { socklen_t(ip.isIPv4 ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size) }

    public var storage: sockaddr_storage {
        var storage = sockaddr_storage()
        let bytes = ip.bytes
        withUnsafeMutableBytes(of: &storage) { raw in
            if ip.isIPv4 {
                var sa = sockaddr_in()
                sa.sin_family = sa_family_t(AF_INET)
                sa.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: bytes) }
                withUnsafeBytes(of: sa) { raw.copyMemory(from: $0) }
            } else {
                var sa = sockaddr_in6()
                sa.sin6_family = sa_family_t(AF_INET6)
                sa.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: bytes) }
                withUnsafeBytes(of: sa) { raw.copyMemory(from: $0) }
            }
        }
        return storage
    }

    /// Decodes an AF_INET/AF_INET6 sockaddr (an IPv4-mapped IPv6 address stays IPv6).
    /// Allocation-free: the UDP relay decodes one per datagram.
    public init?(_ storage: sockaddr_storage) {
        let decoded: (IPAddress, UInt16)? = withUnsafeBytes(of: storage) { raw in
            let port = UInt16(raw[2]) << 8 | UInt16(raw[3])
            switch Int32(storage.ss_family) {
            case AF_INET: return (.v4(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self))), port)
            case AF_INET6: return (.v6(UInt128(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt128.self))), port)
            default: return nil
            }
        }
        guard let decoded else { return nil }
        self.init(decoded.0, decoded.1)
    }

    /// Calls `body` with this address as a sockaddr and its length (bind, connect...).
    public func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var s = storage
        return withUnsafePointer(to: &s) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }
}
