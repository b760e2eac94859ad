import Glibc

/// A failed system call: what was being done, and errno.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let code: Int32

    public init(_ operation: String, code: Int32 = errno) {
        self.operation = operation
        self.code = code
    }

    public var description: String { "\(operation): \(errorMessage(code))" }
}

/// strerror's text for an errno value.
public func errorMessage(_ code: Int32) -> String {
    guard let text = strerror(code) else { return "error \(code)" }
    return String(cString: text)
}

/// Everything left in `fd`, up to about `limit` bytes.
public func readAll(_ fd: Int32, limit: Int = 16 << 20) -> [UInt8] {
    var result = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while result.count <= limit {
        let n = read(fd, &buffer, buffer.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        result += buffer[0..<n]
    }
    return result
}

/// A small file's bytes (records, procfs, pid files); nil if it cannot be opened.
public func readBytes(_ path: String, limit: Int = 16 << 20) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return readAll(fd, limit: limit)
}

/// A small text file (procfs, sysfs, records); nil if it cannot be opened.
public func readFile(_ path: String) -> String? {
    readBytes(path).map { String(decoding: $0, as: UTF8.self) }
}

/// Writes `bytes` to `path`, replacing what was there. With `atomically`, through a
/// temporary file renamed into place, so a reader sees the old or the new content, never a
/// part; with `synced` too, the content is on disk before the rename (a crash leaves the
/// old file or the whole new one).
public func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644, atomically: Bool = false,
                      synced: Bool = false) throws {
    let target = atomically ? path + ".tmp" : path
    let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw SystemError("cannot write \(target)") }
    guard writeAll(fd, bytes) else {
        let code = errno
        close(fd)
        throw SystemError("cannot write \(target)", code: code)
    }
    if synced { fsync(fd) }
    guard close(fd) == 0 else { throw SystemError("cannot write \(target)") }
    if atomically && rename(target, path) != 0 {
        let code = errno
        unlink(target)
        throw SystemError("cannot write \(path)", code: code)
    }
}

public func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644, atomically: Bool = false,
                      synced: Bool = false) throws {
    try writeFile(path, Array(text.utf8), mode: mode, atomically: atomically, synced: synced)
}

/// mkdir -p, each directory it makes with `mode`.
public func makeDirectories(_ path: String, mode: mode_t = 0o700) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, mode) != 0 && errno != EEXIST {
            throw SystemError("cannot create directory \(current)")
        }
    }
}

/// Whether anything (a symlink included) exists at `path`.
public func fileExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

/// The names in the directory `fd`, without "." and "..", sorted.
public func listDirectory(_ fd: Int32) throws -> [String] {
    let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    guard copy >= 0, let dir = fdopendir(copy) else {
        let code = errno
        if copy >= 0 { close(copy) }
        throw SystemError("cannot list a directory", code: code)
    }
    defer { closedir(dir) }
    rewinddir(dir)
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}

/// The names in the directory at `path`, sorted; empty if it cannot be read.
public func listDirectory(_ path: String) -> [String] {
    let fd = open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    return (try? listDirectory(fd)) ?? []
}

/// Removes `name` below the directory `parent`, recursively, never following a symlink
/// (each step opens one name with O_NOFOLLOW), so a link planted inside cannot lead the
/// removal elsewhere.
public func removeTree(_ parent: Int32, _ name: String) throws {
    if unlinkat(parent, name, 0) == 0 || errno == ENOENT { return }
    guard errno == EISDIR else { throw SystemError("cannot remove \(name)") }
    let fd = openat(parent, name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw SystemError("cannot open \(name)") }
    defer { close(fd) }
    for child in try listDirectory(fd) { try removeTree(fd, child) }
    guard unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT else { throw SystemError("cannot remove \(name)") }
}

/// Removes the file or directory tree at `path` (see `removeTree(_:_:)`).
public func removeTree(_ path: String) throws {
    let slash = path.lastIndex(of: "/")
    let parentPath = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
    let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
    let parent = open(parentPath, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
    guard parent >= 0 else {
        if errno == ENOENT { return }
        throw SystemError("cannot open \(parentPath)")
    }
    defer { close(parent) }
    try removeTree(parent, name)
}

extension String {
    /// The text of a NUL-terminated C buffer (what strftime, inet_ntop or getsockopt filled).
    public init(cBuffer buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR); whether it all went.
@discardableResult
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var rest = bytes[...]
    while !rest.isEmpty {
        let n = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        rest = rest.dropFirst(n)
    }
    return true
}

/// Writes `text` to standard error, unbuffered (a line at a time reaches a log whole).
public func writeStandardError(_ text: String) {
    writeAll(2, Array(text.utf8))
}

/// A new directory, mode 0700, named `prefix` plus six random characters (mkdtemp).
public func makeTemporaryDirectory(_ prefix: String = "/tmp/netctl-") throws -> String {
    var template = Array((prefix + "XXXXXX").utf8CString)
    guard mkdtemp(&template) != nil else { throw SystemError("cannot create a directory \(prefix)XXXXXX") }
    return String(cBuffer: template)
}
