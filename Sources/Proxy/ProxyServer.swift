import CProcess
import CSocket
import Glibc
import Primitives

/// The userland proxy: one process (or one library object inside a runtime) serving every
/// route, one epoll loop per core. Routes change while it runs (`update`); `stop` drains.
///
/// Listening sockets are made on the thread that calls `update`, so they belong to that
/// thread's network namespace.
public final class ProxyServer {
    public struct Options: Sendable {
        public var workers: Int
        /// Capacity of each splice pipe (held only while bytes are in flight).
        public var pipeSize: Int
        public var sparePipes: Int
        public var connectTimeout: UInt64
        public var udpIdleTimeout: UInt64
        /// UDP flows per worker; the least recently used goes when full.
        public var maxFlows: Int
        public var udpBatch: Int
        /// Reads up to this size are copied through user space (recv + send); a read that
        /// fills it switches the direction to splice. 0 = always splice. Small transfers
        /// (requests, replies) cost less as one copy each way than as two splices through a
        /// pipe; bulk transfers never enter user space. At most `pipeSize`: a copied read the
        /// destination does not take at once waits in the direction's pipe.
        public var copyThreshold: Int
        /// Binds each worker to a CPU of its own when there is one worker per CPU the process
        /// may use (the default). Fewer workers are left to the scheduler: bound, they would
        /// all crowd the lowest CPUs, in every proxy of the host. Left to the scheduler, a
        /// worker often waits for the CPU of the program it relays for while another CPU
        /// idles, and moves between CPUs, losing its caches.
        public var pinWorkers: Bool
        /// Listening descriptors TCP routes may hold. While there is room, a TCP route gets a
        /// listener per worker (SO_REUSEPORT; with bound workers, a socket filter hands each
        /// connection to the worker on the CPU that took its SYN, whose caches hold it); after
        /// that, one listener that every worker watches, so 10,000 ports need not cost 10,000
        /// descriptors per worker. A route keeps the kind it started with. nil: a quarter of
        /// the open-files limit, the rest being for connections.
        public var maxListeners: Int?
        /// TCP congestion control for connections to backends; nil keeps the system's
        /// default. Backends are containers on this host, behind a bridge or loopback: no
        /// link there is a bottleneck to pace for. BBR paces with its own timers when the
        /// device has no fq qdisc (veth and loopback have none), and that hop's segments then
        /// arrive out of order and are retransmitted for nothing. The clients' side keeps the
        /// system's choice. If the kernel refuses the algorithm (not built, or not allowed
        /// without CAP_NET_ADMIN), backends get the default.
        public var backendCongestionControl: String?
        /// A worker holding more than `connectionImbalance` TCP connections more than another
        /// hands new ones to it, for hosts whose local clients open many long-lived
        /// connections from one CPU (they all land on that CPU's worker). Off by default: a
        /// handed-over connection is served away from the CPU that takes its packets for the
        /// rest of its life, which costs short and keep-alive connections more than the
        /// balance gains (docs/measurements.md).
        public var balanceConnections: Bool
        /// Bulk transfers spread over the workers by the bytes they move: a worker relaying
        /// two or more bulk connections more than another hands one of them over, whole
        /// (sockets, pipes and all), at most one per look (`Worker.balanceInterval`). Short
        /// and keep-alive connections never move bytes enough to count, so they keep the
        /// locality of the worker on their SYN's CPU; a client's parallel streams, which all
        /// land on the worker of its CPU, no longer share one core.
        public var moveBulkConnections: Bool

        /// `workers`: by default one per CPU this thread may run on (a container limited to
        /// two CPUs of sixteen gets two).
        public init(workers: Int = max(1, ProxyServer.allowedCPUs.count), pipeSize: Int = 1 << 20, sparePipes: Int = 64,
                    connectTimeoutSeconds: Double = 5, udpIdleTimeoutSeconds: Double = 90, maxFlows: Int = 4096, udpBatch: Int = 32,
                    copyThreshold: Int = 16384, pinWorkers: Bool = true, maxListeners: Int? = nil,
                    backendCongestionControl: String? = "cubic", balanceConnections: Bool = false, moveBulkConnections: Bool = true) {
            self.workers = max(1, workers); self.pipeSize = pipeSize; self.sparePipes = sparePipes
            self.copyThreshold = max(0, copyThreshold)
            self.connectTimeout = UInt64(connectTimeoutSeconds * 1e9); self.udpIdleTimeout = UInt64(udpIdleTimeoutSeconds * 1e9)
            self.maxFlows = maxFlows; self.udpBatch = udpBatch; self.pinWorkers = pinWorkers
            self.maxListeners = maxListeners; self.backendCongestionControl = backendCongestionControl
            self.balanceConnections = balanceConnections
            self.moveBulkConnections = moveBulkConnections
        }
    }

