import CProcess
import FoundationEssentials
import Glibc
import Primitives

/// Starting and waiting for helper processes (runc, the monitor) with posix_spawn.
enum Processes {
    /// Starts `argv`; `fds` maps target descriptor -> source descriptor (-1: /dev/null).
    /// Every other descriptor is closed in the child, inherited ones without O_CLOEXEC too
    /// (a CI runner's pipe held by a detached monitor would keep that runner waiting).
    static func spawn(_ argv: [String], fds: [Int32: Int32], newSession: Bool = false) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, source) in fds.sorted(by: { $0.key < $1.key }) {
            if source >= 0 {
                posix_spawn_file_actions_adddup2(&actions, source, target)
            } else {
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            }
        }
        if let highest = fds.keys.max() { _ = cproc_spawn_close_from(&actions, highest + 1) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Children start with default signal handling and nothing blocked, whatever ours are.
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all); sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        var flags = Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        if newSession { flags |= Int16(CPROC_POSIX_SPAWN_SETSID) }
        posix_spawnattr_setflags(&attributes, flags)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, &attributes, cArgs, environ)
        guard rc == 0 else { throw RuntimeError.io(what: "cannot start \(argv[0])", errno: rc) }
        return pid
    }

    /// Waits for a child; its exit code, or 128 + signal.
    @discardableResult
    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return exitCode(status)
    }

    static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// An executable's full path: itself if it has a '/', else the first match on $PATH.
    static func find(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
        return nil
    }
}

/// runc, driven by its command line: the runtime Docker, containerd and Podman use.
/// Its state lives under netctl's state directory (`--root`), not /run/runc.
struct Runc {
    let executable: String
    let root: String

    /// `$NETCTL_RUNC`, else runc on $PATH.
    static func locate(root: String) throws -> Runc {
        let wanted = getenv("NETCTL_RUNC").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "runc"
        guard let path = Processes.find(wanted) else {
            throw RuntimeError.runcMissing(wanted.contains("/") ? wanted : "runc on $PATH")
        }
        return Runc(executable: path, root: root)
    }

    /// Runs one runc command; its own errors go to `logFile` (JSON lines) so that the
    /// container's output and runc's never mix. Throws with runc's last error message.
    func run(_ arguments: [String], container: String, logFile: String, stdout: Int32 = -1, stderr: Int32 = -1) throws {
        let pid = try Processes.spawn([executable, "--root", root, "--log", logFile, "--log-format", "json"] + arguments,
                                      fds: [0: -1, 1: stdout, 2: stderr])
        let code = Processes.wait(pid)
        guard code == 0 else {
            throw RuntimeError.runcFailed(step: arguments[0], container: container,
                                          message: Runc.lastError(logFile) ?? "exit status \(code)")
        }
    }

    /// The last error runc logged.
    static func lastError(_ logFile: String) -> String? {
        guard let bytes = readBytes(logFile) else { return nil }
        struct Line: Decodable { var level: String?; var msg: String? }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n").reversed() {
            if let entry = try? JSONDecoder().decode(Line.self, from: Data(line.utf8)), entry.level == "error", let msg = entry.msg {
                return msg
            }
        }
        return nil
    }
}
