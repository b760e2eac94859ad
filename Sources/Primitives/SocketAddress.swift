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

/// Unix stream sockets by path: netctl's agent control socket and runc's console socket.
public enum UnixSocket {
    /// The longest path a unix socket address holds (without its terminating zero).
    public static let maximumPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// A socket bound to `path` (replacing what is there) and listening; ENAMETOOLONG if the path does not fit.
    public static func listen(_ path: String, mode: mode_t = 0o600, backlog: Int32 = 64) throws -> Int32 {
        unlink(path)
        let fd = try withAddress(path) { fd, address, length in Glibc.bind(fd, address, length) }
        guard chmod(path, mode) == 0, Glibc.listen(fd, backlog) == 0 else {
            let code = errno
            close(fd)
            unlink(path)
            throw SystemError("listening on \(path)", code: code)
        }
        return fd
    }

    /// A socket connected to `path`.
    public static func connect(_ path: String) throws -> Int32 {
        try withAddress(path) { fd, address, length in Glibc.connect(fd, address, length) }
    }

    private static func withAddress(_ path: String, _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) throws -> Int32 {
        let bytes = Array(path.utf8)
        guard bytes.count <= maximumPathLength else { throw SystemError("using the unix socket \(path)", code: ENAMETOOLONG) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("opening a unix socket") }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw SystemError("using the unix socket \(path)", code: code)
        }
        return fd
    }
}
