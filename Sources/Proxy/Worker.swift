import CSocket
import Glibc
import Primitives
import Synchronization

/// One event loop on one thread: its own epoll set and every connection and flow it
/// accepted. A route has a listening socket per worker (SO_REUSEPORT: the kernel picks one
/// per connection, or hashes each UDP client to one, so a flow stays on one worker). Past
/// `Options.maxListeners`, a TCP route has one listener that every worker watches with
/// EPOLLEXCLUSIVE (the kernel wakes one idle worker per burst of connections), so 10,000
/// routes need not cost 10,000 descriptors per core. With `Options.balanceConnections` (off
/// by default), a worker holding a few more connections than another hands new ones to it
/// through its command queue (see `lighterSibling`). Workers share nothing else but their
/// connection counts (atomics) and the descriptor reserve for running out (see
/// `DescriptorReserve`): relaying takes no lock, only a hand-over takes the receiver's queue
/// lock, and only running out the reserve's.
final class Worker {
    enum Command {
        case add(fd: Int32, route: ProxyRoute, counters: Counters)
        case remove(ProxyRoute)
        /// Stop accepting (signalling the eventfd `done` once its listeners are let go);
        /// finish open connections until the deadline, then close them.
        case drain(deadline: UInt64, done: Int32)
        /// Signals the eventfd once everything posted before it is applied.
        case barrier(Int32)
        /// A connection another worker (`from`) accepted, for this one to relay (see
        /// `lighterSibling`). `returned`: this one accepted it, and the other could not take it.
        case adopt(client: Int32, peer: sockaddr_storage, route: ProxyRoute, from: Worker, returned: Bool)
        /// An established connection another worker moved here whole (see `balanceBulk`);
        /// it counts in this worker's `load` already.
        case migrate(Connection, route: ProxyRoute)
    }

    /// Epoll tokens: the kind in the top byte, an index below.
    enum Kind: UInt64 { case wake = 1, listener = 2, connection = 3, udpListener = 4, flow = 5 }

    static func token(_ kind: Kind, _ index: Int) -> UInt64 { kind.rawValue << 56 | UInt64(index) }

    /// A connection's token: generation (31 bits), slot (24 bits), side (1 bit).
    static func connectionToken(slot: Int, generation: UInt32, backend: Bool) -> UInt64 {
        token(.connection, Int(generation & 0x7fff_ffff) << 25 | slot << 1 | (backend ? 1 : 0))
    }

    let options: ProxyServer.Options
    let epoll: Int32
    let wake: Int32
    private var lock = pthread_mutex_t()
    private var queue: [Command] = []
    /// The loop returned: posting fails from then on (under `lock`).
    private var ended = false

    struct Listener {
        var fd: Int32
        var route: ProxyRoute
        var counters: Counters
        /// The backend's sockaddr, encoded once, not per connection.
        var backend: sockaddr_storage
        var backendLength: socklen_t
        /// TCP listeners are closed by the server (a replaced route hands them to its
        /// successor); UDP ones are this worker's own.
        var owned: Bool { route.proto == .udp }
    }
    var listeners: [Listener?] = []
    var connections: [Connection] = []
    var freeConnections: [Int] = []
    /// Slots of connections still waiting for their backend, checked for the connect timeout.
    var connecting: Set<Int> = []
    var pipes: [(read: Int32, write: Int32)] = []
    var flows: [Flow] = []
    var freeFlows: [Int] = []
    var flowIndex: [FlowKey: Int] = [:]
    /// Ends of the flows' list by last activity (see `Flow.older`); -1 when empty.
    var oldestFlow = -1
    var newestFlow = -1
    let udp: UDPBuffers
    /// Runs of equal datagrams go to backends as one UDP_SEGMENT message, until the kernel
    /// refuses one (no checksum offload on the path, or a kernel without it).
    var udpSegmentation = true
    /// For when accept fails with EMFILE: the pending connection is taken and closed instead
    /// of spinning or hanging. Shared with the other workers.
    let reserve: DescriptorReserve
    var drainDeadline: UInt64?
    /// Listeners whose accept loop stopped on an error other than EAGAIN: connections may be
    /// waiting with no edge to come, so the sweep accepts again.
    var retryAccept: Set<Int> = []
    /// The copy path's buffer (see `Options.copyThreshold`).
    let scratch: UnsafeMutableRawPointer
    /// Open TCP connections, plus connections handed to this worker and not yet taken: what
    /// a drain waits for, and what the other workers compare theirs with.
    let load = Atomic<Int>(0)
    /// The other workers, set before any thread starts (and cleared once they stopped).
    var siblings: [Worker] = []
    /// Bulk connections this worker relays, as of its last look (see `balanceBulk`).
    let bulk = Atomic<Int>(0)
    /// Set once it drains: nothing is moved to it from then on.
    let draining = Atomic<Bool>(false)
    /// How often a worker looks for bulk connections, and how many bytes in that time make
    /// one (both ways together): far above what a request/response connection moves.
    static let balanceInterval: UInt64 = 100_000_000
    static let bulkBytes = 1 << 20

