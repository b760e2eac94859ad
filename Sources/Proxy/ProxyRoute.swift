import Glibc
import Primitives
import Synchronization

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
/// anyone. Relaxed atomics: the single writer's load, add and store are plain moves and an
/// add (no locked instruction), and a reader sees a value a moment old, never a torn one.
final class Counters: Sendable {
    enum Slot { case bytesIn, bytesOut, connections, active, packetsIn, packetsOut, failures }

    private let bytesIn = Atomic<UInt64>(0), bytesOut = Atomic<UInt64>(0), connections = Atomic<UInt64>(0)
    private let active = Atomic<UInt64>(0), packetsIn = Atomic<UInt64>(0), packetsOut = Atomic<UInt64>(0)
    private let failures = Atomic<UInt64>(0)

    @inline(__always)
    private func counter<T>(_ slot: Slot, _ body: (borrowing Atomic<UInt64>) -> T) -> T {
        switch slot {
        case .bytesIn: body(bytesIn)
        case .bytesOut: body(bytesOut)
        case .connections: body(connections)
        case .active: body(active)
        case .packetsIn: body(packetsIn)
        case .packetsOut: body(packetsOut)
        case .failures: body(failures)
        }
    }

    /// Only the owning worker's thread calls this (one writer: no read-modify-write needed).
    @inline(__always)
    func add(_ slot: Slot, _ value: UInt64 = 1) {
        counter(slot) { $0.store($0.load(ordering: .relaxed) &+ value, ordering: .relaxed) }
    }

    @inline(__always)
    func subtract(_ slot: Slot) {
        counter(slot) { $0.store($0.load(ordering: .relaxed) &- 1, ordering: .relaxed) }
    }

    func add(to stats: inout RouteStats) {
        stats.bytesIn &+= bytesIn.load(ordering: .relaxed)
        stats.bytesOut &+= bytesOut.load(ordering: .relaxed)
        stats.connections &+= connections.load(ordering: .relaxed)
        stats.active &+= active.load(ordering: .relaxed)
        stats.packetsIn &+= packetsIn.load(ordering: .relaxed)
        stats.packetsOut &+= packetsOut.load(ordering: .relaxed)
        stats.failures &+= failures.load(ordering: .relaxed)
    }
}

/// A failure to set the proxy up, with what to do about it.
public struct ProxyError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }

    static func errno(_ what: String, _ code: Int32) -> ProxyError {
        ProxyError("\(what): \(errorMessage(code))")
    }
}
