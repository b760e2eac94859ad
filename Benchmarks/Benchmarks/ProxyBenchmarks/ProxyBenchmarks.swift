// The proxy's in-process pieces, so a regression shows without the whole throughput suite:
// one short TCP connection accepted and relayed, one UDP datagram through an existing
// flow (a flow-table hit both ways), and a new UDP client arriving at a full flow table (the
// least recently active flow is evicted). Everything is on 127.0.0.1: ProxyServers with
// their routes, and echo servers on threads of this process.
//
//     cd Benchmarks && unshare --net --mount sh -c 'ip link set lo up && exec swift package benchmark --target ProxyBenchmarks'

import Benchmark
import Glibc
import Netlink
import Primitives
import Proxy

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal],
        timeUnits: .microseconds,
        warmupIterations: 10,
        maxDuration: .seconds(5),
        maxIterations: 5000
    )

    // connect, one request byte, one reply byte, close: accept + backend connect + relay.
    Benchmark("tcp-connection-relay") { benchmark in
        guard let rig = Rig.shared else { return benchmark.error("setup failed") }
        benchmark.startMeasurement()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = Rig.loopback(Rig.tcpPort)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var byte: UInt8 = 7
        _ = send(fd, &byte, 1, Int32(MSG_NOSIGNAL))
        _ = recv(fd, &byte, 1, 0)
        close(fd)
        benchmark.stopMeasurement()
        _ = rig
    }

    // One datagram out and its reply back, through a flow made in warm-up.
    Benchmark("udp-datagram-round-trip") { benchmark in
        guard let rig = Rig.shared else { return benchmark.error("setup failed") }
        var byte: UInt8 = 9
        benchmark.startMeasurement()
        _ = send(rig.udpClient, &byte, 1, 0)
        _ = recv(rig.udpClient, &byte, 1, 0)
        benchmark.stopMeasurement()
    }

    // A client the relay has not seen, with its worker's table of 4,096 flows full: a new
    // socket, one datagram out and its reply back, close. The proxy makes a flow and evicts one.
    // CPU too: the whole process's (proxy and echo threads), which a slow eviction shows in.
    Benchmark("udp-new-flow-table-full", configuration: .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal])) { benchmark in
        guard let rig = Rig.shared, rig.fullTable else { return benchmark.error("setup failed") }
        benchmark.startMeasurement()
        _ = Rig.udpRoundTrip(to: Rig.udpFullPort)
        benchmark.stopMeasurement()
    }
}

/// The proxy and its backends, made once for the process.
final class Rig: @unchecked Sendable {
    static let tcpPort: UInt16 = 47001, udpPort: UInt16 = 47002, backendTCP: UInt16 = 47003, backendUDP: UInt16 = 47004
    static let udpFullPort: UInt16 = 47005
    static let maxFlows = 4096
    static let shared: Rig? = try? Rig()

    let proxy: ProxyServer
    let udpClient: Int32
    /// A second proxy (one worker) whose UDP route's flow table was filled at setup.
    let fullProxy: ProxyServer
    let fullTable: Bool

    static func loopback(_ port: UInt16) -> sockaddr_in {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        sa.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return sa
    }

    static func bound(_ type: Int32, _ port: UInt16) -> Int32 {
        let fd = socket(AF_INET, type, 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = loopback(port)
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return fd
    }

    init() throws {
        // Backends: TCP answers one byte per connection; UDP echoes.
        let tcp = Rig.bound(Int32(SOCK_STREAM.rawValue), Rig.backendTCP)
        listen(tcp, 1024)
        let udp = Rig.bound(Int32(SOCK_DGRAM.rawValue), Rig.backendUDP)
        Rig.thread {
            var byte: UInt8 = 0
            while true {
                let fd = accept(tcp, nil, nil)
                if fd < 0 { continue }
                _ = recv(fd, &byte, 1, 0)
                _ = send(fd, &byte, 1, Int32(MSG_NOSIGNAL))
                close(fd)
            }
        }
        Rig.thread {
            var buffer = [UInt8](repeating: 0, count: 2048)
            var peer = sockaddr_storage()
            while true {
                var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(udp, raw.baseAddress, raw.count, 0, $0, &length) } }
                }
                if n <= 0 { continue }
                _ = withUnsafePointer(to: &peer) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    buffer.withUnsafeBytes { sendto(udp, $0.baseAddress, n, 0, sa, length) } } }
            }
        }
        let local = IPAddress("127.0.0.1")!
        proxy = try ProxyServer(options: .init(workers: 1))
        try proxy.update([
            ProxyRoute(proto: .tcp, listen: SocketAddress(local, Rig.tcpPort), backend: SocketAddress(local, Rig.backendTCP)),
            ProxyRoute(proto: .udp, listen: SocketAddress(local, Rig.udpPort), backend: SocketAddress(local, Rig.backendUDP)),
        ])
        // Flows never idle out here: every new client must evict one.
        fullProxy = try ProxyServer(options: .init(workers: 1, udpIdleTimeoutSeconds: 1e9, maxFlows: Rig.maxFlows))
        try fullProxy.update([ProxyRoute(proto: .udp, listen: SocketAddress(local, Rig.udpFullPort), backend: SocketAddress(local, Rig.backendUDP))])
        fullTable = (0..<Rig.maxFlows).allSatisfy { _ in Rig.udpRoundTrip(to: Rig.udpFullPort) }
        udpClient = Rig.udpSocket(connectedTo: Rig.udpPort)
    }

    /// A UDP socket connected to the proxy's `port`, from `localPort` if given.
    static func udpSocket(connectedTo port: UInt16, from localPort: UInt16? = nil) -> Int32 {
        let fd = localPort.map { bound(Int32(SOCK_DGRAM.rawValue), $0) } ?? socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var sa = Rig.loopback(port)
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return fd
    }

    /// Client ports never used twice in a run (the table's 4,096 plus at most 5,010
    /// iterations), so each new socket is a client the relay has not seen.
    nonisolated(unsafe) static var nextClientPort: UInt16 = 20000

    /// From a new client of the relay: one datagram, its echo, close.
    static func udpRoundTrip(to port: UInt16) -> Bool {
        let fd = udpSocket(connectedTo: port, from: nextClientPort)
        nextClientPort &+= 1
        defer { close(fd) }
        var byte: UInt8 = 5
        return send(fd, &byte, 1, 0) == 1 && recv(fd, &byte, 1, 0) == 1
    }

    static func thread(_ body: @escaping () -> Void) {
        final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(Box(body)).toOpaque())
        pthread_detach(thread)
    }
}