    /// Set on each backend socket (NUL-terminated); nil: the system's default is it.
    let backendCongestionControl: [CChar]?

    init(options: ProxyServer.Options, backendCongestionControl: String?, reserve: DescriptorReserve) throws {
        self.options = options
        self.reserve = reserve
        self.backendCongestionControl = backendCongestionControl.map { Array($0.utf8CString) }
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard epoll >= 0, wake >= 0 else { throw ProxyError.errno("creating an event loop", errno) }
        pthread_mutex_init(&lock, nil)
        udp = UDPBuffers(batch: options.udpBatch)
        scratch = UnsafeMutableRawPointer.allocate(byteCount: max(1, options.copyThreshold), alignment: 16)
        watch(wake, Worker.token(.wake, 0), EPOLLIN.rawValue)
    }

    deinit {
        close(epoll); close(wake)
        scratch.deallocate()
        _ = closeSparePipes()
        pthread_mutex_destroy(&lock)
    }

    /// Queues a command for the loop; false if the loop has ended (it would never be taken).
    @discardableResult
    func post(_ command: Command) -> Bool {
        pthread_mutex_lock(&lock)
        let open = !ended
        if open { queue.append(command) }
        pthread_mutex_unlock(&lock)
        var one: UInt64 = 1
        if open { _ = write(wake, &one, 8) }
        return open
    }

    static let edgeIn = EPOLLIN.rawValue | EPOLLET.rawValue
    static let edgeAll = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
    /// A client socket until a send to it first blocks: no EPOLLOUT, whose edges would come
    /// with every ACK the client sends and wake the loop for nothing.
    static let edgeRead = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
    /// Events after which a side is read to EOF or EAGAIN, not just to a short read.
    static let hangupEvents = EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue
    /// A socket reset, or closed both ways.
    static let goneEvents = EPOLLHUP.rawValue | EPOLLERR.rawValue
    /// How long a backend may leave the proxy's FIN (and bytes before it) unacknowledged, or
    /// its receive window shut: long enough for a backend busy with a large upload.
    static var unacknowledgedLimitMilliseconds: UInt32 { 300_000 }

