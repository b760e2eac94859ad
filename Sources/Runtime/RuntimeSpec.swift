import CFilesystem
import FoundationEssentials
import Glibc
import Primitives

/// The OCI runtime configuration (config.json of a bundle) netctl hands to runc: the
/// image's process in its own pid, ipc, uts and mount namespaces, joining the network
/// namespace netctl prepared, with Docker's default capabilities and masked paths.
struct RuntimeSpec: Encodable {
    struct User: Encodable { var uid: UInt32; var gid: UInt32; var additionalGids: [UInt32]? }
    struct Capabilities: Encodable { var bounding, effective, permitted: [String] }
    struct Rlimit: Encodable { var type: String; var hard: UInt64; var soft: UInt64 }
    struct Process: Encodable {
        var terminal = false
        var user: User
        var args: [String]
        var env: [String]
        var cwd: String
        var capabilities: Capabilities
        var rlimits: [Rlimit]
        var noNewPrivileges = true
    }
    struct Root: Encodable { var path: String; var readonly = false }
    struct Mount: Encodable { var destination: String; var type: String; var source: String; var options: [String] }
    struct Namespace: Encodable { var type: String; var path: String? }
    struct Device: Encodable { var allow: Bool; var access: String }
    struct Resources: Encodable { var devices: [Device] }
    struct Linux: Encodable {
        var namespaces: [Namespace]
        var cgroupsPath: String
        var resources: Resources
        var maskedPaths: [String]
        var readonlyPaths: [String]
    }

    var ociVersion = "1.0.2"
    var process: Process
    var root: Root
    var hostname: String
    var mounts: [Mount]
    var linux: Linux

    /// Docker's default capability set.
    static let defaultCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]

    init(args: [String], env: [String], cwd: String, user: User, hostname: String, netns: String, containerID: String,
         etcFiles: [String: String], terminal: Bool = false) {
        let caps = RuntimeSpec.defaultCapabilities
        process = Process(terminal: terminal, user: user, args: args, env: env, cwd: cwd,
                          capabilities: Capabilities(bounding: caps, effective: caps, permitted: caps),
                          rlimits: [RuntimeSpec.openFilesLimit()])
        root = Root(path: "rootfs")
        self.hostname = hostname
        mounts = [
            Mount(destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"]),
            Mount(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            Mount(destination: "/dev/pts", type: "devpts", source: "devpts",
                  options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            Mount(destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            Mount(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"]),
            Mount(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"]),
        ] + etcFiles.sorted(by: { $0.key < $1.key }).map {
            Mount(destination: $0.key, type: "bind", source: $0.value, options: ["rbind", "rprivate"])
        }
        linux = Linux(
            namespaces: [Namespace(type: "pid"), Namespace(type: "ipc"), Namespace(type: "uts"), Namespace(type: "mount"),
                         Namespace(type: "network", path: netns)],
            cgroupsPath: "/netctl/" + containerID,
            resources: Resources(devices: [Device(allow: false, access: "rwm")]),
            maskedPaths: ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                          "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
    }

    /// The container may open as many files as this host lets netctl (a container can't
    /// raise its hard limit above ours).
    static func openFilesLimit() -> Rlimit {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return Rlimit(type: "RLIMIT_NOFILE", hard: UInt64(limit.rlim_max), soft: UInt64(limit.rlim_max))
    }

    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try writeFile(path, String(decoding: try encoder.encode(self), as: UTF8.self), mode: 0o600)
    }
}

/// The image's `User` ("name", "uid", "name:group", "uid:gid") as numbers, looked up in the
/// container's own /etc/passwd and /etc/group, read without following symlinks out of it.
func resolveUser(_ spec: String?, rootfs: String) throws -> RuntimeSpec.User {
    guard let spec, !spec.isEmpty else { return RuntimeSpec.User(uid: 0, gid: 0) }
    let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
    let passwd = readBeneath(rootfs, "etc/passwd").map(parseColonFile) ?? []
    var uid: UInt32, gid: UInt32
    if let number = UInt32(parts[0]) {
        uid = number
        gid = passwd.first(where: { UInt32($0[safe: 2]) == number }).flatMap { UInt32($0[safe: 3]) } ?? 0
    } else if let entry = passwd.first(where: { $0.first == parts[0] }), let u = UInt32(entry[safe: 2]), let g = UInt32(entry[safe: 3]) {
        uid = u; gid = g
    } else {
        throw RuntimeError.unknownUser(user: spec, reason: "no such user in the image's /etc/passwd")
    }
    if parts.count == 2 {
        if let number = UInt32(parts[1]) {
            gid = number
        } else {
            let groups = readBeneath(rootfs, "etc/group").map(parseColonFile) ?? []
            guard let entry = groups.first(where: { $0.first == parts[1] }), let g = UInt32(entry[safe: 2]) else {
                throw RuntimeError.unknownUser(user: spec, reason: "no group \(parts[1]) in the image's /etc/group")
            }
            gid = g
        }
    }
    return RuntimeSpec.User(uid: uid, gid: gid)
}

private func parseColonFile(_ text: String) -> [[String]] {
    text.split(separator: "\n").map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
}

private extension Array where Element == String {
    subscript(safe index: Int) -> String { index < count ? self[index] : "" }
}

/// Reads a file below `root` without following symlinks (so never outside it).
func readBeneath(_ root: String, _ path: String) -> String? {
    let rootFD = open(root, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
    guard rootFD >= 0 else { return nil }
    defer { close(rootFD) }
    // Non-blocking and a regular file of sane size: an image's /etc/passwd could be a fifo
    // (reading would hang) or huge.
    let fd = cfs_open_beneath(rootFD, path, O_RDONLY | O_NONBLOCK, 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= 4 << 20 else { return nil }
    return String(decoding: readAll(fd, limit: 4 << 20), as: UTF8.self)
}
