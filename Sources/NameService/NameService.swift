import CSocket
import Glibc
import Logging
import NetCore
import Primitives

/// netctl's name service: the server process (`serve`) and what every netctl process calls
/// after a change of names (`sync`). One server per state directory serves every network
/// with names. It is started by the first `sync` that finds it needed and not running (as
/// netavark starts aardvark-dns), restarted by the next `sync` if it died, and stops by
/// itself once no network needs it.
public enum NameService {
    static func socketPath(_ stateDirectory: String) -> String { stateDirectory + "/dns.sock" }
    static func lockPath(_ stateDirectory: String) -> String { stateDirectory + "/dns.lock" }
    public static func logPath(_ stateDirectory: String) -> String { stateDirectory + "/dns.log" }

    /// The server's binary: `netctl-dns` beside the running executable (builds and installs
    /// put netctl's executables together).
    public static func defaultServer() -> String {
        let own = Processes.ownExecutable()
        return String(own[..<(own.lastIndex(of: "/") ?? own.startIndex)]) + "/netctl-dns"
    }

    /// Brings the name server in line with state, and returns once it answers from it: a
    /// name attached before this call resolves, a name detached before it is gone. Starts
    /// the server (`server --state-dir DIR`) if a network needs one and none runs.
    public static func sync(_ manager: NetworkManager, server: String = defaultServer()) throws {
        let directory = manager.stateDirectory
        if let reply = try? request(directory) { return try check(reply, directory) }
        guard try !manager.nameTable().isEmpty else { return }
        guard access(server, X_OK) == 0 else { throw NameServiceError.serverMissing(path: server) }
        let log = open(logPath(directory), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer { if log >= 0 { close(log) } }
        do {
            _ = try Processes.spawn([server, "--state-dir", directory], fds: [0: -1, 1: -1, 2: log], newSession: true)
        } catch {
            throw NameServiceError.notStarted(reason: "\(error)", log: logPath(directory))
        }
        // It answers once its control socket listens; a few milliseconds.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while monotonicNanoseconds() < deadline {
            if let reply = try? request(directory) { return try check(reply, directory) }
            usleep(5_000)
        }
        throw NameServiceError.notStarted(reason: "it did not answer within 5 s", log: logPath(directory))
    }

    /// Starts the server again if a network needs it and it does not answer (it was
    /// killed, say): what every command does, cheaply (one connect when it runs).
    public static func ensureRunning(_ manager: NetworkManager, server: String = defaultServer()) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        if var address = try? unixAddress(socketPath(manager.stateDirectory)), withUnsafePointer(to: &address, {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }) == 0 {
            return
        }
        try sync(manager, server: server)
    }

    /// The running server's process ID, if one serves this state directory.
    public static func serverProcess(_ stateDirectory: String) -> ProcessIdentity? {
        guard let text = readFile(lockPath(stateDirectory)), let identity = ProcessIdentity(encoded: text.trimmingWhitespace()),
              identity.isAlive else { return nil }
        return identity
    }

    private static func check(_ reply: String, _ directory: String) throws {
        guard reply.hasPrefix("ok") || reply.hasPrefix("stop") else {
            throw NameServiceError.failed(reason: String(reply.drop { $0 != " " }.dropFirst()), log: logPath(directory))
        }
    }

    /// "sync" over the control socket; the server's one-line reply.
    private static func request(_ directory: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("opening a unix socket") }
        defer { close(fd) }
        var address = try unixAddress(socketPath(directory))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw SystemError("connecting to the name server") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard writeAll(fd, Array("sync\n".utf8)) else { throw SystemError("talking to the name server") }
        let reply = readAll(fd, limit: 4096)
        guard !reply.isEmpty else { throw SystemError("talking to the name server", code: EPIPE) }
        return String(decoding: reply, as: UTF8.self)
    }

    static func unixAddress(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw NameServiceError.notStarted(reason: "the state directory's path is too long for a unix socket", log: path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    /// The server (`netctl-dns`): serves until no network needs names, or its state is gone.
    /// A second server for the same state directory exits at once.
    public static func serve(stateDirectory: String, logger: Logger) throws {
        let lock = open(lockPath(stateDirectory), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw SystemError("opening \(lockPath(stateDirectory))") }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { return }  // another one serves
        // Who serves, for operators and tests (the lock is what counts).
        ftruncate(lock, 0)
        _ = writeAll(lock, Array((ProcessIdentity.current().encoded + "\n").utf8))
        let manager = try NetworkManager(stateDirectory: stateDirectory, logger: logger)
        let path = socketPath(stateDirectory)
        unlink(path)
        let control = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = try unixAddress(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(control, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard control >= 0, bound == 0, chmod(path, 0o600) == 0, listen(control, 64) == 0 else {
            throw SystemError("listening on \(path)")
        }
        defer { unlink(path); close(control) }
        let server = try NameServer(stateDirectory: stateDirectory, manager: manager, control: control, logger: logger)
        guard try server.reload() else { return }
        logger.notice("serving names (pid \(getpid()))")
        server.run()
        logger.notice("no network needs names any more; stopping")
    }
}

extension String {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// Why names could not be served, with where to look.
public enum NameServiceError: Error, CustomStringConvertible, Equatable {
    case serverMissing(path: String)
    case notStarted(reason: String, log: String)
    case failed(reason: String, log: String)

    public var description: String {
        switch self {
        case .serverMissing(let path): return "the name server's binary is missing: no executable at \(path)"
        case .notStarted(let reason, let log): return "the name server did not start: \(reason); see \(log)"
        case .failed(let reason, let log): return "the name server could not follow state: \(reason); see \(log)"
        }
    }
}
