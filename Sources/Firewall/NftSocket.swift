import CNftables
import Glibc
import Netlink

/// A NETLINK_NETFILTER socket through libmnl, for nftables batches. Like every netlink
/// socket here it conforms to `NetlinkSocket`, so tests inject `MockNetlinkSocket`.
public final class MnlSocket: NetlinkSocket {
    private let handle: OpaquePointer
    /// Receive buffer, not zeroed: its pages are touched only as far as replies reach (a
    /// zeroed one cost 32 page faults in every short-lived process that opens the socket).
    private let buffer: UnsafeMutableRawPointer
    private static let bufferSize = 1 << 17

    public var descriptor: Int32? { mnl_socket_get_fd(handle) }

    /// Opens a socket in the calling thread's network namespace.
    public init() throws {
        guard let handle = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetlinkError(operation: "opening an nftables netlink socket", code: errno)
        }
        self.handle = handle
        buffer = UnsafeMutableRawPointer.allocate(byteCount: MnlSocket.bufferSize, alignment: 16)
        // From here on a throw runs deinit, which closes the socket.
        guard mnl_socket_bind(handle, 0, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            throw NetlinkError(operation: "binding an nftables netlink socket", code: errno)
        }
        let fd = mnl_socket_get_fd(handle)
        // A batch must go out in one sendmsg: make room for large ones (root may force it).
        var size: Int32 = 8 << 20
        setsockopt(fd, SOL_SOCKET, 32 /* SO_SNDBUFFORCE */, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, 33 /* SO_RCVBUFFORCE */, &size, socklen_t(MemoryLayout<Int32>.size))
        // Errors need not echo whole requests back.
        var one: Int32 = 1
        setsockopt(fd, SOL_NETLINK, 10 /* NETLINK_CAP_ACK */, &one, socklen_t(MemoryLayout<Int32>.size))
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        mnl_socket_close(handle)
        buffer.deallocate()
    }

    public func send(_ datagram: [UInt8]) throws {
        let sent = datagram.withUnsafeBytes { mnl_socket_sendto(handle, $0.baseAddress, $0.count) }
        guard sent == datagram.count else {
            throw NetlinkError(operation: "sending an nftables batch of \(datagram.count) bytes", code: sent < 0 ? errno : EMSGSIZE)
        }
    }

    public func receive() throws -> [UInt8] {
        let n = mnl_socket_recvfrom(handle, buffer, MnlSocket.bufferSize)
        guard n >= 0 else {
            let code = errno
            throw NetlinkError(operation: code == EAGAIN ? "waiting for the kernel's nftables reply" : "receiving an nftables reply",
                               code: code == EAGAIN ? ETIMEDOUT : code)
        }
        return Array(UnsafeRawBufferPointer(start: buffer, count: n))
    }
}
