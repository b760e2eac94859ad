import Glibc
import Netlink
import Primitives

/// Real TCP between namespaces. Sockets are created on a thread inside the namespace they
/// belong to (a socket keeps its namespace), then used from here. Every wait is bounded.
enum Traffic {
    /// Listens on `address` (any address of the family if nil) inside `namespace`.
    static func listen(in namespace: NetworkNamespace, ipv6: Bool = false, address: String? = nil, port: UInt16 = 0,
                       reusePort: Bool = false) throws -> (fd: Int32, port: UInt16) {
        let fd = try namespace.run { socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard fd >= 0 else { throw SandboxError("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        setTimeouts(fd)
        var storage = try sockaddr(address ?? (ipv6 ? "::" : "0.0.0.0"), port: port)
        guard withSockaddr(&storage, { Glibc.bind(fd, $0, $1) }) == 0, Glibc.listen(fd, 16) == 0 else {
            close(fd)
            throw SandboxError("bind/listen failed: \(String(cString: strerror(errno)))")
        }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let port = withUnsafeBytes(of: bound) { raw in UInt16(raw[2]) << 8 | UInt16(raw[3]) }
        return (fd, port)
    }

    /// Connects from `namespace` to address:port, sends a random message, and checks that
    /// the listener received exactly it and that its reply came back. Returns the peer
    /// address the server saw.
    @discardableResult
    static func roundTrip(from namespace: NetworkNamespace, to address: String, port: UInt16, listener: Int32,
                          timeout: Int = 5) throws -> String {
        let ipv6 = address.contains(":")
        let client = try namespace.run { socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard client >= 0 else { throw SandboxError("socket: \(errno)") }
        defer { close(client) }
        setTimeouts(client, seconds: timeout)
        var target = try sockaddr(address, port: port)
        guard withSockaddr(&target, { connect(client, $0, $1) }) == 0 else {
            throw SandboxError("connect to \(address):\(port) failed: \(String(cString: strerror(errno)))")
        }
        var peer = sockaddr_storage()
        var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let server = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { accept(listener, $0, &peerLength) }
        }
        guard server >= 0 else { throw SandboxError("accept failed: \(String(cString: strerror(errno)))") }
        defer { close(server) }
        setTimeouts(server)
        let message = Array("hello \(UInt64.random(in: 0...UInt64.max))".utf8)
        try sendAll(client, message)
        let received = try receive(server, count: message.count)
        guard received == message else { throw SandboxError("server received \(received), sent \(message)") }
        try sendAll(server, Array(received.reversed()))
        let reply = try receive(client, count: message.count)
        guard reply == Array(message.reversed()) else { throw SandboxError("client received a wrong reply") }
        return describe(&peer)
    }

    /// The body of GET `path` from an HTTP server at address:port, reached from `namespace`.
    static func httpGet(from namespace: NetworkNamespace, _ address: String, _ port: UInt16, path: String = "/") throws -> String {
        let client = try namespace.run { socket(address.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard client >= 0 else { throw SandboxError("socket: \(errno)") }
        defer { close(client) }
        setTimeouts(client, seconds: 5)
        var target = try sockaddr(address, port: port)
        guard withSockaddr(&target, { connect(client, $0, $1) }) == 0 else {
            throw SandboxError("connect to \(address):\(port) failed: \(String(cString: strerror(errno)))")
        }
        try sendAll(client, Array("GET \(path) HTTP/1.0\r\nHost: \(address)\r\n\r\n".utf8))
        var response = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while response.count < 1 << 20 {
            let n = recv(client, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard text.hasPrefix("HTTP/1."), let split = text.range(of: "\r\n\r\n") else {
            throw SandboxError("no HTTP response from \(address):\(port): \(text.prefix(200))")
        }
        guard text.hasPrefix("HTTP/1.0 200") || text.hasPrefix("HTTP/1.1 200") else {
            throw SandboxError("HTTP \(text.prefix(while: { $0 != "\r" })) from \(address):\(port)")
        }
        return String(text[split.upperBound...])
    }

    /// Whether a TCP connection from `namespace` to address:port is refused, unreachable or
    /// times out (false if it connects to anything); any other failure is the test's own and
    /// thrown, so a mistyped address never passes for a blocked one.
    static func tcpBlocked(from namespace: NetworkNamespace, to address: String, port: UInt16) throws -> Bool {
        let client = try namespace.run { socket(address.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard client >= 0 else { throw SandboxError("socket: \(errno)") }
        defer { close(client) }
        setTimeouts(client, seconds: 1)
        var target = try sockaddr(address, port: port)
        if withSockaddr(&target, { connect(client, $0, $1) }) == 0 { return false }
        switch errno {
        case ECONNREFUSED, ETIMEDOUT, EINPROGRESS, EAGAIN, EHOSTUNREACH, ENETUNREACH: return true
        case let code: throw SandboxError("connect to \(address):\(port) failed: \(String(cString: strerror(code)))")
        }
    }

    // MARK: UDP

    /// TCP sockets listening on `port` in the calling thread's namespace (IPv4 and IPv6).
    static func listeners(port: UInt16) -> Int {
        let hex = ":" + String(format: "%04X", port)
        return ["tcp", "tcp6"].reduce(0) { count, file in
            let text = (try? String(contentsOfFile: "/proc/thread-self/net/" + file, encoding: .utf8)) ?? ""
            return count + text.split(separator: "\n").filter { line in
                let fields = line.split(separator: " ")
                return fields.count > 3 && fields[1].hasSuffix(hex) && fields[3] == "0A"
            }.count
        }
    }

    /// A UDP socket bound inside `namespace`.
    static func udpSocket(in namespace: NetworkNamespace, ipv6: Bool = false, address: String? = nil, port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let fd = try namespace.run { socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard fd >= 0 else { throw SandboxError("socket: \(errno)") }
        setTimeouts(fd, seconds: 2)
        var storage = try sockaddr(address ?? (ipv6 ? "::" : "0.0.0.0"), port: port)
        guard withSockaddr(&storage, { Glibc.bind(fd, $0, $1) }) == 0 else {
            close(fd)
            throw SandboxError("udp bind failed: \(String(cString: strerror(errno)))")
        }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return (fd, withUnsafeBytes(of: bound) { raw in UInt16(raw[2]) << 8 | UInt16(raw[3]) })
    }

    static func sendUDP(_ fd: Int32, to address: String, port: UInt16, _ payload: [UInt8]) throws {
        var target = try sockaddr(address, port: port)
        let n = withSockaddr(&target) { sa, length in Int32(payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, length) }) }
        guard n == payload.count else { throw SandboxError("sendto \(address):\(port) failed: \(String(cString: strerror(errno)))") }
    }

    /// One datagram and its sender's address, or nil after the socket's timeout.
    static func receiveUDP(_ fd: Int32) -> (payload: [UInt8], from: String, port: UInt16)? {
        var buffer = [UInt8](repeating: 0, count: 2048)
        var peer = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) } }
        }
        guard n >= 0 else { return nil }
        let port = withUnsafeBytes(of: peer) { raw in UInt16(raw[2]) << 8 | UInt16(raw[3]) }
        return (Array(buffer[0..<n]), describe(&peer), port)
    }

    /// A datagram from `namespace` to address:port, received by `server`, answered and the
    /// answer received. Returns the client address the server saw.
    @discardableResult
    static func udpRoundTrip(from namespace: NetworkNamespace, to address: String, port: UInt16, server: Int32) throws -> String {
        let client = try udpSocket(in: namespace, ipv6: address.contains(":"))
        defer { close(client.fd) }
        let message = Array("ping \(UInt64.random(in: 0...UInt64.max))".utf8)
        try sendUDP(client.fd, to: address, port: port, message)
        guard let got = receiveUDP(server), got.payload == message else {
            throw SandboxError("the server did not receive the datagram sent to \(address):\(port)")
        }
        try sendUDP(server, to: got.from, port: got.port, Array(message.reversed()))
        guard let reply = receiveUDP(client.fd), reply.payload == Array(message.reversed()) else {
            throw SandboxError("the reply to \(address):\(port) did not come back")
        }
        return got.from
    }

    /// Sends a hand-made IPv4/UDP packet out of `interface` in `namespace` to a neighbour's
    /// MAC, whatever the routing table says: how an attacker on the LAN reaches 127.0.0.1.
    static func craftedUDP(in namespace: NetworkNamespace, interface: Int32, to mac: [UInt8], source: String,
                           destination: String, port: UInt16, payload: [UInt8]) throws {
        let ethIP: UInt16 = 0x0800
        let fd = try namespace.run { socket(AF_PACKET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(ethIP.bigEndian)) }
        guard fd >= 0 else { throw SandboxError("packet socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let src = IPAddress(source)!.bytes, dst = IPAddress(destination)!.bytes
        let total = 20 + 8 + payload.count
        var packet: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0x40, 0, 64, 17, 0, 0] + src + dst
        var sum: UInt32 = 0
        for i in stride(from: 0, to: 20, by: 2) { sum += UInt32(packet[i]) << 8 | UInt32(packet[i + 1]) }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        let checksum = ~UInt16(sum)
        packet[10] = UInt8(checksum >> 8); packet[11] = UInt8(checksum & 0xff)
        let udpLength = 8 + payload.count
        packet += [0x30, 0x39, UInt8(port >> 8), UInt8(port & 0xff), UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0] + payload
        // struct sockaddr_ll: family, protocol, ifindex, hatype, pkttype, halen, addr[8].
        var address = [UInt8](repeating: 0, count: 20)
        withUnsafeBytes(of: UInt16(AF_PACKET)) { address.replaceSubrange(0..<2, with: $0) }
        withUnsafeBytes(of: ethIP.bigEndian) { address.replaceSubrange(2..<4, with: $0) }
        withUnsafeBytes(of: interface) { address.replaceSubrange(4..<8, with: $0) }
        address[11] = 6
        address.replaceSubrange(12..<18, with: mac)
        let sent = address.withUnsafeBytes { sa in
            packet.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa.baseAddress!.assumingMemoryBound(to: Glibc.sockaddr.self), 20) }
        }
        guard sent == packet.count else { throw SandboxError("sending the crafted packet failed: \(String(cString: strerror(errno)))") }
    }

    private static func setTimeouts(_ fd: Int32, seconds: Int = 5) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw SandboxError("send failed: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    private static func receive(_ fd: Int32, count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw SandboxError("recv failed: \(n == 0 ? "connection closed" : String(cString: strerror(errno)))") }
            got += n
        }
        return buffer
    }

    private static func sockaddr(_ address: String, port: UInt16) throws -> sockaddr_storage {
        var storage = sockaddr_storage()
        if address.contains(":") {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            guard inet_pton(AF_INET6, address, &sa.sin6_addr) == 1 else { throw SandboxError("bad address \(address)") }
            withUnsafeBytes(of: sa) { src in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: src) } }
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            guard inet_pton(AF_INET, address, &sa.sin_addr) == 1 else { throw SandboxError("bad address \(address)") }
            withUnsafeBytes(of: sa) { src in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: src) } }
        }
        return storage
    }

    private static func withSockaddr(_ storage: inout sockaddr_storage, _ body: (UnsafePointer<Glibc.sockaddr>, socklen_t) -> Int32) -> Int32 {
        let length = storage.ss_family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { body($0, socklen_t(length)) } }
    }

    private static func describe(_ storage: inout sockaddr_storage) -> String {
        let ipv6 = storage.ss_family == sa_family_t(AF_INET6)
        let bytes = withUnsafeBytes(of: storage) { raw in ipv6 ? Array(raw[8..<24]) : Array(raw[4..<8]) }
        return IPAddress(bytes: bytes)?.description ?? "?"
    }
}
