import CNetlink
import CDetached
import Glibc

/// Moves whole datagrams to and from the kernel. Injected into `RouteNetlink` so unit tests
/// can check the exact bytes of every request without root (see `MockNetlinkSocket`).
public protocol NetlinkSocket: AnyObject {
    /// Sends one datagram, which may hold several messages (the kernel handles them in order).
    func send(_ datagram: [UInt8]) throws
    /// Receives one datagram.
    func receive() throws -> [UInt8]
    /// Hands one datagram to a detached process that sends it from this socket's network
    /// namespace and waits for the kernel itself: for work the caller need not wait for.
    /// `lockDirectory` (root's) holds the lock that makes one such process per namespace.
    func sendDetached(_ datagram: [UInt8], lockDirectory: String) throws
    /// The kernel socket's descriptor; nil for sockets that have none (mocks).
    var descriptor: Int32? { get }
}

extension NetlinkSocket {
    public var descriptor: Int32? { nil }

    /// Sockets that never hand work to another process (nftables) don't implement it.
    public func sendDetached(_ datagram: [UInt8], lockDirectory: String) throws {
        throw NetlinkError(operation: "sending a netlink request from a detached process", code: EOPNOTSUPP)
    }

    /// Sends one datagram of requests that each asked for an acknowledgement, with the
    /// given consecutive sequence numbers, and returns each one's errno (0 = success) in
    /// order. Counts the acknowledgements itself: a batch has one per request.
    public func transact(_ datagram: [UInt8], sequences: Range<UInt32>) throws -> [Int32] {
        try send(datagram)
        var codes = [Int32?](repeating: nil, count: sequences.count)
        var remaining = codes.count
        while remaining > 0 {
            for reply in try NetlinkMessage.parse(receive()) where reply.type == NetlinkMessageType.error {
                let slot = Int(reply.sequence &- sequences.lowerBound)
                guard slot >= 0, slot < codes.count, codes[slot] == nil else { continue }
                codes[slot] = reply.errorCode
                remaining -= 1
            }
        }
        return codes.map { $0 ?? 0 }
    }

    /// Sends one dump request (its sequence number already set) and collects every reply
    /// message up to NLMSG_DONE.
    public func dump(_ request: [UInt8], _ operation: String) throws -> [NetlinkMessage] {
        let sequence = request.readInteger(at: 8, as: UInt32.self)
        try send(request)
        var result: [NetlinkMessage] = []
        while true {
            for reply in try NetlinkMessage.parse(receive()) where reply.sequence == sequence {
                switch reply.type {
                case NetlinkMessageType.done: return result
                case NetlinkMessageType.error:
                    if reply.errorCode != 0 { throw NetlinkError(operation: operation, code: reply.errorCode) }
                    return result
                default: result.append(reply)
                }
            }
        }
    }
}

/// A netlink socket through libnl-3: the one transport for every kind netctl speaks,
/// rtnetlink (links, addresses, routes) and nfnetlink (nftables batches, conntrack). It
/// stays bound to the network namespace of the thread that created it, whichever thread
/// uses it later.
public final class LibnlSocket: NetlinkSocket {
    public enum Family: Sendable {
        case route
        /// nftables and conntrack.
        case netfilter

        var name: String { self == .route ? "rtnetlink" : "nfnetlink" }
    }

    private let handle: OpaquePointer
    public let family: Family

    /// Opens a socket in the calling thread's network namespace.
    public init(_ family: Family = .route, receiveTimeoutSeconds: Int = 10) throws {
        self.family = family
        guard let handle = nl_socket_alloc() else {
            throw NetlinkError(operation: "allocating a netlink socket", code: ENOMEM)
        }
        self.handle = handle
        // From here on a throw runs deinit, which frees the socket.
        let rc = nl_connect(handle, family == .route ? NETLINK_ROUTE : NETLINK_NETFILTER)
        if rc < 0 {
            throw NetlinkError(operation: "opening an \(family.name) socket (\(String(cString: nl_geterror(rc))))",
                               code: errno != 0 ? errno : EIO)
        }
        // Peek so a large message is never truncated; a receive timeout so a lost reply can
        // never hang a caller forever.
        nl_socket_enable_msg_peek(handle)
        let fd = nl_socket_get_fd(handle)
        switch family {
        case .route:
            _ = nl_socket_set_buffer_size(handle, 1 << 20, 1 << 20)
        case .netfilter:
            // An nftables batch must go out in one sendmsg: room for large ones (root may
            // force it past the system's maximum). Errors need not echo whole requests back.
            var size: Int32 = 8 << 20, one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { nl_socket_free(handle) }

    public func send(_ datagram: [UInt8]) throws {
        var copy = datagram
        let rc = copy.withUnsafeMutableBytes { nl_sendto(handle, $0.baseAddress, $0.count) }
        if rc < 0 {
            let code = errno  // sendto's, which libnl leaves as it was
            throw NetlinkError(operation: "sending \(datagram.count) bytes on an \(family.name) socket", code: code != 0 ? code : EIO)
        }
    }

    public var descriptor: Int32? { nl_socket_get_fd(handle) }

    public func sendDetached(_ datagram: [UInt8], lockDirectory: String) throws {
        let rc = datagram.withUnsafeBytes { cdetached_send(nl_socket_get_fd(handle), $0.baseAddress, $0.count, lockDirectory) }
        if rc < 0 { throw NetlinkError(operation: "starting a process to send a netlink request", code: -rc) }
    }

    public func receive() throws -> [UInt8] {
        var peer = sockaddr_nl()
        var buffer: UnsafeMutablePointer<UInt8>?
        let rc = nl_recv(handle, &peer, &buffer, nil)
        defer { free(buffer) }
        if rc < 0 {
            let timedOut = rc == -NLE_AGAIN
            let code = errno
            throw NetlinkError(operation: timedOut ? "waiting for the kernel's \(family.name) reply"
                                                   : "receiving an \(family.name) reply (\(String(cString: nl_geterror(rc))))",
                               code: timedOut ? ETIMEDOUT : (code != 0 ? code : EIO))
        }
        guard let buffer else { return [] }
        return Array(UnsafeBufferPointer(start: buffer, count: Int(rc)))
    }
}
