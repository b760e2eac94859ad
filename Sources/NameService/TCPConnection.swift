import CProcess
import CSocket
import Glibc
import Primitives
import Synchronization

/// One client's TCP connection (RFC 7766: two-byte length, then a message), served on a
/// thread of its own with blocking reads and writes under timeouts: local names answered
/// from the current names, anything else forwarded over TCP to an upstream. TCP is what a
/// resolver retries with after a truncated UDP answer, so there are few; the server bounds
/// how many at once.
final class TCPConnection: Sendable {
    final class Count: Sendable {
        let value = Atomic<Int>(0)
    }

    let fd: Int32
    let address: IPAddress
    let shared: SharedNames
    let upstreams: [SocketAddress]
    let count: Count
    /// An idle client is let go after this long.
    static let idleSeconds = 10

    init(fd: Int32, address: IPAddress, shared: SharedNames, upstreams: [SocketAddress], count: Count) {
        self.fd = fd; self.address = address; self.shared = shared; self.upstreams = upstreams; self.count = count
    }

    func start() throws {
        pthread_detach(try startThread("a TCP client") { [self] in serve() })
    }

    private func serve() {
        defer {
            close(fd)
            count.value.subtract(1, ordering: .relaxed)
        }
        var timeout = timeval(tv_sec: TCPConnection.idleSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var peer = sockaddr_storage()
        var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        guard withUnsafeMutablePointer(to: &peer, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &peerLength) } }) == 0,
              let client = SocketAddress(peer) else { return }
        let nameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DNS.maxNameLength, alignment: 1)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 65535, alignment: 1)
        defer { nameBuffer.deallocate(); out.deallocate() }
        while let query = TCPConnection.readMessage(fd) {
            let names = shared.value.withLock { $0 }
            let resolution = query.withUnsafeBytes { packet in
                NameServer.resolve(packet, client: client.ip, zone: names.listeners[address], names: names,
                                   nameBuffer: nameBuffer, out: out, limit: out.count)
            }
            switch resolution {
            case .answered(let length):
                guard TCPConnection.writeMessage(fd, UnsafeRawBufferPointer(rebasing: out[0..<length])) else { return }
            case .dropped:
                return
            case .forward(let own):
                guard let reply = forward(query, to: own.isEmpty ? upstreams : own) else { return }  // the client retries
                guard reply.withUnsafeBytes({ TCPConnection.writeMessage(fd, $0) }) else { return }
            }
        }
    }

    /// The query over TCP to each upstream in turn; the first answer.
    private func forward(_ query: [UInt8], to servers: [SocketAddress]) -> [UInt8]? {
        for server in servers.prefix(3) {
            let upstream = socket(server.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard upstream >= 0 else { continue }
            defer { close(upstream) }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(upstream, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(upstream, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            guard server.withSockaddr({ connect(upstream, $0, $1) }) == 0,
                  query.withUnsafeBytes({ TCPConnection.writeMessage(upstream, $0) }),
                  let reply = TCPConnection.readMessage(upstream) else { continue }
            return reply
        }
        return nil
    }

    /// One length-prefixed message; nil at end of stream, on a timeout or error.
    static func readMessage(_ fd: Int32) -> [UInt8]? {
        var prefix: [UInt8] = [0, 0]
        guard readExactly(fd, &prefix, 2) else { return nil }
        let length = Int(prefix[0]) << 8 | Int(prefix[1])
        guard length >= DNS.headerSize else { return nil }
        var message = [UInt8](repeating: 0, count: length)
        return readExactly(fd, &message, length) ? message : nil
    }

    static func writeMessage(_ fd: Int32, _ message: UnsafeRawBufferPointer) -> Bool {
        guard message.count <= 65535 else { return false }
        var framed = [UInt8(message.count >> 8), UInt8(message.count & 0xff)]
        framed += message
        return writeAll(fd, framed)
    }

    private static func readExactly(_ fd: Int32, _ buffer: inout [UInt8], _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
