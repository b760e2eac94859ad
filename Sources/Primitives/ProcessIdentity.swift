import Glibc

/// A process, robust to PID reuse: the PID plus its start time (clock ticks since boot,
/// field 22 of /proc/PID/stat). A later process that gets the same PID has another start time.
public struct ProcessIdentity: Hashable, Sendable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// This process.
    public static func current() -> ProcessIdentity {
        let pid = getpid()
        return ProcessIdentity(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    /// The process `pid` is now, if it exists.
    public static func of(_ pid: Int32) -> ProcessIdentity? {
        startTime(of: pid).map { ProcessIdentity(pid: pid, startTime: $0) }
    }

    /// Whether this very process still runs.
    public var isAlive: Bool {
        pid > 0 && ProcessIdentity.startTime(of: pid) == startTime
    }

    /// "PID:START", as state records it.
    public var encoded: String { "\(pid):\(startTime)" }

    public init?(encoded: String) {
        let parts = encoded.split(separator: ":")
        guard parts.count == 2, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { return nil }
        self.init(pid: pid, startTime: start)
    }

    /// Field 22 of /proc/PID/stat; nil when the process is gone.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let stat = readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        // The command name may hold spaces and parentheses: fields count from the last ')'.
        // fields[0] is field 3 (state), so field 22 is fields[19].
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}