    let workers: [Worker]  // (internal for tests)
    private var threads: [pthread_t] = []
    private var routes: [ProxyRoute: [Counters]] = [:]
    /// Each TCP route's listening sockets: one per worker, or one that every worker watches.
    /// Closed here, once no worker watches them.
    private var tcpListeners: [ProxyRoute: [Int32]] = [:]
    private let listenerBudget: Int
    /// The CPU each worker is bound to, if they are.
    private var boundCPUs: [Int32]? = nil
    private var stopped = false

    /// The congestion control connections to backends use: `Options.backendCongestionControl`,
    /// or the system's default if that is nil or the kernel refused it.
    public let backendCongestionControl: String

    public init(options: Options = Options()) throws {
        guard options.copyThreshold <= options.pipeSize else {
            throw ProxyError("copy threshold \(options.copyThreshold) is above the pipe size \(options.pipeSize): what a slow destination leaves of a copied read waits in a pipe, so lower the threshold (0 splices everything)")
        }
        let (using, differs) = ProxyServer.congestionControl(options.backendCongestionControl)
        backendCongestionControl = using
        // Workers set it on each backend socket only when it is not the default already.
        let reserve = DescriptorReserve()
        workers = try (0..<options.workers).map { _ in
            try Worker(options: options, backendCongestionControl: differs ? using : nil, reserve: reserve)
        }
        let cpus = ProxyServer.allowedCPUs
        var files = rlimit()
        listenerBudget = options.maxListeners ?? (getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0 ? Int(files.rlim_cur / 4) : 256)
        if options.balanceConnections || options.moveBulkConnections {
            for worker in workers { worker.siblings = workers.filter { $0 !== worker } }
        }
        for worker in workers {
            var thread = pthread_t()
            let context = Unmanaged.passRetained(worker).toOpaque()
            let rc = cproc_thread_start(&thread, { raw in
                let worker = Unmanaged<Worker>.fromOpaque(raw!).takeRetainedValue()
                worker.run()
            }, context)
            guard rc == 0 else {
                Unmanaged<Worker>.fromOpaque(context).release()
                throw ProxyError.errno("starting a proxy worker thread", -rc)
            }
            threads.append(thread)
        }
        // One worker per CPU: each bound to its own. Best effort, all or none: unbound
        // workers still work.
        if options.pinWorkers && workers.count == cpus.count {
            if zip(threads, cpus).allSatisfy({ thread, cpu in withUnsafePointer(to: cpu) { cproc_set_thread_cpus(thread, $0, 1) } == 0 }) {
                boundCPUs = cpus
            } else {
                threads.forEach { _ = cproc_set_thread_cpus($0, cpus, Int32(cpus.count)) }
            }
        }
    }

    /// How many more TCP connections a worker may hold than another; past that it hands new
    /// ones over (with `Options.balanceConnections`).
    public static let connectionImbalance = 1

    /// Each worker's open TCP connections.
    public var workerConnections: [Int] { workers.map { $0.load.load(ordering: .relaxed) } }

    /// The CPUs each worker's thread may run on (none once stopped).
    public var workerCPUs: [[Int32]] { stopped ? [] : threads.map { ProxyServer.cpus(of: $0) } }

    /// The CPUs the calling thread may run on: one worker each by default.
    public static var allowedCPUs: [Int32] { cpus(of: pthread_self()) }

