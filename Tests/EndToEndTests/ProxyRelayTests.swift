import Foundation
import Glibc
import Netlink
import Primitives
import Proxy
import Testing

/// A backend in a container namespace: echoes each TCP connection until EOF, then
/// half-closes; answers each UDP datagram with its reverse.
final class EchoBackend {
    let tcp: Int32
    let udp: Int32
    let port: UInt16

    /// Set when the backend goes away: its threads then close their sockets themselves.
    /// (Closing them under a blocked accept/recvfrom would let the number be reused by
    /// another test's socket, which the thread would then read and write.)
    private let stop = Flag()

    init(in namespace: NetworkNamespace, ipv6: Bool = false) throws {
        let listener = try Traffic.listen(in: namespace, ipv6: ipv6, port: 0)
        tcp = listener.fd
        port = listener.port
        Glibc.listen(tcp, 1024)  // room for every concurrent connection a test opens
        udp = try Traffic.udpSocket(in: namespace, ipv6: ipv6, port: port).fd
        let (tcp, udp, stop) = (self.tcp, self.udp, self.stop)
        Thread.detachNewThread {
            while true {
                let fd = accept(tcp, nil, nil)
                if stop.isSet { if fd >= 0 { close(fd) }; close(tcp); return }
                if fd < 0 { if errno == EAGAIN || errno == EINTR { continue } else { close(tcp); return } }
                Thread.detachNewThread { EchoBackend.echo(fd) }
            }
        }
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 2048)
            while true {
                var peer = sockaddr_storage()
                var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(udp, raw.baseAddress, raw.count, 0, $0, &length) } }
                }
                if stop.isSet { close(udp); return }
                if n < 0 { if errno == EAGAIN || errno == EINTR { continue } else { close(udp); return } }
                let reply = Array(buffer[0..<n].reversed())
                _ = withUnsafePointer(to: &peer) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        reply.withUnsafeBytes { sendto(udp, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
                    }
                }
            }
        }
    }

    static func echo(_ fd: Int32) {
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            var sent = 0
            while sent < n {
                let m = buffer[sent..<n].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if m <= 0 { return }
                sent += m
            }
        }
        shutdown(fd, Int32(SHUT_WR))
    }

    deinit {
        stop.set()
        shutdown(tcp, Int32(SHUT_RDWR))  // wakes the blocked threads, which close the sockets
        shutdown(udp, Int32(SHUT_RDWR))
    }
}

/// A value handed between threads (the handover is ordered by a semaphore).
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// Blocking client helpers with bounded waits.
enum Client {
    static func connect(in namespace: NetworkNamespace, to address: String, port: UInt16, timeout: Int = 5) throws -> Int32 {
        let ipv6 = address.contains(":")
        return try namespace.run {
            let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var tv = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let rc = SocketAddress(IPAddress(address)!, port).withSockaddr { Glibc.connect(fd, $0, $1) }
            guard rc == 0 else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw SandboxError("connect \(address):\(port): \(message)")
            }
            return fd
        }
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, min($0.count, 1 << 16), Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// Everything until EOF; nil on error (its errno in `lastError`).
    static func readAll(_ fd: Int32, limit: Int = 64 << 20) -> (bytes: [UInt8], error: Int32) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while out.count < limit {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return (out, 0) }
            if n < 0 { return (out, errno) }
            out += buffer[0..<n]
        }
        return (out, 0)
    }
}

@Suite("End to end: the splice proxy and UDP relay", .enabled(if: Sandbox.isRoot, "needs root for namespaces"))
struct ProxyRelayTests {
    /// A sandbox with one container (c1, 10.95.0.2) running the echo backend, and a proxy
    /// whose sockets live in the sandbox's host namespace.
    final class Setup {
        let world: World
        let backend: EchoBackend
        let proxy: ProxyServer
        let host: NetworkNamespace

