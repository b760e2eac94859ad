import Glibc
import Primitives

/// The kernel's id for this boot; it changes on every reboot.
func currentBootID() -> String {
    readFile("/proc/sys/kernel/random/boot_id")?.filter { !$0.isWhitespace } ?? "unknown"
}

/// Sets a sysctl under /proc/sys (of the caller's network namespace) unless it already has
/// the value.
func setSysctl(_ name: String, _ value: String) throws {
    let path = "/proc/sys/" + name
    if readFile(path)?.split(separator: "\n").first.map(String.init) == value { return }
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw NetctlError.sysctl(name: name, value: value, code: errno) }
    defer { close(fd) }
    let bytes = Array((value + "\n").utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else {
        throw NetctlError.sysctl(name: name, value: value, code: errno)
    }
}