    static func cpus(of thread: pthread_t) -> [Int32] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = cproc_thread_cpus(thread, &cpus, Int32(cpus.count))
        return Array(cpus.prefix(max(0, Int(n))))
    }

    /// What a new TCP socket of this network namespace gets by default, and whether `wanted`
    /// differs from it and the kernel lets this process set it. Tried once, on a socket that
    /// connects nowhere, so a refusal costs no call per connection.
    static func congestionControl(_ wanted: String?) -> (using: String, differs: Bool) {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { return ("unknown", false) }
        defer { close(probe) }
        var name = [CChar](repeating: 0, count: 32)
        var length = socklen_t(name.count - 1)
        let system = getsockopt(probe, Int32(IPPROTO_TCP), TCP_CONGESTION, &name, &length) == 0 ? String(cBuffer: name) : ""
        guard let wanted, !wanted.isEmpty, wanted != system else { return (system, false) }
        let set = wanted.withCString { setsockopt(probe, Int32(IPPROTO_TCP), TCP_CONGESTION, $0, socklen_t(strlen($0))) } == 0
        return set ? (wanted, true) : (system, false)
    }

    deinit { stop(drainSeconds: 0) }

    /// The routes being served.
    public var currentRoutes: Set<ProxyRoute> { Set(routes.keys) }

    /// Serves exactly `routes` from now on: new ones start listening, removed ones stop
    /// (and their connections and flows close). All or nothing: if a new route can't
    /// listen (its port is taken, its address isn't local), nothing changes and the error
    /// says which.
    public func update(_ wanted: [ProxyRoute]) throws {
        _ = try update(wanted, partial: false)
    }

    /// Like `update`, but routes that can't listen are left out (and returned with why)
    /// while the others are served: one taken port must not keep the rest down.
    @discardableResult
    public func update(_ wanted: [ProxyRoute], partial: Bool) throws -> [ProxyRoute: ProxyError] {
        guard !stopped else { throw ProxyError("the proxy has been stopped; make a new one") }
        let wantedSet = Set(wanted)
        if wantedSet == Set(routes.keys) { return [:] }  // nothing to change, no barrier to pay
        let gone = routes.keys.filter { !wantedSet.contains($0) }
        // A TCP route replaced on the same address (a new backend, say) hands its listening
        // sockets to the new route: no moment without a listener, no rebind.
        var reuse: [ProxyRoute: [Int32]] = [:]
        var handedOver: Set<Int32> = []
        for route in wanted where routes[route] == nil && route.proto == .tcp && reuse[route] == nil {
            if let old = gone.first(where: { $0.proto == .tcp && $0.listen == route.listen }), let fds = tcpListeners[old], !handedOver.contains(fds[0]) {
                reuse[route] = fds
                handedOver.formUnion(fds)
            }
        }
        // A replaced UDP route's new sockets bind beside the old ones (SO_REUSEPORT), and the
        // old go in the same barrier: nothing to undo if the update is refused.
        var opened: [ProxyRoute: [Int32]] = [:]
        var failed: [ProxyRoute: ProxyError] = [:]
        var listening = tcpListeners.values.reduce(0) { $0 + $1.count }
        for route in wanted where routes[route] == nil && reuse[route] == nil && opened[route] == nil && failed[route] == nil {
            do {
                let perWorker = route.proto == .udp || (workers.count > 1 && listening + workers.count <= listenerBudget)
                let fds = try listenSockets(route, perWorker: perWorker)
                if route.proto == .tcp { listening += fds.count }
                opened[route] = fds
            } catch let error as ProxyError where partial {
                failed[route] = error
            } catch {
                for fds in opened.values { fds.forEach { close($0) } }  // all or nothing
                throw error
            }
        }
        for route in gone { workers.forEach { $0.post(.remove(route)) } }
        let unwatched = gone.flatMap { tcpListeners.removeValue(forKey: $0) ?? [] }.filter { !handedOver.contains($0) }
        for route in gone { routes[route] = nil }
        for (route, fds) in reuse { opened[route] = fds }
        for (route, fds) in opened { install(route, fds) }
        // Return only once every worker has applied the change: a removed route accepts
        // nothing after this call, and an added one is being served. Only then may the
        // removed routes' shared listeners close.
        barrier()
        unwatched.forEach { close($0) }
        return failed
    }

    /// Hands a route's listening sockets to the workers (a socket each, or one TCP listener
    /// for all); applied at the next barrier.
    private func install(_ route: ProxyRoute, _ fds: [Int32]) {
        let counters = workers.map { _ in Counters() }
        for (i, worker) in workers.enumerated() {
            worker.post(.add(fd: fds.count == 1 ? fds[0] : fds[i], route: route, counters: counters[i]))
        }
        routes[route] = counters
        if route.proto == .tcp { tcpListeners[route] = fds }
    }

    /// Returns once every worker has applied what was posted before.
    func barrier() {
        let done = eventfd(0, Int32(EFD_CLOEXEC))
        guard done >= 0 else { return }
        defer { close(done) }
        workers.forEach { $0.post(.barrier(done)) }
        var seen: UInt64 = 0
        while seen < UInt64(workers.count) {
            var count: UInt64 = 0
            if read(done, &count, 8) == 8 { seen += count } else if errno != EINTR { break }
        }
    }

    /// Bytes, connections and flows per route, summed over the workers.
    public func stats() -> [ProxyRoute: RouteStats] {
        routes.mapValues { counters in
            var stats = RouteStats()
            counters.forEach { $0.add(to: &stats) }
            return stats
        }
    }

    /// Every route's counters summed. Equal totals mean no counter moved: all but `active`
    /// only grow, and `active` grows only with `connections`.
    public func totals() -> RouteStats { stats().values.reduce(RouteStats(), +) }

    /// Stops accepting, lets open connections finish for up to `drainSeconds`, then closes
    /// everything and joins the worker threads. Once no worker accepts any more, the
    /// listening sockets close and `notAccepting` runs, so another server can take the ports
    /// over while this one drains.
    public func stop(drainSeconds: Double, notAccepting: () -> Void = {}) {
        guard !stopped else { return }
        stopped = true
        let deadline = monotonicNanoseconds() + UInt64(max(0, drainSeconds) * 1e9)
        let done = eventfd(0, Int32(EFD_CLOEXEC))
        var expected: UInt64 = 0
        for worker in workers where worker.post(.drain(deadline: deadline, done: done)) { expected += 1 }
        var seen: UInt64 = 0
        while done >= 0 && seen < expected {
            var count: UInt64 = 0
            if read(done, &count, 8) == 8 { seen += count } else if errno != EINTR { break }
        }
        if done >= 0 { close(done) }
        tcpListeners.values.forEach { $0.forEach { close($0) } }
        tcpListeners = [:]
        notAccepting()
        for thread in threads { pthread_join(thread, nil) }
        workers.forEach { $0.siblings = [] }  // they referred to each other
    }

    /// A listening socket per worker, sharing the port with SO_REUSEPORT, or (TCP only) one
    /// that every worker watches.
    private func listenSockets(_ route: ProxyRoute, perWorker: Bool) throws -> [Int32] {
        var fds: [Int32] = []
        do {
            if perWorker && route.proto == .tcp {
                // SO_REUSEPORT would also let us bind beside another program's listener that
                // has it set: a plain bind first says whether the port is free.
                close(try listenSocket(route, reusePort: false, listen: false))
            }
            for _ in 0..<(perWorker ? workers.count : 1) {
                fds.append(try listenSocket(route, reusePort: perWorker, listen: route.proto == .tcp))
            }
            if perWorker && route.proto == .tcp, let cpus = boundCPUs {
                // Each connection goes to the worker on the CPU that took its SYN, whose caches
                // hold it; a program's socket that joins the port later gets none. (Without the
                // program the kernel picks by hash, among any sockets that joined.)
                _ = csock_reuseport_by_cpu(fds[0], cpus, Int32(cpus.count))
            }
        } catch {
            fds.forEach { close($0) }
            throw error
        }
        return fds
    }

    private func listenSocket(_ route: ProxyRoute, reusePort: Bool, listen: Bool) throws -> Int32 {
        let type = route.proto == .tcp ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue
        let fd = socket(route.listen.family, Int32(type) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProxyError.errno("opening a socket for \(route.proto.rawValue) \(route.listen)", errno) }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size) }
        if route.proto == .tcp {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size)
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, size)  // accepted sockets inherit it
        }
        if !route.listen.ip.isIPv4 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, size) }
        if route.proto == .udp && route.listen.isWildcard { _ = csock_enable_pktinfo(fd, route.listen.ip.isIPv4 ? 0 : 1) }
        let bound = route.listen.withSockaddr { bind(fd, $0, $1) }
        if bound != 0 {
            let code = errno
            close(fd)
            switch code {
            case EADDRINUSE:
                throw ProxyError("cannot listen on \(route.listen)/\(route.proto.rawValue): another program holds it; stop it or publish another host port")
            case EADDRNOTAVAIL:
                throw ProxyError("cannot listen on \(route.listen)/\(route.proto.rawValue): \(route.listen.ip) is not an address of this host")
            default:
                throw ProxyError.errno("cannot listen on \(route.listen)/\(route.proto.rawValue)", code)
            }
        }
        if listen && Glibc.listen(fd, 4096) != 0 {
            let code = errno
            close(fd)
            throw ProxyError.errno("cannot listen on \(route.listen)/tcp", code)
        }
        return fd
    }
}
