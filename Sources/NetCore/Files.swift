import Glibc

func getpidSafe() -> Int32 { getpid() }

/// Reads a small text file (procfs, sysfs); nil if it cannot be read.
func readFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var result = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        result.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: result, as: UTF8.self)
}

/// mkdir -p with the given mode for each created directory.
func makeDirectories(_ path: String, mode: mode_t = 0o700) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, mode) != 0 && errno != EEXIST {
            throw NetctlError.state("cannot create directory \(current): \(String(cString: strerror(errno)))")
        }
    }
}

func fileExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// The kernel's id for this boot; it changes on every reboot.
func currentBootID() -> String {
    readFile("/proc/sys/kernel/random/boot_id")?.filter { !$0.isWhitespace } ?? "unknown"
}

func timestamp() -> String {
    var now = time(nil)
    var tm = tm()
    gmtime_r(&now, &tm)
    var buffer = [CChar](repeating: 0, count: 32)
    strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &tm)
    return String(cString: buffer)
}

/// Sets a sysctl under /proc/sys (of the caller's network namespace) unless it already has
/// the value.
func setSysctl(_ name: String, _ value: String) throws {
    let path = "/proc/sys/" + name
    if readFile(path)?.split(separator: "\n").first.map(String.init) == value { return }
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw NetctlError.state("cannot open \(path): \(String(cString: strerror(errno))); netctl needs root") }
    defer { close(fd) }
    let bytes = Array((value + "\n").utf8)
    guard write(fd, bytes, bytes.count) == bytes.count else {
        throw NetctlError.state("cannot set \(name) to \(value): \(String(cString: strerror(errno)))")
    }
}
