import CProcess
import Glibc

/// Starting and waiting for helper processes (runc, a container's monitor, the name server)
/// with posix_spawn.
public enum Processes {
    /// Starts `argv`; `fds` maps target descriptor -> source descriptor (-1: /dev/null).
    /// Every other descriptor is closed in the child, inherited ones without O_CLOEXEC too
    /// (a CI runner's pipe held by a detached monitor would keep that runner waiting).
    public static func spawn(_ argv: [String], fds: [Int32: Int32], newSession: Bool = false) throws -> pid_t {
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
        guard rc == 0 else { throw SystemError("cannot start \(argv[0])", code: rc) }
        return pid
    }

    /// Waits for a child; its exit code, or 128 + signal.
    @discardableResult
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return exitCode(status)
    }

    public static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// An executable's full path: itself if it has a '/', else the first match on $PATH.
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
        return nil
    }

    /// The running executable's path (what a process starts its helpers with).
    public static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "/proc/self/exe"
    }
}

/// Whether this process holds capability number `bit` (linux/capability.h: CAP_NET_ADMIN is
/// 12) in its effective set, as /proc/self/status says.
public func hasEffectiveCapability(_ bit: Int) -> Bool {
    guard let status = readFile("/proc/self/status"),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
          let mask = UInt64(String(line.dropFirst("CapEff:".count).filter { !$0.isWhitespace }), radix: 16) else { return true }
    return mask & (1 << UInt64(bit)) != 0
}

/// This process's environment, as a dictionary.
public func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var entry = environ
    while let pointer = entry.pointee {
        let text = String(cString: pointer)
        if let eq = text.firstIndex(of: "=") { result[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
        entry += 1
    }
    return result
}
