import Glibc
import Netlink

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
    var isWildcard: Bool { ip == .v4(0) || ip == .v6(0) }
    var length: socklen_t { socklen_t(ip.isIPv4 ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size) }

    var storage: sockaddr_storage {
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
    init?(_ storage: sockaddr_storage) {
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

/// One published port the proxy serves: connections or datagrams to `listen` go to `backend`.
public struct ProxyRoute: Hashable, Sendable, CustomStringConvertible {
    public enum Proto: String, Sendable { case tcp, udp }

    public var proto: Proto
    public var listen: SocketAddress
    public var backend: SocketAddress
    /// Send a PROXY protocol v2 header to the backend first (TCP), so it sees the client.
    public var proxyProtocol: Bool

    public init(proto: Proto, listen: SocketAddress, backend: SocketAddress, proxyProtocol: Bool = false) {
        self.proto = proto; self.listen = listen; self.backend = backend; self.proxyProtocol = proxyProtocol
    }

    public var description: String { "\(proto.rawValue) \(listen) -> \(backend)\(proxyProtocol ? " (PROXY v2)" : "")" }
}

/// What a route has carried, summed over the workers.
public struct RouteStats: Codable, Equatable, Sendable {
    /// Client to backend, and back.
    public var bytesIn: UInt64 = 0
    public var bytesOut: UInt64 = 0
    /// TCP connections or UDP flows: ever accepted, and open now.
    public var connections: UInt64 = 0
    public var active: UInt64 = 0
    /// Datagrams each way (UDP), and connections or datagrams refused or dropped.
    public var packetsIn: UInt64 = 0
    public var packetsOut: UInt64 = 0
    public var failures: UInt64 = 0

    public init() {}

    /// Two routes' (or workers') counters together.
    public static func + (a: RouteStats, b: RouteStats) -> RouteStats {
        var sum = a
        sum.bytesIn &+= b.bytesIn; sum.bytesOut &+= b.bytesOut; sum.connections &+= b.connections
        sum.active &+= b.active; sum.packetsIn &+= b.packetsIn; sum.packetsOut &+= b.packetsOut
        sum.failures &+= b.failures
        return sum
    }
}

/// One worker's counters for one route: written only by that worker's thread, read by
/// anyone (plain 64-bit loads; a reader may see a value a moment old, never a torn one).
final class Counters {
    let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: 7)
    init() { slots.initialize(repeating: 0, count: 7) }
    deinit { slots.deallocate() }

    static let bytesIn = 0, bytesOut = 1, connections = 2, active = 3, packetsIn = 4, packetsOut = 5, failures = 6

    func add(_ slot: Int, _ value: UInt64 = 1) { slots[slot] &+= value }
    func subtract(_ slot: Int) { slots[slot] &-= 1 }

    func add(to stats: inout RouteStats) {
        stats.bytesIn &+= slots[0]; stats.bytesOut &+= slots[1]; stats.connections &+= slots[2]
        stats.active &+= slots[3]; stats.packetsIn &+= slots[4]; stats.packetsOut &+= slots[5]; stats.failures &+= slots[6]
    }
}

/// A failure to set the proxy up, with what to do about it.
public struct ProxyError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }

    static func errno(_ what: String, _ code: Int32) -> ProxyError {
        ProxyError("\(what): \(String(cString: strerror(code)))")
    }
}

/// The monotonic clock in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