        /// `connectTimeout`: short by default, so the refused-backend test is quick.
        init(ipv6Network: Bool = false, copyThreshold: Int = 16384, connectTimeout: Double = 1,
             workers: Int = 2, maxFlows: Int = 4096, udpIdleSeconds: Double = 90, maxListeners: Int? = nil,
             backendCongestionControl: String? = "cubic", defaultCongestionControl: String? = nil,
             balanceConnections: Bool? = nil) throws {
            world = try World()
            host = world.sandbox.hostNamespace
            if let defaultCongestionControl {  // the sandbox's default, before any socket is made
                let set = try world.sandbox.run("/usr/sbin/sysctl", ["-qw", "net.ipv4.tcp_congestion_control=\(defaultCongestionControl)"])
                guard set.ok else { throw SandboxError("sysctl: \(set.stderr)") }
            }
            var create = ["network", "create", "px", "--subnet", "10.95.0.0/24"]
            if ipv6Network { create += ["--subnet6", "fd00:95::/64"] }
            try world.sandbox.run(Sandbox.netctl, create)
            try world.sandbox.netctlOK("attach", "px", "--new", "c1", "--name", "c1")
            backend = try EchoBackend(in: try world.container("c1"))
            // Made on a thread in the sandbox: its workers start there and inherit the namespace.
            var options = ProxyServer.Options(workers: workers, connectTimeoutSeconds: connectTimeout, udpIdleTimeoutSeconds: udpIdleSeconds,
                                              maxFlows: maxFlows, copyThreshold: copyThreshold, maxListeners: maxListeners,
                                              backendCongestionControl: backendCongestionControl)
            if let balanceConnections { options.balanceConnections = balanceConnections }  // else the library's default
            proxy = try world.sandbox.hostNamespace.run { [options] in try ProxyServer(options: options) }
        }

        func serve(_ routes: [ProxyRoute]) throws { try host.run { try proxy.update(routes) } }

        /// `count` connections to the proxy's `port`, made from a thread bound to `cpu` (which
        /// takes their SYNs), each echoed once through it, so the proxy holds them all.
        func connectEchoing(port: UInt16, count: Int, fromCPU cpu: Int32) throws -> [Int32] {
            try host.run {
                guard bindThread(toCPU: cpu) else { throw SandboxError("can't bind to CPU \(cpu)") }
                var fds: [Int32] = []
                do {
                    for i in 0..<count {
                        let fd = try Client.connect(in: host, to: World.hostIP, port: port)
                        fds.append(fd)
                        var byte = UInt8(truncatingIfNeeded: i)
                        guard Client.sendAll(fd, [byte]), recv(fd, &byte, 1, 0) == 1, byte == UInt8(truncatingIfNeeded: i) else {
                            throw SandboxError("connection \(i) was not relayed (errno \(errno))")
                        }
                    }
                } catch {
                    fds.forEach { close($0) }
                    throw error
                }
                return fds
            }
        }

        deinit { proxy.stop(drainSeconds: 0) }
    }

    static func route(_ proto: ProxyRoute.Proto = .tcp, listen: String, _ port: UInt16, to backend: String = "10.95.0.2", _ backendPort: UInt16,
                      proxyProtocol: Bool = false) -> ProxyRoute {
        ProxyRoute(proto: proto, listen: SocketAddress(IPAddress(listen)!, port), backend: SocketAddress(IPAddress(backend)!, backendPort),
                   proxyProtocol: proxyProtocol)
    }

