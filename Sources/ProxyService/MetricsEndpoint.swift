import Glibc
import Primitives
import Synchronization

/// A minimal HTTP endpoint for Prometheus: GET /metrics answers with the latest text set
/// by `update`; anything else gets 404. One thread, one request per connection.
public final class MetricsEndpoint: Sendable {
    private let fd: Int32
    private let text = Mutex("")

    /// Listens on `target` (in the caller's network namespace).
    public init(listen target: SocketAddress) throws {
        fd = socket(target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = target.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw ServiceError.cannotListen(address: "\(target)", code: code)
        }
        do {
            pthread_detach(try startThread("the metrics endpoint") { [self] in serve() })  // it serves for the process's lifetime
        } catch {
            close(fd)
            throw error
        }
    }

    public func update(_ text: String) {
        self.text.withLock { $0 = text }
    }

    private func serve() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 { if errno == EINTR { continue } else { return } }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))  // a client that never reads
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            let request = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
            let found = request.hasPrefix("GET /metrics ") || request.hasPrefix("GET /metrics?")
            let body = found ? text.withLock { $0 } : "not found; try /metrics\n"
            let response = "HTTP/1.1 \(found ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\n" +
                "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            _ = Array(response.utf8).withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(client)
        }
    }
}

/// Why a relaying service could not start.
public enum ServiceError: Error, CustomStringConvertible, Equatable {
    case cannotListen(address: String, code: Int32)
    case cannotStartThread(what: String, code: Int32)

    public var description: String {
        switch self {
        case .cannotListen(let address, let code):
            return "cannot serve metrics on \(address): \(errorMessage(code))"
        case .cannotStartThread(let what, let code):
            return "cannot start a thread for \(what): \(errorMessage(code))"
        }
    }
}
