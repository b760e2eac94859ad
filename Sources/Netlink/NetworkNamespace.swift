import CFilesystem
import CProcess
import Glibc

/// An open network namespace. Work inside it happens on a dedicated OS thread that enters
/// the namespace, does the work and exits: `setns` changes only the calling thread, and a
/// Swift concurrency thread left in another namespace would run unrelated tasks there.
public final class NetworkNamespace: Sendable {
    public let fd: Int32
    /// Where it was opened from: a bind-mounted file or /proc/PID/ns/net.
    public let path: String
    /// Device and inode of the namespace: two handles name the same namespace iff these match.
    public let identity: Identity

    public struct Identity: Hashable, Sendable, Codable {
        public let device: UInt64
        public let inode: UInt64

        public init(device: UInt64, inode: UInt64) {
            self.device = device
            self.inode = inode
        }
    }

    /// Opens the namespace at `path`, checking that it really is a network namespace.
    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw NamespaceError.cannotOpen(path: path, code: errno)
        }
        let kind = cproc_is_netns(fd)
        guard kind == 1 else {
            close(fd)
            if kind < 0 { throw NamespaceError.cannotOpen(path: path, code: -kind) }
            throw NamespaceError.notANetworkNamespace(path: path)
        }
        var st = stat()
        fstat(fd, &st)
        self.fd = fd
        self.path = path
        identity = Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Opens the network namespace of a running process.
    public convenience init(pid: Int32) throws {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else {
            throw NamespaceError.noSuchProcess(pid: pid)
        }
        try self.init(path: "/proc/\(pid)/ns/net")
    }

    /// The namespace this process started in (the host side, for netctl).
    public static func current() throws -> NetworkNamespace {
        try NetworkNamespace(path: "/proc/self/ns/net")
    }

    deinit { close(fd) }

    /// Runs `body` on a new OS thread inside this namespace and returns its result.
    public func run<T>(_ body: () throws -> T) throws -> T {
        let fd = self.fd
        return try withoutActuallyEscaping(body) { body in
            try NetworkNamespace.onNewThread {
                try check("entering network namespace \(self.path)", cproc_setns(fd, Int32(CPROC_CLONE_NEWNET)))
                return try body()
            }
        }
    }

    /// Creates a new, empty network namespace and keeps it alive by bind-mounting it at
    /// `path` (a file that must not exist yet), the way `ip netns add` does, without `ip`.
    @discardableResult
    public static func create(at path: String) throws -> NetworkNamespace {
        let placeholder = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        guard placeholder >= 0 else { throw NamespaceError.cannotCreate(path: path, code: errno) }
        close(placeholder)
        do {
            try onNewThread {
                try check("creating a network namespace", cproc_unshare(Int32(CPROC_CLONE_NEWNET)))
                try check("bind-mounting the namespace at \(path)", cfs_bind_mount("/proc/thread-self/ns/net", path))
            }
            return try NetworkNamespace(path: path)
        } catch {
            _ = cfs_umount_detach(path)
            unlink(path)
            throw error
        }
    }

    /// Unmounts and removes a namespace created by `create(at:)`. The namespace itself
    /// disappears, with every interface in it, once nothing else holds it.
    public static func remove(at path: String) throws {
        let rc = cfs_umount_detach(path)
        if rc < 0 && -rc != EINVAL && -rc != ENOENT {
            throw NamespaceError.cannotRemove(path: path, code: -rc)
        }
        if unlink(path) != 0 && errno != ENOENT {
            throw NamespaceError.cannotRemove(path: path, code: errno)
        }
    }

    /// Runs `body` on a fresh OS thread and waits for it.
    static func onNewThread<T>(_ body: () throws -> T) throws -> T {
        try withoutActuallyEscaping(body) { body in
            var result: Result<T, Error>?
            let box = ThreadWork { result = Result { try body() } }
            let context = Unmanaged.passRetained(box)
            let rc = cproc_run_on_new_thread({ raw in
                Unmanaged<ThreadWork>.fromOpaque(raw!).takeUnretainedValue().work()
            }, context.toOpaque())
            context.release()
            try check("starting a namespace thread", rc)
            return try result!.get()
        }
    }
}

private final class ThreadWork {
    let work: () -> Void
    init(_ work: @escaping () -> Void) { self.work = work }
}

public enum NamespaceError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, code: Int32)
    case notANetworkNamespace(path: String)
    case noSuchProcess(pid: Int32)
    case cannotCreate(path: String, code: Int32)
    case cannotRemove(path: String, code: Int32)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let code):
            return "cannot open network namespace \(path): \(String(cString: strerror(code)))"
        case .notANetworkNamespace(let path):
            return "\(path) is not a network namespace; pass a bind-mounted netns file (e.g. /run/netns/NAME) or /proc/PID/ns/net"
        case .noSuchProcess(let pid):
            return "no process with PID \(pid); pass the PID of a running container process"
        case .cannotCreate(let path, let code):
            return "cannot create network namespace at \(path): \(String(cString: strerror(code)))"
        case .cannotRemove(let path, let code):
            return "cannot remove network namespace \(path): \(String(cString: strerror(code)))"
        }
    }
}
