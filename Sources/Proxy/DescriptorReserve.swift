import CSocket
import Glibc
import Synchronization

/// The descriptor the proxy keeps in hand for when it has run out. A connection waiting in a
/// listener's queue can only be taken, and closed so that its client hears at once, with a
/// free descriptor: the reserve is closed for that accept and opened again after it.
///
/// One reserve for all workers, because their threads share one descriptor table: the number
/// a worker frees can be taken by another worker's accept or socket call before its own accept
/// runs, and the reserve is then out. While it is out no worker opens a descriptor that would
/// live on (a new connection's backend socket, a UDP flow), and one opened just
/// as it went out is closed again (`permit`, `kept`). So whoever took the number gives it
/// back, and the next worker to need the reserve, or the sweep, takes it again. Without that
/// rule a new connection could keep the number, and with no reserve and no free descriptor
/// left, queued clients would hang until some connection closed (the end-to-end test that
/// exhausts descriptors from both CPUs at once caught that). Pooled pipes
/// need no rule: accept's EMFILE closes them before it sheds.
final class DescriptorReserve: @unchecked Sendable {
    /// The reserve's descriptor, -1 while out.
    private let fd = Mutex<Int32>(-1)
    /// Read without the lock on every new connection: bit 0 says whether `fd` is open; the
    /// rest counts the times it was given up, so a worker can tell whether that happened while
    /// it opened descriptors (see `permit`).
    private let state = Atomic<UInt64>(0)

    init() {
        _ = refill()
    }

    deinit {
        fd.withLock { if $0 >= 0 { close($0) } }
    }

    private var isHeld: Bool { state.load(ordering: .sequentiallyConsistent) & 1 == 1 }

    /// Takes the reserve back if it is out; whether it is held now.
    func refill() -> Bool {
        if isHeld { return true }
        return fd.withLock { open(&$0) }
    }

    /// Asked before opening descriptors that will live on; nil while the reserve is out and
    /// can't be taken back. After opening them, `kept(_:)` says whether they may stay: a
    /// check before the open alone would race with a `shed` that frees the reserve's number
    /// right after it, and the new descriptor would keep that number.
    func permit() -> UInt64? {
        while true {
            // Only a state that says "held" will do: the reserve can go out again between
            // a refill and the load after it.
            let now = state.load(ordering: .sequentiallyConsistent)
            if now & 1 == 1 { return now }
            guard refill() else { return nil }
        }
    }

    /// False if the reserve was given up since `permit`: close what was opened since.
    func kept(_ permit: UInt64) -> Bool { state.load(ordering: .sequentiallyConsistent) == permit }

    enum Shed { case dropped, empty, failed }

    /// Accepts one connection from `listener` with the reserve's number and closes it.
    /// `.dropped`: one went (or went away by itself), so try the next; `.empty`: nothing was
    /// waiting; `.failed`: the number went to another thread first, or the reserve could not
    /// be taken back (the caller tries again later).
    func shed(listener: Int32) -> Shed {
        fd.withLock { fd in
            guard open(&fd) else { return .failed }
            state.add(1, ordering: .sequentiallyConsistent)  // held (odd) + 1: out, and counted
            close(fd)
            fd = -1
            let dropped = csock_accept_nonblocking(listener, nil)
            if dropped >= 0 { close(dropped) }
            _ = open(&fd)
            switch dropped >= 0 ? 0 : -dropped {
            case 0, EINTR, ECONNABORTED: return .dropped
            case EAGAIN: return .empty
            default: return .failed
            }
        }
    }

    /// Opens the reserve if it is out (under the lock); whether it is held.
    private func open(_ fd: inout Int32) -> Bool {
        if fd < 0 {
            fd = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
            if fd >= 0 { state.add(1, ordering: .sequentiallyConsistent) }  // even + 1: held
        }
        return fd >= 0
    }
}
