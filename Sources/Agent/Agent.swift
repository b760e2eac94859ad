import CSocket
import Glibc
import Logging
import NameService
import NetCore
import Primitives

/// netctl's agent: the one resident process per state directory, there while any network
/// is. It serves names on the gateways of networks with names (`NameServer`) and keeps the
/// firewall whole: it holds a guard table nobody else can remove and puts netctl's table back
/// the moment something else deletes from it (`FirewallWatch`). It is started by the first
/// `sync` that finds it needed and not running (as netavark starts aardvark-dns), restarted by
/// the next netctl command if it died, and stops by itself once no network exists.
public enum Agent {
    static func socketPath(_ stateDirectory: String) -> String { stateDirectory + "/agent.sock" }
    static func lockPath(_ stateDirectory: String) -> String { stateDirectory + "/agent.lock" }
    public static func logPath(_ stateDirectory: String) -> String { stateDirectory + "/agent.log" }

    /// Whether the agent is wanted: any network exists.
    static func needed(_ manager: NetworkManager) throws -> Bool { try !manager.networks().isEmpty }

    /// `NETCTL_AGENT=off`: no agent is started (no names are served, nobody watches the
    /// firewall); for hosts that run their own DNS and firewall checks, and for debugging.
    static var disabled: Bool { getenv("NETCTL_AGENT").map { String(cString: $0) == "off" } ?? false }

    /// The agent's binary: `netctl-agent` beside the running executable (builds and installs
    /// put netctl's executables together).
    public static func defaultBinary() -> String {
        let own = Processes.ownExecutable()
        return String(own[..<(own.lastIndex(of: "/") ?? own.startIndex)]) + "/netctl-agent"
    }

    /// Brings the agent in line with state, and returns once it answers from it: a name
    /// attached before this call resolves, a name detached before it is gone. Starts the
    /// agent (`binary --state-dir DIR`) if a network exists and none runs.
    public static func sync(_ manager: NetworkManager, binary: String = defaultBinary()) throws {
        let directory = manager.stateDirectory
        if let reply = try? request(directory) { return try check(reply, directory) }
        guard !disabled, try needed(manager) else { return }
        guard access(binary, X_OK) == 0 else { throw AgentError.binaryMissing(path: binary) }
        let log = open(logPath(directory), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer { if log >= 0 { close(log) } }
        do {
            _ = try Processes.spawn([binary, "--state-dir", directory], fds: [0: -1, 1: -1, 2: log], newSession: true)
        } catch {
            throw AgentError.notStarted(reason: "\(error)", log: logPath(directory))
        }
        // It answers once its control socket listens; a few milliseconds.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while monotonicNanoseconds() < deadline {
            if let reply = try? request(directory) { return try check(reply, directory) }
            usleep(5_000)
        }
        throw AgentError.notStarted(reason: "it did not answer within 5 s", log: logPath(directory))
    }

    /// Starts the agent again if a network needs it and it does not answer (it was killed,
    /// say): what every command does, cheaply (one connect when it runs).
    public static func ensureRunning(_ manager: NetworkManager, binary: String = defaultBinary()) throws {
        if let fd = try? UnixSocket.connect(socketPath(manager.stateDirectory)) {
            close(fd)
            return
        }
        try sync(manager, binary: binary)
    }

    /// The running agent's process, if one serves this state directory.
    public static func process(_ stateDirectory: String) -> ProcessIdentity? {
        guard let text = readFile(lockPath(stateDirectory)), let identity = ProcessIdentity(encoded: text.trimmed),
              identity.isAlive else { return nil }
        return identity
    }

    private static func check(_ reply: String, _ directory: String) throws {
        guard reply.hasPrefix("ok") || reply.hasPrefix("stop") else {
            throw AgentError.failed(reason: String(reply.drop { $0 != " " }.dropFirst()), log: logPath(directory))
        }
    }

    /// "sync" over the control socket; the server's one-line reply.
    private static func request(_ directory: String) throws -> String {
        try checkSocketPath(directory)
        let fd: Int32
        do { fd = try UnixSocket.connect(socketPath(directory)) } catch let error as SystemError {
            throw SystemError("connecting to netctl's agent", code: error.code)
        }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard writeAll(fd, Array("sync\n".utf8)) else { throw SystemError("talking to netctl's agent") }
        let reply = readAll(fd, limit: 4096)
        guard !reply.isEmpty else { throw SystemError("talking to netctl's agent", code: EPIPE) }
        return String(decoding: reply, as: UTF8.self)
    }

    /// A state directory whose socket path is too long for a unix socket: said in full.
    static func checkSocketPath(_ directory: String) throws {
        let path = socketPath(directory)
        guard path.utf8.count <= UnixSocket.maximumPathLength else {
            throw AgentError.notStarted(reason: "its socket's path \(path) is \(path.utf8.count) bytes, over the unix socket limit of \(UnixSocket.maximumPathLength); use a shorter --state-dir", log: path)
        }
    }

    /// The agent (`netctl-agent`): serves until no network exists, or its state is gone. A
    /// second agent for the same state directory exits at once.
    public static func serve(stateDirectory: String, logger: Logger) throws {
        let lock = open(lockPath(stateDirectory), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw SystemError("opening \(lockPath(stateDirectory))") }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { return }  // another one serves
        // Who serves, for operators and tests (the lock is what counts).
        ftruncate(lock, 0)
        _ = writeAll(lock, Array((ProcessIdentity.current().encoded + "\n").utf8))
        let manager = try NetworkManager(stateDirectory: stateDirectory, logger: logger)
        let path = socketPath(stateDirectory)
        try checkSocketPath(stateDirectory)
        let control = try UnixSocket.listen(path)
        defer { unlink(path); close(control) }
        let server = try NameServer(stateDirectory: stateDirectory, manager: manager, control: control, logger: logger,
                                    needed: Agent.needed)
        guard try server.reload() else { return }
        // The firewall watch on a thread of its own, with a state connection of its own.
        let watch = FirewallWatch(stateDirectory: stateDirectory, logger: logger)
        try watch.start()
        logger.notice("serving (pid \(getpid()))")
        server.run()
        watch.stop()
        logger.notice("no network left; stopping")
    }
}

/// Why the agent (names, the firewall watch) is not serving, with where to look.
public enum AgentError: Error, CustomStringConvertible, Equatable {
    case binaryMissing(path: String)
    case notStarted(reason: String, log: String)
    case failed(reason: String, log: String)

    public var description: String {
        switch self {
        case .binaryMissing(let path): return "netctl's agent (names, the firewall watch) is missing: no executable at \(path)"
        case .notStarted(let reason, let log): return "netctl's agent did not start: \(reason); see \(log)"
        case .failed(let reason, let log): return "netctl's agent could not follow state: \(reason); see \(log)"
        }
    }
}
