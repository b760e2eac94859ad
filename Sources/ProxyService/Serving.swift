import CProcess
import Glibc
import Logging
import NetCore
import Primitives
import Proxy
import Synchronization

extension ProxyService {
    /// `netctl proxy serve`: relays every endpoint's proxied ports until SIGTERM, SIGINT or
    /// SIGHUP, then drains open connections for up to `drainSeconds`. With `metrics`, serves
    /// Prometheus metrics there. `report` gets what an operator should see (starting,
    /// draining). Blocks the stop signals first: every thread started after inherits the mask,
    /// so only this one receives them.
    public static func runUntilSignalled(manager: NetworkManager, options: ProxyServer.Options, metrics: SocketAddress?,
                                         drainSeconds: Double, logger: Logger, report: (String) -> Void) throws {
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        // Every TCP route holds a descriptor and every connection two or more: take the whole
        // allowance the administrator granted.
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        let service = try ProxyService(manager: manager, scope: .all, options: options, logger: logger)
        if let wanted = options.backendCongestionControl, service.backendCongestionControl != wanted {
            report("congestion control \(wanted) could not be set (see /proc/sys/net/ipv4/tcp_available_congestion_control)")
        }
        let endpoint = try metrics.map { try MetricsEndpoint(listen: $0) }
        do {
            try service.refresh(force: true)
        } catch {
            service.stop(drainSeconds: 0)
            throw error
        }
        report("serving \(service.serving) routes; connections to containers use \(service.backendCongestionControl)")
        service.loop(metrics: endpoint) { nanoseconds in
            var timeout = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            return sigtimedwait(&signals, nil, &timeout) > 0
        }
        report("draining (up to \(drainSeconds) s)")
        service.stop(drainSeconds: drainSeconds)
    }

    /// A service scoped to one endpoint, run on a thread of its own beside the caller's work:
    /// what a container's monitor runs for its container's proxied ports while it waits for
    /// the container. The thread has its own `NetworkManager` (state connection and netlink
    /// socket), opened in the caller's network namespace.
    public final class Background: Sendable {
        private let control = Control()
        private let thread: pthread_t

        /// What the caller's thread and the service's share.
        private final class Control: Sendable {
            let stopping = Atomic<Bool>(false)
            let drainNanoseconds = Atomic<UInt64>(0)
            let started = Mutex<Result<Void, any Error>?>(nil)
        }

        /// Starts relaying the proxied ports of `scope` (one endpoint, or a container's
        /// namespace); returns once the first refresh is done, or throws what failed.
        public init(stateDirectory: String, scope: RelayScope, options: ProxyServer.Options, logger: Logger) throws {
            var ready: [Int32] = [-1, -1]
            guard pipe(&ready) == 0 else { throw ServiceError.cannotStartThread(what: "the proxy of \(scope)", code: errno) }
            for fd in ready { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            defer { close(ready[0]) }
            let control = self.control, signal = ready[1]
            let work: @Sendable () -> Void = {
                // The caller waits for end-of-file on the pipe, after `started` is set.
                let service: ProxyService
                do {
                    let manager = try NetworkManager(stateDirectory: stateDirectory, logger: logger)
                    service = try ProxyService(manager: manager, scope: scope, options: options, logger: logger)
                    do {
                        try service.refresh(force: true)
                    } catch {
                        service.stop(drainSeconds: 0)
                        throw error
                    }
                } catch {
                    control.started.withLock { $0 = .failure(error) }
                    close(signal)
                    return
                }
                control.started.withLock { $0 = .success(()) }
                close(signal)
                service.loop { nanoseconds in
                    // Naps of 50 ms: `stop` waits for the loop to see its flag.
                    var left = nanoseconds
                    while left > 0 && !control.stopping.load(ordering: .acquiring) {
                        var pause = timespec(tv_sec: 0, tv_nsec: Int(min(left, 50_000_000)))
                        nanosleep(&pause, nil)
                        left -= min(left, 50_000_000)
                    }
                    return control.stopping.load(ordering: .acquiring)
                }
                service.stop(drainSeconds: Double(control.drainNanoseconds.load(ordering: .relaxed)) / 1e9)
            }
            do {
                thread = try startThread("the proxy of \(scope)", work)
            } catch {
                close(signal)
                throw error
            }
            var byte: UInt8 = 0
            while read(ready[0], &byte, 1) < 0 && errno == EINTR {}
            if case .failure(let error) = control.started.withLock({ $0 }) ?? .success(()) {
                pthread_join(thread, nil)
                throw error
            }
        }

        /// Stops relaying: open connections get up to `drainSeconds`, then the thread ends.
        public func stop(drainSeconds: Double) {
            control.drainNanoseconds.store(UInt64(max(0, drainSeconds) * 1e9), ordering: .relaxed)
            guard !control.stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
            pthread_join(thread, nil)
        }
    }
}
