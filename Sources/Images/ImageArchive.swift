import Glibc

/// Where an image's files live: a directory, or members of an uncompressed tar archive
/// read in place (no temporary copy).
final class ImageArchive {
    let path: String
    private let members: [String: (offset: Int64, size: Int64)]?

    init(path: String) throws {
        self.path = path
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw errno == ENOENT ? ImageError.notFound(path) : ImageError.io(what: "cannot read \(path)", errno: errno)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR { members = nil; return }
        let file = try FileRegion(path: path, what: path)
        var magic = [UInt8](repeating: 0, count: 4)
        let n = try magic.withUnsafeMutableBytes { try file.read(into: $0) }
        if n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
            throw ImageError.unrecognized(path: path, reason: "it is gzip-compressed; decompress it first (gunzip)")
        }
        let tar = TarReader(try FileRegion(path: path, what: path), what: path)
        var index: [String: (Int64, Int64)] = [:]
        var links: [(String, String)] = []
        do {
            while let entry = try tar.next() {
                let name = ImageArchive.clean(entry.path)
                if entry.kind == .file { index[name] = (entry.dataOffset, entry.size) }
                // Older `docker save` writes a repeated layer as a symlink to the first copy.
                if entry.kind == .symlink {
                    let base = name.split(separator: "/").dropLast().joined(separator: "/")
                    links.append((name, ImageArchive.clean(entry.linkName.hasPrefix("/") ? entry.linkName : base + "/" + entry.linkName)))
                }
            }
        } catch {
            throw ImageError.unrecognized(path: path, reason: "not a directory and not a readable tar archive (\(error))")
        }
        for (name, target) in links {
            var parts: [Substring] = []
            for part in target.split(separator: "/") { if part == ".." { _ = parts.popLast() } else { parts.append(part) } }
            if let found = index[parts.joined(separator: "/")] { index[name] = found }
        }
        members = index
    }

    /// "./blobs//sha256/x" -> "blobs/sha256/x".
    static func clean(_ member: String) -> String {
        member.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
    }

    func exists(_ member: String) -> Bool {
        let member = ImageArchive.clean(member)
        if let members { return members[member] != nil }
        var st = stat()
        return stat(path + "/" + member, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Opens a member; a member path never leaves the archive.
    func open(_ member: String, what: String) throws -> FileRegion {
        let member = ImageArchive.clean(member)
        guard !member.split(separator: "/").contains("..") else {
            throw ImageError.invalid(what: what, reason: "path \(member) leaves the image")
        }
        if let members {
            guard let found = members[member] else { throw ImageError.invalid(what: what, reason: "missing from the archive (\(member))") }
            return try FileRegion(path: path, offset: found.offset, length: found.size, what: what)
        }
        return try FileRegion(path: path + "/" + member, what: what)
    }
}