    @Test("a 16 MiB transfer arrives whole and in order both ways; the client's half-close is passed on",
          arguments: [16384, 0])  // copy first then splice (the default), and splice only
    func bulkAndHalfClose(copyThreshold: Int) throws {
        let s = try Setup(copyThreshold: copyThreshold)
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18000, s.backend.port)])
        // Pseudo-random bytes (an xorshift stream): any loss or reordering shows.
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15 ^ UInt64.random(in: 1...UInt64.max)
        var payload = [UInt8](repeating: 0, count: 16 << 20)
        for i in stride(from: 0, to: payload.count, by: 8) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            withUnsafeBytes(of: state) { payload.replaceSubrange(i..<(i + 8), with: $0) }
        }
        let fd = try Client.connect(in: s.host, to: World.hostIP, port: 18000)
        defer { close(fd) }
        let received = Box<(bytes: [UInt8], error: Int32)>(([], 0))
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { received.value = Client.readAll(fd); done.signal() }
        let sentAll = Client.sendAll(fd, payload)  // (not inside #expect: a failure would print 16 MiB)
        #expect(sentAll)
        shutdown(fd, Int32(SHUT_WR))  // the backend sees EOF only if the proxy passes the FIN on
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(received.value.error == 0)
        #expect(received.value.bytes.count == payload.count)
        // memcmp, not ==: a failed == on 16 MiB arrays makes the test library compute a diff
        // that doesn't finish.
        let same = received.value.bytes.count == payload.count && received.value.bytes.withUnsafeBytes { a in
            payload.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, b.count) == 0 }
        }
        #expect(same, "the bytes that came back differ from those sent")
        let stats = s.proxy.stats().values.first
        #expect(stats?.bytesIn == UInt64(payload.count) && stats?.bytesOut == UInt64(payload.count))
    }

    @Test("a client that stops reading holds the transfer back, and gets every byte once it reads again")
    func slowReader() throws {
        let s = try Setup()
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18005, s.backend.port)])
        let payload = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 13) }
        let fd = try Client.connect(in: s.host, to: World.hostIP, port: 18005)
        defer { close(fd) }
        let sent = Box(false)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { sent.value = Client.sendAll(fd, payload); shutdown(fd, Int32(SHUT_WR)); done.signal() }
        // Nothing is read for a while: the echo fills the client's buffers, the proxy has to
        // hold bytes for it and must resume on its writable edge (watched from then on).
        usleep(700_000)
        let received = Client.readAll(fd)
        #expect(done.wait(timeout: .now() + 30) == .success && sent.value)
        #expect(received.error == 0 && received.bytes.count == payload.count)
        let same = received.bytes.count == payload.count && received.bytes.withUnsafeBytes { a in
            payload.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, b.count) == 0 }
        }
        #expect(same, "the bytes that came back differ from those sent")
    }

    @Test("200 concurrent connections each get their own bytes back")
    func concurrent() throws {
        let s = try Setup()
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18001, s.backend.port)])
        let fds = try (0..<200).map { _ in try Client.connect(in: s.host, to: World.hostIP, port: 18001) }
        defer { fds.forEach { close($0) } }
        for (i, fd) in fds.enumerated() { #expect(Client.sendAll(fd, Array("message \(i)".utf8))); shutdown(fd, Int32(SHUT_WR)) }
        for (i, fd) in fds.enumerated() {
            let reply = Client.readAll(fd)
            let text = String(decoding: reply.bytes, as: UTF8.self)
            #expect(reply.error == 0 && text == "message \(i)", "connection \(i) got \(reply.bytes.count) bytes: \(text)")
        }
        #expect(s.proxy.stats().values.first?.connections == 200)
    }

    @Test("the backend's half-close reaches the client, which can still send")
    func backendHalfClose() throws {
        let s = try Setup()
        let c1 = try s.world.container("c1")
        let server = try Traffic.listen(in: c1, port: 9100)
        defer { close(server.fd) }
        try s.serve([ProxyRelayTests.route(listen: "127.0.0.1", 18002, 9100)])
        let fd = try Client.connect(in: s.host, to: "127.0.0.1", port: 18002)
        defer { close(fd) }
        let accepted = accept(server.fd, nil, nil)
        defer { close(accepted) }
        #expect(Client.sendAll(accepted, Array("bye".utf8)))
        shutdown(accepted, Int32(SHUT_WR))
        let first = Client.readAll(fd)
        #expect(first.error == 0 && first.bytes == Array("bye".utf8))   // EOF after the data
        #expect(Client.sendAll(fd, Array("still here".utf8)))
        shutdown(fd, Int32(SHUT_WR))
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(accepted, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(Client.readAll(accepted).bytes == Array("still here".utf8))
    }

    @Test("a reset is passed on as a reset, both ways; a refused backend gives the client a prompt reset")
    func resets() throws {
        let s = try Setup()
        let c1 = try s.world.container("c1")
        let server = try Traffic.listen(in: c1, port: 9101)
        defer { close(server.fd) }
        try s.serve([ProxyRelayTests.route(listen: "127.0.0.1", 18003, 9101), ProxyRelayTests.route(listen: "127.0.0.1", 18004, 9999)])
        // Backend resets.
        let fd = try Client.connect(in: s.host, to: "127.0.0.1", port: 18003)
        defer { close(fd) }
        let accepted = accept(server.fd, nil, nil)
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(accepted, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(accepted)
        #expect(Client.readAll(fd).error == ECONNRESET)
        // Client resets.
        let fd2 = try Client.connect(in: s.host, to: "127.0.0.1", port: 18003)
        let accepted2 = accept(server.fd, nil, nil)
        defer { close(accepted2) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(accepted2, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd2, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd2)
        #expect(Client.readAll(accepted2).error == ECONNRESET)
        // Nobody listens behind 18004: the client is reset well within a second.
        let start = Date()
        let fd3 = try Client.connect(in: s.host, to: "127.0.0.1", port: 18004)
        defer { close(fd3) }
        #expect(Client.readAll(fd3).error == ECONNRESET)
        #expect(Date().timeIntervalSince(start) < 1)
        #expect((s.proxy.stats().first { $0.key.backend.port == 9999 }?.value.failures ?? 0) >= 1)
    }

    @Test("UDP: replies come from the address the client wrote to, on a listener for all addresses")
    func udpSourceAddress() throws {
        let s = try Setup()
        try s.serve([ProxyRelayTests.route(.udp, listen: "0.0.0.0", 15353, s.backend.port)])
        for address in [World.hostIP, World.otherHostIP] {
            let client = try Traffic.udpSocket(in: s.world.neighbour)
            defer { close(client.fd) }
            try Traffic.sendUDP(client.fd, to: address, port: 15353, Array("abc".utf8))
            let reply = Traffic.receiveUDP(client.fd)
            #expect(reply?.payload == Array("cba".utf8))
            #expect(reply?.from == address)
        }
        let stats = s.proxy.stats().values.first
        #expect(stats?.connections == 2 && stats?.packetsIn == 2 && stats?.packetsOut == 2)
    }

    @Test("UDP: a burst of datagrams reaches the backend as the same datagrams, in order (a run of one size, the last shorter, goes as one UDP_SEGMENT message)")
    func udpBurst() throws {
        let s = try Setup(workers: 1)
        try s.serve([ProxyRelayTests.route(.udp, listen: "0.0.0.0", 15355, s.backend.port)])
        let client = try Traffic.udpSocket(in: s.world.neighbour)
        defer { close(client.fd) }
        // A run of one size ended by a shorter datagram, a lone bigger one, another run.
        let sizes = Array(repeating: 1000, count: 24) + [300, 1400] + Array(repeating: 700, count: 8)
        let datagrams = sizes.enumerated().map { i, n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) } }
        for datagram in datagrams { try Traffic.sendUDP(client.fd, to: World.hostIP, port: 15355, datagram) }
        var replies: [[UInt8]] = []
        while replies.count < datagrams.count, let reply = Traffic.receiveUDP(client.fd) { replies.append(reply.payload) }
        // The backend answers each datagram it gets with its reverse: one merged or cut
        // datagram would show as a reply of another size.
        #expect(replies.map(\.count) == sizes)
        let same = replies == datagrams.map { Array($0.reversed()) }
        #expect(same, "a reply's bytes differ from its datagram's")
    }

    @Test("TCP: a listener per worker while the budget lasts, then one for all, handed over on replacement; a program's SO_REUSEPORT listener takes neither the port nor its connections")
    func listeners() throws {
        // A worker per CPU (so they are bound), and room for one route's listeners.
        let workers = ProxyServer.allowedCPUs.count
        let s = try Setup(workers: workers, maxListeners: workers + 1)
        func echo(_ port: UInt16) throws -> Bool {
            let fd = try Client.connect(in: s.host, to: World.hostIP, port: port)
            defer { close(fd) }
            guard Client.sendAll(fd, Array("x\(port)".utf8)) else { return false }
            shutdown(fd, Int32(SHUT_WR))
            return Client.readAll(fd).bytes == Array("x\(port)".utf8)
        }
        func listeners(_ port: UInt16) throws -> Int { try s.host.run { Traffic.listeners(port: port) } }
        let a = ProxyRelayTests.route(listen: "0.0.0.0", 18020, s.backend.port)
        let b = ProxyRelayTests.route(listen: "0.0.0.0", 18021, s.backend.port)
        try s.serve([a])
        try s.serve([a, b])
        #expect(try listeners(18020) == workers && listeners(18021) == 1)
        // A program's SO_REUSEPORT listener that joins the port afterwards gets no
        // connection: the proxy's socket filter chooses among its own listeners only.
        let intruder = try Traffic.listen(in: s.host, port: 18020, reusePort: true)
        defer { close(intruder.fd) }
        #expect(try (0..<20).allSatisfy { _ in try echo(18020) && echo(18021) })
        _ = fcntl(intruder.fd, F_SETFL, O_NONBLOCK)
        #expect(accept(intruder.fd, nil, nil) == -1 && errno == EAGAIN)
        let other = try EchoBackend(in: try s.world.container("c1"))
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18020, other.port), b])
        #expect(try listeners(18020) == workers + 1)
        #expect(try (0..<10).allSatisfy { _ in try echo(18020) })
        // Room again, but the port is held, with SO_REUSEPORT, by a program: refused.
        try s.serve([])
        let holder = try Traffic.listen(in: s.host, port: 18022, reusePort: true)
        defer { close(holder.fd) }
        let error = #expect(throws: ProxyError.self) { try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18022, s.backend.port)]) }
        #expect(error?.description.contains("0.0.0.0:18022/tcp: another program holds it") == true)
        #expect(try listeners(18022) == 1)
    }

    @Test("TCP: by default, connections that move little stay with the worker on the CPU that took their SYN, however many",
          .enabled(if: ProxyServer.allowedCPUs.count >= 2, "needs two CPUs"))
    func locality() throws {
        let cpus = ProxyServer.allowedCPUs
        let s = try Setup(workers: cpus.count)  // a worker per CPU: bound, and steered by CPU
        try #require(s.proxy.workerCPUs == cpus.map { [$0] }, "workers could not be bound to CPUs")
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18032, s.backend.port)])
        let fds = try s.connectEchoing(port: 18032, count: 8 * cpus.count, fromCPU: cpus[1])
        #expect(s.proxy.workerConnections == [0, fds.count] + Array(repeating: 0, count: cpus.count - 2))
        usleep(350_000)  // several looks for bulk connections: these moved a byte each, so none moves
        #expect(s.proxy.workerConnections == [0, fds.count] + Array(repeating: 0, count: cpus.count - 2))
        fds.forEach { close($0) }
        #expect(eventually { s.proxy.workerConnections.allSatisfy { $0 == 0 } }, "\(s.proxy.workerConnections)")
    }

    @Test("TCP: bulk transfers on connections from one CPU are spread over the workers, moved whole mid-transfer, every byte echoed in order",
          .enabled(if: ProxyServer.allowedCPUs.count >= 2, "needs two CPUs"))
    func bulkMoves() throws {
        let cpus = ProxyServer.allowedCPUs
        let s = try Setup(workers: cpus.count)
        try #require(s.proxy.workerCPUs == cpus.map { [$0] }, "workers could not be bound to CPUs")
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18034, s.backend.port)])
        let fds = try s.connectEchoing(port: 18034, count: 4, fromCPU: cpus[0])
        defer { fds.forEach { close($0) } }
        #expect(s.proxy.workerConnections == [4] + Array(repeating: 0, count: cpus.count - 1))
        // Four streams of 64 KiB chunks, each echoed and checked, for up to 3 s (bounded).
        let group = DispatchGroup()
        // Shared by the stream threads (a class under a lock: a noncopyable Mutex captured by
        // escaping closures trips ThreadSanitizer's exclusivity checks).
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var failures: [String] = []
            var rounds = 0
            func record(_ failure: String) { lock.lock(); failures.append(failure); lock.unlock() }
            func round() { lock.lock(); rounds += 1; lock.unlock() }
            var snapshot: (failures: [String], rounds: Int) { lock.lock(); defer { lock.unlock() }; return (failures, rounds) }
        }
        let tally = Tally()
        let deadline = Date().addingTimeInterval(3)
        for (k, fd) in fds.enumerated() {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                var sent = [UInt8](repeating: 0, count: 64 << 10), back = [UInt8](repeating: 0, count: 64 << 10)
                var round = 0
                while Date() < deadline {
                    for i in sent.indices { sent[i] = UInt8(truncatingIfNeeded: i &* 7 &+ round &+ k) }
                    guard Client.sendAll(fd, sent) else { tally.record("stream \(k): send failed"); return }
                    var got = 0
                    while got < back.count {
                        let n = back[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        guard n > 0 else { tally.record("stream \(k): recv \(n) errno \(errno)"); return }
                        got += n
                    }
                    guard back == sent else { tally.record("stream \(k): round \(round) came back different"); return }
                    round += 1
                    tally.round()
                }
            }
        }
        var spread = false
        while Date() < deadline && !spread {
            spread = s.proxy.workerConnections.allSatisfy { $0 >= 4 / cpus.count - 1 } && s.proxy.workerConnections.max()! <= 3
            usleep(20_000)
        }
        group.wait()
        #expect(tally.snapshot.failures.isEmpty, "\(tally.snapshot.failures)")
        #expect(spread, "the streams stayed on one worker: \(s.proxy.workerConnections)")
        #expect(s.proxy.workerConnections.reduce(0, +) == 4)
        // Counted once each, wherever they moved: open connections, and every byte both ways
        // (the 4 bytes connectEchoing sent, then the rounds).
        let bytes = UInt64(4 + tally.snapshot.rounds * (64 << 10))
        #expect(s.proxy.stats().values.first?.active == 4)
        #expect(eventually(2) { s.proxy.stats().values.first.map { $0.bytesIn == bytes && $0.bytesOut == bytes } == true },
                "\(String(describing: s.proxy.stats().values.first)) for \(bytes) bytes each way")
    }

    @Test("TCP, balancing on: a few connections from one CPU stay with that CPU's worker; more are spread until no worker holds more than a few more than another",
          .enabled(if: ProxyServer.allowedCPUs.count >= 2, "needs two CPUs"))
    func balance() throws {
        let cpus = ProxyServer.allowedCPUs
        let s = try Setup(workers: cpus.count, balanceConnections: true)  // a worker per CPU: bound, and steered by CPU
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18030, s.backend.port)])
        // The most a worker keeps before handing over.
        let few = try s.connectEchoing(port: 18030, count: ProxyServer.connectionImbalance + 1, fromCPU: cpus[0])
        // (Only if the workers could be bound; otherwise the kernel hashes, and only the
        // spreading below is checked.)
        if s.proxy.workerCPUs == cpus.map({ [$0] }) {
            #expect(s.proxy.workerConnections == [few.count] + Array(repeating: 0, count: cpus.count - 1))
        }
        let more = try s.connectEchoing(port: 18030, count: 8 * cpus.count, fromCPU: cpus[0])
        let held = s.proxy.workerConnections
        #expect(held.reduce(0, +) == few.count + more.count)
        #expect(held.max()! - held.min()! <= ProxyServer.connectionImbalance + 1, "\(held)")
        (few + more).forEach { close($0) }
        #expect(eventually { s.proxy.workerConnections.allSatisfy { $0 == 0 } }, "\(s.proxy.workerConnections)")
    }

    @Test("UDP: the flow table is bounded; the least recently active flow gives way, and idle flows close")
    func udpFlowTable() throws {
        // One worker, so one table of two flows; idle flows close after 3 s (room for a slow
        // machine between the exchanges below).
        let s = try Setup(workers: 1, maxFlows: 2, udpIdleSeconds: 3)
        try s.serve([ProxyRelayTests.route(.udp, listen: "0.0.0.0", 15354, s.backend.port)])
        let clients = try (0..<3).map { _ in try Traffic.udpSocket(in: s.world.neighbour) }
        defer { for client in clients { close(client.fd) } }
        func exchange(_ i: Int) throws -> Bool {
            try Traffic.sendUDP(clients[i].fd, to: World.hostIP, port: 15354, Array("ab\(i)".utf8))
            return Traffic.receiveUDP(clients[i].fd)?.payload == Array("\(i)ba".utf8)
        }
        func stats() -> RouteStats? { s.proxy.stats().values.first }
        // A, B, then A again: B is now the least recently active.
        #expect(try exchange(0) && exchange(1) && exchange(0))
        // C finds the table full: B's flow goes (counted as a failure), C is served.
        #expect(try exchange(2))
        #expect(stats()?.connections == 3 && stats()?.active == 2 && stats()?.failures == 1)
        // A still has its flow (no new one); B needs a new one, and C's (older than A's) goes.
        #expect(try exchange(0))
        #expect(stats()?.connections == 3)
        #expect(try exchange(1))
        #expect(stats()?.connections == 4 && stats()?.active == 2 && stats()?.failures == 2)
        // Idle flows close once their timeout has passed.
        #expect(eventually(10) { stats()?.active == 0 })
        #expect(try exchange(2))
        #expect(stats()?.connections == 5 && stats()?.active == 1)
    }

    @Test("IPv6: [::1] and [::] listeners to an IPv4 backend, and an IPv4 listener to an IPv6 backend")
    func families() throws {
        // The first connection to a new IPv6 neighbour may wait for a repeated neighbour
        // solicitation (1 s apart) on a loaded machine: more than the 1 s default here.
        let s = try Setup(ipv6Network: true, connectTimeout: 5)
        let v6backend = try EchoBackend(in: try s.world.container("c1"), ipv6: true)
        try s.serve([ProxyRelayTests.route(listen: "::1", 18005, s.backend.port),
                     ProxyRelayTests.route(listen: "::", 18006, s.backend.port),
                     ProxyRelayTests.route(listen: "0.0.0.0", 18007, to: "fd00:95::2", v6backend.port)])
        for (address, port) in [("::1", UInt16(18005)), (World.hostIP6, 18006), (World.hostIP, 18007)] {
            let fd = try Client.connect(in: s.host, to: address, port: port)
            defer { close(fd) }
            #expect(Client.sendAll(fd, Array("via \(address)".utf8)))
            shutdown(fd, Int32(SHUT_WR))
            #expect(String(decoding: Client.readAll(fd).bytes, as: UTF8.self) == "via \(address)")
        }
    }

    @Test("connections to the backend get the congestion control asked for; nil, or one the kernel refuses, leaves the host's default",
          arguments: [("cubic", "cubic"), (nil, "reno"), ("no-such-cc", "reno")] as [(String?, String)])
    func backendCongestionControl(wanted: String?, expected: String) throws {
        // reno as the sandbox's default: every kernel has it and allows it in any namespace,
        // so cubic is a change.
        let s = try Setup(backendCongestionControl: wanted, defaultCongestionControl: "reno")
        #expect(s.proxy.backendCongestionControl == expected)
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18009, s.backend.port)])
        let fd = try Client.connect(in: s.host, to: World.hostIP, port: 18009)
        defer { close(fd) }
        #expect(Client.sendAll(fd, Array("ping".utf8)))
        var reply = [UInt8](repeating: 0, count: 4)
        #expect(reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4, Int32(MSG_WAITALL)) } == 4)
        // The proxy's connection to the backend, as the kernel reports it.
        let ss = try s.world.sandbox.run("/usr/bin/ss", ["-tinH", "state", "established", "dst", "10.95.0.2:\(s.backend.port)"])
        let algorithms = ss.stdout.split(whereSeparator: \.isWhitespace).filter { ["cubic", "reno", "bbr"].contains($0) }
        #expect(algorithms == [Substring(expected)], "\(ss.stdout)")
    }

    @Test("PROXY protocol v2: the backend learns the client's address")
    func proxyProtocol() throws {
        let s = try Setup()
        let c1 = try s.world.container("c1")
        let server = try Traffic.listen(in: c1, port: 9102)
        defer { close(server.fd) }
        try s.serve([ProxyRelayTests.route(listen: "0.0.0.0", 18008, 9102, proxyProtocol: true)])
        let fd = try Client.connect(in: s.world.neighbour, to: World.hostIP, port: 18008)
        defer { close(fd) }
        let accepted = accept(server.fd, nil, nil)
        defer { close(accepted) }
        var header = [UInt8](repeating: 0, count: 28)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(accepted, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(header.withUnsafeMutableBytes { recv(accepted, $0.baseAddress, 28, Int32(MSG_WAITALL)) } == 28)
        #expect(Array(header[0..<16]) == [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0, 12])
        #expect(Array(header[16..<20]) == IPAddress(World.neighbourIP)!.bytes)
        #expect(Array(header[20..<24]) == IPAddress(World.hostIP)!.bytes)
        #expect(UInt16(header[26]) << 8 | UInt16(header[27]) == 18008)
    }

    @Test("routes added and removed while traffic flows; a taken port is refused and nothing changes")
    func liveChanges() throws {
        let s = try Setup()
        let a = ProxyRelayTests.route(listen: "0.0.0.0", 18009, s.backend.port)
        let b = ProxyRelayTests.route(listen: "0.0.0.0", 18010, s.backend.port)
        try s.serve([a])
        let open = try Client.connect(in: s.host, to: World.hostIP, port: 18009)
        defer { close(open) }
        #expect(Client.sendAll(open, Array("one".utf8)))
        try s.serve([a, b])
        let second = try Client.connect(in: s.host, to: World.hostIP, port: 18010)
        #expect(Client.sendAll(second, Array("two".utf8)))
        shutdown(second, Int32(SHUT_WR))
        #expect(Client.readAll(second).bytes == Array("two".utf8))
        close(second)
        // Removing a route stops new connections and cuts the ones it carried.
        try s.serve([b])
        #expect(Client.readAll(open).error == ECONNRESET)
        #expect(throws: SandboxError.self) { try Client.connect(in: s.host, to: World.hostIP, port: 18009, timeout: 1) }

        // A port some program holds: the update is refused whole.
        let holder = try Traffic.listen(in: s.host, port: 18011)
        defer { close(holder.fd) }
        let c = ProxyRelayTests.route(listen: "0.0.0.0", 18012, s.backend.port)
        let error = #expect(throws: ProxyError.self) {
            try s.serve([b, c, ProxyRelayTests.route(listen: "0.0.0.0", 18011, s.backend.port)])
        }
        #expect(error?.description.contains("0.0.0.0:18011/tcp: another program holds it") == true)
        #expect(s.proxy.currentRoutes == [b])
        #expect(throws: SandboxError.self) { try Client.connect(in: s.host, to: World.hostIP, port: 18012, timeout: 1) }

        // The same listen address with another backend (a container that came back with a
        // new address, say) replaces the route in place.
        let other = try EchoBackend(in: try s.world.container("c1"))
        let moved = ProxyRelayTests.route(listen: "0.0.0.0", 18010, other.port)
        try s.serve([moved])
        #expect(s.proxy.currentRoutes == [moved])
        let fd = try Client.connect(in: s.host, to: World.hostIP, port: 18010)
        defer { close(fd) }
        #expect(Client.sendAll(fd, Array("moved".utf8)))
        shutdown(fd, Int32(SHUT_WR))
        #expect(Client.readAll(fd).bytes == Array("moved".utf8))

        // A UDP route replaced in an update that is refused (a taken port) keeps serving (its
        // replacement's sockets, bound beside it, are closed again).
        let udp = ProxyRelayTests.route(.udp, listen: "0.0.0.0", 18013, s.backend.port)
        try s.serve([moved, udp])
        let refused = #expect(throws: ProxyError.self) {
            try s.serve([moved, ProxyRelayTests.route(.udp, listen: "0.0.0.0", 18013, other.port),
                         ProxyRelayTests.route(listen: "0.0.0.0", 18011, s.backend.port)])
        }
        #expect(refused != nil)
        #expect(s.proxy.currentRoutes == [moved, udp])
        let client = try Traffic.udpSocket(in: s.world.neighbour)
        defer { close(client.fd) }
        try Traffic.sendUDP(client.fd, to: World.hostIP, port: 18013, Array("abc".utf8))
        #expect(Traffic.receiveUDP(client.fd)?.payload == Array("cba".utf8))
    }
}
