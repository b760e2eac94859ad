import CProcess
import Glibc
import Primitives

/// Starts and reaps child processes with posix_spawn and waitpid, so tests control every
/// wait (with a deadline) and reap every child themselves.
struct Child {
    let pid: pid_t

    /// Starts `argv` with stdin, stdout and stderr taken from the given descriptors
    /// (-1 = /dev/null) and `environment` added to ours.
    static func spawn(_ argv: [String], stdin: Int32 = -1, stdout: Int32 = -1, stderr: Int32 = -1,
                      environment: [String: String] = [:]) throws -> Child {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (fd, target) in [(stdin, Int32(0)), (stdout, 1), (stderr, 2)] {
            if fd >= 0 {
                posix_spawn_file_actions_adddup2(&actions, fd, target)
            } else {
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            }
        }
        // Nothing else: a socket some other test opened without CLOEXEC would otherwise stay
        // open in the child (and count against its descriptor limit).
        cproc_spawn_close_from(&actions, 3)
        var env = [String: String]()
        var entry = environ
        while let pointer = entry.pointee {
            let pair = String(cString: pointer)
            if let eq = pair.firstIndex(of: "=") { env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]) }
            entry += 1
        }
        env.merge(environment) { $1 }
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (cArgs + cEnv).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, cEnv)
        guard rc == 0 else { throw SandboxError("cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
        return Child(pid: pid)
    }

    /// Waits up to `timeout` seconds; kills the child past that. Returns the exit status
    /// (128 + signal for a signalled child).
    @discardableResult
    func wait(timeout: Double) throws -> Int32 {
        let deadline = Double(monotonicNanoseconds()) / 1e9 + timeout
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { throw SandboxError("waitpid: \(String(cString: strerror(errno)))") }
            if Double(monotonicNanoseconds()) / 1e9 > deadline {
                Glibc.kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw SandboxError("process \(pid) timed out after \(timeout)s")
            }
            usleep(1_000)
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    func kill(_ signal: Int32 = SIGKILL) {
        Glibc.kill(pid, signal)
    }
}

func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Reads a whole file; "" if missing.
func slurp(_ path: String) -> String {
    guard let file = fopen(path, "r") else { return "" }
    defer { fclose(file) }
    var bytes = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while case let n = fread(&buffer, 1, buffer.count, file), n > 0 { bytes += buffer[0..<n] }
    return String(decoding: bytes, as: UTF8.self)
}
