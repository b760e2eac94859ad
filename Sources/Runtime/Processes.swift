import CProcess
import FoundationEssentials
import Glibc
import Primitives

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
    func run(_ arguments: [String], container: String, logFile: String, stdin: Int32 = -1, stdout: Int32 = -1, stderr: Int32 = -1) throws {
        let pid = try Processes.spawn([executable, "--root", root, "--log", logFile, "--log-format", "json"] + arguments,
                                      fds: [0: stdin, 1: stdout, 2: stderr])
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
