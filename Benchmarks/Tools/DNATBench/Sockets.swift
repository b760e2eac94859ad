import Glibc

/// Plain blocking sockets for the benchmark's client and servers: the point is the path
/// between them, so both ends stay as simple as possible.
enum Sockets {
    static func listen(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = address("0.0.0.0", port)
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0, Glibc.listen(fd, 1024) == 0 else { throw BenchError("listen on :\(port): \(String(cString: strerror(errno)))") }
        return fd
    }

    /// Each connection gets one byte; the client closes first, so TIME_WAIT stays with the
    /// client, per destination. (A server-side TIME_WAIT would be shared by the direct and
    /// the DNAT path, whose tuples look alike from the server, and stall reused ports.)
    static func serveShort(_ listener: Int32) {
        var byte: UInt8 = 1
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { if errno == EINTR { continue } else { return } }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = send(fd, &byte, 1, Int32(MSG_NOSIGNAL))
            _ = recv(fd, &byte, 1, 0)  // the client's FIN
            close(fd)
        }
    }

    /// Reads and discards until the client closes, then closes, one connection at a time.
    static func serveBulk(_ listener: Int32) {
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { if errno == EINTR { continue } else { return } }
            while buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
            close(fd)
        }
    }

    static func address(_ ip: String, _ port: UInt16) -> sockaddr_in {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        _ = inet_pton(AF_INET, ip, &sa.sin_addr)
        return sa
    }

    static func connect(_ ip: String, _ port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var sa = address(ip, port)
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw BenchError("connect \(ip):\(port): \(message)")
        }
        return fd
    }

    /// Sequential short connections: connect, read the server's byte, close. Returns
    /// connections/s and each connection's time in ms. Bounded by `count` and `seconds`.
    static func connectionRate(to ip: String, port: UInt16, count: Int, seconds: Double) throws -> (Double, [Double]) {
        var samples: [Double] = []
        samples.reserveCapacity(count)
        var byte: UInt8 = 0
        let total = try time {
            var elapsed = 0.0
            while samples.count < count && elapsed < seconds * 1000 {
                let one = try time {
                    let fd = try connect(ip, port)
                    defer { close(fd) }
                    guard recv(fd, &byte, 1, 0) == 1 else { throw BenchError("no byte from \(ip):\(port)") }
                }
                samples.append(one)
                elapsed += one
            }
        }
        return (Double(samples.count) / (total / 1000), samples)
    }

    /// One stream, as fast as it goes, for `seconds`; Gbit/s counted when the server has
    /// read everything (it closes after EOF).
    static func throughput(to ip: String, port: UInt16, seconds: Double) throws -> Double {
        let fd = try connect(ip, port)
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0x5a, count: 1 << 18)
        var sent = 0
        let elapsed = try time {
            var start = timespec(), now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &start)
            repeat {
                let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { throw BenchError("send: \(String(cString: strerror(errno)))") }
                sent += n
                clock_gettime(CLOCK_MONOTONIC, &now)
            } while Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9 < seconds
            shutdown(fd, Int32(SHUT_WR))
            var byte: UInt8 = 0
            _ = recv(fd, &byte, 1, 0)  // returns 0 once the server has read all and closed
        }
        return Double(sent) * 8 / (elapsed / 1000) / 1e9
    }
}
