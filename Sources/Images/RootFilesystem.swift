import CFilesystem
import Glibc
import Primitives

/// A container's own root filesystem over shared, read-only unpacked layers: an overlay
/// mount where the kernel has overlayfs, else a private copy with the layers' whiteouts
/// applied. The container's writes land in its own directory either way.
public enum RootFilesystem {
    public enum Mode: String, Codable, Sendable { case overlay, copy }

    /// Builds `<directory>/rootfs` from `layers` (bottom first). `mode` nil: overlay if it
    /// mounts, else copy (`$NETCTL_ROOTFS=copy` forces the copy).
    public static func create(layers: [String], in directory: String, mode: Mode? = nil) throws -> Mode {
        let rootfs = directory + "/rootfs"
        for path in [rootfs, directory + "/upper", directory + "/work"] {
            if mkdir(path, 0o755) != 0 && errno != EEXIST { throw ImageError.io(what: "cannot create \(path)", errno: errno) }
        }
        let forced = mode ?? (getenv("NETCTL_ROOTFS").map { String(cString: $0) } == "copy" ? .copy : nil)
        if forced != .copy {
            // overlay lists the top layer first.
            let options = "lowerdir=\(layers.reversed().joined(separator: ":")),upperdir=\(directory)/upper,workdir=\(directory)/work"
            let rc = cfs_mount_overlay(rootfs, options)
            if rc == 0 { return .overlay }
            if forced == .overlay || (-rc != ENODEV && -rc != EINVAL && -rc != ENOTSUP) {
                throw ImageError.io(what: "cannot mount the overlay root filesystem at \(rootfs)", errno: -rc)
            }
        }
        let target = open(rootfs, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw ImageError.io(what: "cannot open \(rootfs)", errno: errno) }
        defer { close(target) }
        for layer in layers {
            let source = open(layer, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
            guard source >= 0 else { throw ImageError.io(what: "cannot open layer \(layer)", errno: errno) }
            defer { close(source) }
            try merge(source, into: target)
        }
        return .copy
    }

    /// Unmounts (if mounted) and deletes the container's root filesystem and its writes.
    public static func remove(in directory: String) throws {
        _ = cfs_umount_detach(directory + "/rootfs")
        let fd = open(directory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        for name in ["rootfs", "upper", "work"] { try removeTree(fd, name) }
    }

    /// Whether `path` is a mount point (its device differs from its parent's).
    public static func isMounted(_ path: String) -> Bool {
        var own = stat(), parent = stat()
        return stat(path, &own) == 0 && stat(path + "/..", &parent) == 0 && own.st_dev != parent.st_dev
    }

    /// Copies one unpacked layer over what lies below it: whiteouts delete, opaque
    /// directories replace, everything else overwrites.
    static func merge(_ source: Int32, into target: Int32) throws {
        for name in try listDirectory(source) {
            var st = stat()
            guard fstatat(source, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw ImageError.io(what: "cannot stat \(name)", errno: errno) }
            let type = st.st_mode & S_IFMT
            if cfs_is_whiteout(UInt32(st.st_mode), UInt(st.st_rdev)) != 0 {
                try removeTree(target, name)
                continue
            }
            var existing = stat()
            let exists = fstatat(target, name, &existing, AT_SYMLINK_NOFOLLOW) == 0
            if type == S_IFDIR {
                let child = cfs_open_beneath(source, name, O_DIRECTORY | O_RDONLY, 0)
                guard child >= 0 else { throw ImageError.io(what: "cannot open \(name)", errno: -child) }
                defer { close(child) }
                if exists && ((existing.st_mode & S_IFMT) != S_IFDIR || cfs_is_opaque(child) == 1) { try removeTree(target, name) }
                if mkdirat(target, name, 0o700) != 0 && errno != EEXIST { throw ImageError.io(what: "cannot create \(name)", errno: errno) }
                let copy = cfs_open_beneath(target, name, O_DIRECTORY | O_RDONLY, 0)
                guard copy >= 0 else { throw ImageError.io(what: "cannot open \(name)", errno: -copy) }
                defer { close(copy) }
                fchown(copy, st.st_uid, st.st_gid)
                fchmod(copy, st.st_mode & 0o7777)
                try merge(child, into: copy)
                continue
            }
            if exists { try removeTree(target, name) }
            switch type {
            case S_IFREG:
                try copyFile(source, name, into: target, st)
            case S_IFLNK:
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(source, name, &buffer, buffer.count - 1)
                guard n >= 0 else { throw ImageError.io(what: "cannot read link \(name)", errno: errno) }
                buffer[n] = 0
                guard symlinkat(buffer, target, name) == 0 else { throw ImageError.io(what: "cannot create link \(name)", errno: errno) }
                fchownat(target, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW)
            case S_IFIFO:
                mkfifoat(target, name, st.st_mode & 0o777)
                fchownat(target, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW)
            default:
                break  // unpacking refuses devices; nothing else can be in a layer
            }
        }
    }

    private static func copyFile(_ source: Int32, _ name: String, into target: Int32, _ st: stat) throws {
        let input = openat(source, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw ImageError.io(what: "cannot open \(name)", errno: errno) }
        defer { close(input) }
        let output = openat(target, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw ImageError.io(what: "cannot create \(name)", errno: errno) }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 17)
        while true {
            let n = read(input, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ImageError.io(what: "cannot read \(name)", errno: errno) }
            if n == 0 { break }
            var written = 0
            while written < n {
                let w = buffer.withUnsafeBytes { write(output, $0.baseAddress! + written, n - written) }
                guard w > 0 else { throw ImageError.io(what: "cannot write \(name)", errno: errno) }
                written += w
            }
        }
        fchown(output, st.st_uid, st.st_gid)
        fchmod(output, st.st_mode & 0o7777)
        var times = [st.st_atim, st.st_mtim]
        futimens(output, &times)
    }
}