    func watch(_ fd: Int32, _ token: UInt64, _ events: UInt32, change: Bool = false) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        epoll_ctl(epoll, change ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event)
    }

    /// The loop. Returns once drained (or at the drain deadline).
    func run() {
        // splice(2) into a socket the peer closed raises SIGPIPE, and splice has no
        // MSG_NOSIGNAL. Blocked on this thread only, it stays pending and harmless, and
        // the call returns EPIPE, which the relay handles; the host process's own SIGPIPE
        // handling is left alone.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var nextSweep = monotonicNanoseconds() + 250_000_000
        var nextBalance = monotonicNanoseconds() + Worker.balanceInterval
        let balancing = options.moveBulkConnections && !siblings.isEmpty
        while true {
            let n = epoll_wait(epoll, events, Int32(capacity), 250)
            for i in 0..<max(0, Int(n)) {
                let token = events[i].data.u64
                let index = Int(token & 0x00ff_ffff_ffff_ffff)
                let flags = events[i].events
                switch Kind(rawValue: token >> 56) {
                case .wake: takeCommands()
                case .listener: acceptAll(listener: index)
                case .connection:
                    connectionEvent(slot: (index >> 1) & 0xff_ffff, generation: UInt32(index >> 25), backend: index & 1 == 1, events: flags)
                case .udpListener: receiveFromClients(listener: index)
                case .flow: receiveFromBackend(flow: index)
                case nil: break
                }
            }
            let now = monotonicNanoseconds()
            if balancing && now >= nextBalance {
                balanceBulk()
                nextBalance = now + Worker.balanceInterval
            }
            if now >= nextSweep {
                let retry = retryAccept
                retryAccept = []
                for slot in retry where listeners.indices.contains(slot) { acceptAll(listener: slot) }
                sweepConnectTimeouts(now: now)
                sweepIdleFlows(now: now)
                _ = reserve.refill()
                nextSweep = now + 250_000_000
            }
            if let deadline = drainDeadline, load.load(ordering: .relaxed) == 0 || now >= deadline {
                closeEverything()
                return
            }
        }
    }

    private func takeCommands() {
        var count: UInt64 = 0
        _ = read(wake, &count, 8)
        pthread_mutex_lock(&lock)
        let commands = queue
        queue.removeAll(keepingCapacity: true)
        pthread_mutex_unlock(&lock)
        for command in commands {
            switch command {
            case .add(let fd, let route, let counters):
                let slot = listeners.firstIndex(where: { $0 == nil }) ?? { listeners.append(nil); return listeners.count - 1 }()
                listeners[slot] = Listener(fd: fd, route: route, counters: counters,
                                           backend: route.backend.storage, backendLength: route.backend.length)
                if route.proto == .tcp {
                    watch(fd, Worker.token(.listener, slot), Worker.edgeIn | EPOLLEXCLUSIVE.rawValue)
                } else {
                    watch(fd, Worker.token(.udpListener, slot), Worker.edgeIn)
                }
            case .remove(let route):
                // New traffic stops; what the route carried goes too, as a removed mapping must
                // not keep sending to its old backend.
                for slot in listeners.indices where listeners[slot]?.route == route {
                    closeConnections(of: slot)
                    closeFlows(of: slot)
                    release(slot)
                }
            case .barrier(let fd):
                var one: UInt64 = 1
                _ = write(fd, &one, 8)
            case .adopt(let client, let peer, let route, let from, let returned):
                if let slot = listeners.firstIndex(where: { $0?.route == route }) {
                    start(client: client, peer: peer, listener: slot, counted: true)
                    continue
                }
                // Not (or no longer) serving the route: a new route's listener may not have
                // reached this worker yet, or it is draining. The worker that accepted the
                // connection serves it, unless the route has gone there too.
                load.subtract(1, ordering: .relaxed)
                if !returned {
                    from.load.add(1, ordering: .relaxed)
                    if from.post(.adopt(client: client, peer: peer, route: route, from: self, returned: true)) { continue }
                    from.load.subtract(1, ordering: .relaxed)
                }
                abort(client)
            case .migrate(let connection, let route):
                adoptMoved(connection, route: route)
            case .drain(let deadline, let done):
                draining.store(true, ordering: .relaxed)
                for slot in listeners.indices { release(slot) }
                drainDeadline = deadline
                var one: UInt64 = 1
                _ = write(done, &one, 8)
            }
        }
    }

    private func closeEverything() {
        // Connections other workers handed over and this loop never took are reset too.
        pthread_mutex_lock(&lock)
        ended = true
        let left = queue
        queue = []
        pthread_mutex_unlock(&lock)
        for command in left {
            switch command {
            case .adopt(let client, _, _, _, _):
                load.subtract(1, ordering: .relaxed)
                abort(client)
            case .migrate(let c, _):  // (its sender took it out of its counters)
                load.subtract(1, ordering: .relaxed)
                abort(c.client); abort(c.backend)
                for pipe in [c.up.pipe, c.down.pipe].compactMap({ $0 }) { close(pipe.read); close(pipe.write) }
            default: break
            }
        }
        for slot in connections.indices where connections[slot].inUse { reset(slot, both: true) }
        for slot in flows.indices where flows[slot].inUse { closeFlow(slot) }
        for slot in listeners.indices { release(slot) }
    }

    /// Stops watching a listener; closes it if it is this worker's own.
    private func release(_ slot: Int) {
        guard let listener = listeners[slot] else { return }
        if listener.owned {
            close(listener.fd)
        } else {
            epoll_ctl(epoll, EPOLL_CTL_DEL, listener.fd, nil)
        }
        listeners[slot] = nil
    }

    // MARK: Pipes

    /// A pipe from the pool (or a new one). Pipes are held only while bytes are in flight,
    /// so an idle connection costs two descriptors and a slot, not four descriptors.
    func takePipe() -> (read: Int32, write: Int32)? {
        if let pipe = pipes.popLast() { return pipe }
        var fds: [Int32] = [0, 0]
        guard csock_pipe2(&fds, O_NONBLOCK | O_CLOEXEC) == 0 else { return nil }
        _ = csock_set_pipe_size(fds[1], Int32(options.pipeSize))
        return (fds[0], fds[1])
    }

    func givePipe(_ pipe: (read: Int32, write: Int32), empty: Bool) {
        if empty && pipes.count < options.sparePipes {
            pipes.append(pipe)
        } else {
            close(pipe.read); close(pipe.write)
        }
    }

    /// Empties the pool; whether it held any.
    func closeSparePipes() -> Bool {
        guard !pipes.isEmpty else { return false }
        for pipe in pipes { close(pipe.read); close(pipe.write) }
        pipes.removeAll()
        return true
    }
}
