import CFilesystem
import Glibc
import Primitives

/// Unpacks one layer tar into a directory, safely: every path is opened below the
/// directory with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so no entry can reach
/// outside it, whether by `..`, an absolute path, a symlink (absolute or relative) planted
/// by an earlier entry, or a hard link. An entry that tries is not skipped: the whole layer
/// is rejected, because an image that carries one is hostile or broken.
///
/// Symlinks themselves are kept as they are (images depend on `/bin/sh -> busybox` and the
/// like); they resolve inside the container's root at run time, and are never followed
/// here. Whiteouts become overlayfs whiteouts (a 0/0 character device) and opaque
/// directories get `trusted.overlay.opaque`, so unpacked layers stack as overlay lower dirs.
struct LayerUnpacker {
    let rootFD: Int32
    /// Names the layer in errors (its short digest).
    let layer: String

    func unpack(_ tar: TarReader) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 17, alignment: 16)
        defer { buffer.deallocate() }
        while let entry = try tar.next() {
            try unpack(entry, from: tar, buffer: buffer)
        }
    }

    private func hostile(_ entry: TarEntry, _ reason: String) -> ImageError {
        .hostileLayer(layer: layer, entry: entry.path, reason: reason)
    }

    /// `a/./b//c` -> ["a", "b", "c"]; `..` and absolute paths are refused.
    static func components(_ path: String) -> [Substring]? {
        if path.hasPrefix("/") { return nil }
        let parts = path.split(separator: "/").filter { $0 != "." }
        return parts.contains("..") ? nil : parts
    }

    private func unpack(_ entry: TarEntry, from tar: TarReader, buffer: UnsafeMutableRawBufferPointer) throws {
        guard let parts = LayerUnpacker.components(entry.path) else {
            throw hostile(entry, entry.path.hasPrefix("/") ? "has an absolute path" : "climbs out of the root with \"..\"")
        }
        // Bounds real images never reach, so a crafted one can't exhaust descriptors or the stack.
        guard entry.path.utf8.count < 4096, parts.count <= 128, entry.linkName.utf8.count < 4096 else {
            throw ImageError.invalid(what: "layer \(layer)", reason: "entry \(entry.path.prefix(80))... is nested too deep or named too long")
        }
        guard (0...Int(UInt32.max - 1)).contains(entry.uid), (0...Int(UInt32.max - 1)).contains(entry.gid) else {
            throw ImageError.invalid(what: "layer \(layer)", reason: "entry \(entry.path) has owner \(entry.uid):\(entry.gid), out of range")
        }
        if entry.kind == .characterDevice || entry.kind == .blockDevice {
            throw hostile(entry, "is a device node (\(entry.deviceMajor):\(entry.deviceMinor))")
        }
        guard let leaf = parts.last else { return }  // "./": the root itself
        let parent = try openDirectory(Array(parts.dropLast()), entry: entry)
        defer { close(parent) }
        let name = String(leaf)

        if name == ".wh..wh..opq" {
            let rc = cfs_set_opaque(parent)
            guard rc == 0 else { throw ImageError.io(what: "cannot mark \(entry.path) opaque", errno: -rc) }
            return
        }
        if name.hasPrefix(".wh.") {
            let hidden = String(name.dropFirst(4))
            guard !hidden.isEmpty, hidden != ".", hidden != ".." else { throw hostile(entry, "is a malformed whiteout") }
            try removeExisting(parent, hidden, entry: entry)
            let rc = cfs_mknod_whiteout(parent, hidden)
            guard rc == 0 else { throw ImageError.io(what: "cannot create whiteout \(entry.path)", errno: -rc) }
            return
        }

        switch entry.kind {
        case .directory:
            var st = stat()
            if fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) != S_IFDIR {
                try removeExisting(parent, name, entry: entry)
            }
            if mkdirat(parent, name, 0o700) != 0 && errno != EEXIST {
                throw ImageError.io(what: "cannot create \(entry.path)", errno: errno)
            }
            let fd = try open(beneath: parent, name, O_DIRECTORY | O_RDONLY, entry: entry)
            defer { close(fd) }
            try setOwnerAndMode(fd, entry)
        case .file:
            try removeExisting(parent, name, entry: entry)
            let fd = openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw ImageError.io(what: "cannot create \(entry.path)", errno: errno) }
            defer { close(fd) }
            while case let n = try tar.readData(into: buffer), n > 0 {
                var written = 0
                while written < n {
                    let w = write(fd, buffer.baseAddress! + written, n - written)
                    if w < 0 && errno == EINTR { continue }
                    guard w > 0 else { throw ImageError.io(what: "cannot write \(entry.path)", errno: errno) }
                    written += w
                }
            }
            try setOwnerAndMode(fd, entry)
            var times = [timespec(tv_sec: Int(entry.mtime), tv_nsec: 0), timespec(tv_sec: Int(entry.mtime), tv_nsec: 0)]
            futimens(fd, &times)
        case .symlink:
            try removeExisting(parent, name, entry: entry)
            guard symlinkat(entry.linkName, parent, name) == 0 else {
                throw ImageError.io(what: "cannot create symlink \(entry.path)", errno: errno)
            }
            fchownat(parent, name, uid_t(entry.uid), gid_t(entry.gid), AT_SYMLINK_NOFOLLOW)
        case .hardLink:
            guard let target = LayerUnpacker.components(entry.linkName), let targetLeaf = target.last else {
                throw hostile(entry, "is a hard link pointing outside the root (\(entry.linkName))")
            }
            let targetParent = try openDirectory(Array(target.dropLast()), entry: entry, create: false)
            defer { close(targetParent) }
            try removeExisting(parent, name, entry: entry)
            guard linkat(targetParent, String(targetLeaf), parent, name, 0) == 0 else {
                if errno == ENOENT { throw ImageError.invalid(what: "layer \(layer)", reason: "hard link \(entry.path) points to \(entry.linkName), which the layer does not contain") }
                throw ImageError.io(what: "cannot create hard link \(entry.path)", errno: errno)
            }
        case .fifo:
            try removeExisting(parent, name, entry: entry)
            guard mkfifoat(parent, name, mode_t(entry.mode & 0o777)) == 0 else {
                throw ImageError.io(what: "cannot create fifo \(entry.path)", errno: errno)
            }
            fchownat(parent, name, uid_t(entry.uid), gid_t(entry.gid), AT_SYMLINK_NOFOLLOW)
        case .characterDevice, .blockDevice:
            break  // refused above
        }
    }

    private func open(beneath dir: Int32, _ path: String, _ flags: Int32, entry: TarEntry) throws -> Int32 {
        let fd = cfs_open_beneath(dir, path, flags, 0)
        if fd >= 0 { return fd }
        switch -fd {
        case ELOOP, EXDEV:
            throw hostile(entry, "would be written through a symlink (\(path) is one); writing through links could leave the root")
        case ENOTDIR:
            throw ImageError.invalid(what: "layer \(layer)", reason: "entry \(entry.path) is below \(path), which is not a directory")
        default:
            throw ImageError.io(what: "cannot open \(path) for \(entry.path)", errno: -fd)
        }
    }

    /// The directory at `parts` below the root, created (mode 0755, owned by root) where
    /// missing, as tar does for members whose parent has no entry of its own.
    private func openDirectory(_ parts: [Substring], entry: TarEntry, create: Bool = true) throws -> Int32 {
        var current = fcntl(rootFD, F_DUPFD_CLOEXEC, 0)
        for (i, part) in parts.enumerated() {
            let name = String(part)
            var fd = cfs_open_beneath(current, name, O_DIRECTORY | O_RDONLY, 0)
            if fd == -ENOENT && create {
                if mkdirat(current, name, 0o755) != 0 && errno != EEXIST {
                    let code = errno
                    close(current)
                    throw ImageError.io(what: "cannot create directory for \(entry.path)", errno: code)
                }
                fd = cfs_open_beneath(current, name, O_DIRECTORY | O_RDONLY, 0)
            }
            close(current)
            guard fd >= 0 else {
                let path = parts[0...i].joined(separator: "/")
                if fd == -ENOENT {
                    throw ImageError.invalid(what: "layer \(layer)", reason: "entry \(entry.path) refers to \(path), which the layer does not contain")
                }
                let err = -fd
                if err == ELOOP || err == EXDEV || err == ENOTDIR {
                    var st = stat()
                    let isLink = fstatat(rootFD, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
                    if isLink || err != ENOTDIR {
                        throw hostile(entry, "would be written through the symlink \(path); writing through links could leave the root")
                    }
                    throw ImageError.invalid(what: "layer \(layer)", reason: "entry \(entry.path) is below \(path), which is not a directory")
                }
                throw ImageError.io(what: "cannot open \(path) for \(entry.path)", errno: err)
            }
            current = fd
        }
        return current
    }

    /// Clears the way for a new entry: a file, link or empty... or whole directory tree.
    private func removeExisting(_ parent: Int32, _ name: String, entry: TarEntry) throws {
        var st = stat()
        guard fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            try removeTree(parent, name)
        } else if unlinkat(parent, name, 0) != 0 {
            throw ImageError.io(what: "cannot replace \(entry.path)", errno: errno)
        }
    }

    private func setOwnerAndMode(_ fd: Int32, _ entry: TarEntry) throws {
        // chown first: it clears set-id bits that fchmod then puts back.
        guard fchown(fd, uid_t(entry.uid), gid_t(entry.gid)) == 0 else {
            throw ImageError.io(what: "cannot set the owner of \(entry.path)", errno: errno)
        }
        fchmod(fd, mode_t(entry.mode & 0o7777))
    }
}
