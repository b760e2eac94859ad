import CProcess
import Glibc
import Logging
import NetCore
import Primitives
import Proxy

/// The proxy as a service: relays what NetCore's publishing plan gives the proxy, follows
/// state as mappings come and go, and publishes its counters. It serves a `RelayScope`:
/// every endpoint (`netctl proxy serve`, see `runUntilSignalled`), or one endpoint (a
/// container's monitor, see `Background`). Which process relays what is NetCore's
/// `RelayClaims` rule; a service only asks it.
public final class ProxyService {
    public let scope: RelayScope
    let manager: NetworkManager
    let server: ProxyServer
    let logger: Logger
    private var version: Int64 = -1
    private var routes: [ProxyRoute: PublishedPort] = [:]
    /// How many routes are being served (those that could listen).
    public var serving: Int { routes.count - failing.count }
    /// The TCP congestion control of connections to containers (see
    /// `ProxyServer.Options.backendCongestionControl`).
    public var backendCongestionControl: String { server.backendCongestionControl }
    /// What the claims rule said last.
    public private(set) var assignment: RelayAssignment?

    /// Routes that could not listen (a port some program holds), tried again on state
    /// changes and every `retryInterval`.
    public private(set) var failing: [ProxyRoute: String] = [:]
    private var nextCheck: UInt64 = 0
    /// How often routes that failed are tried again, and claims of other processes checked.
    static let retryInterval: UInt64 = 2_000_000_000
    let statistics: StatisticsWriter

    /// Claims nothing yet: the first `refresh` does. A second service for a scope some live
    /// process relays fails there, with `NetctlError.relaysClaimed`.
    public init(manager: NetworkManager, scope: RelayScope = .all, options: ProxyServer.Options = .init(),
                logger: Logger = Logger(label: "netctl-proxy")) throws {
        self.manager = manager
        self.scope = scope
        self.logger = logger
        server = try ProxyServer(options: options)
        statistics = StatisticsWriter(path: PortStatistics.path(stateDirectory: manager.stateDirectory, scope: scope))
    }

    /// Brings the served routes in line with state when state changed (or when `force`, or
    /// when it is time to try failed routes again or to look at other processes' claims).
    public func refresh(force: Bool = false) throws {
        let now = try manager.stateVersion()
        let due = (!failing.isEmpty || assignment?.dependsOnOthers == true) && monotonicNanoseconds() >= nextCheck
        guard force || now != version || due else { return }
        let previous = assignment
        let assigned = try manager.relayAssignment(for: scope)
        if let shared = assigned.servedBy, previous?.servedBy != shared {
            logger.warning("not relaying the proxied ports of \(scope): netctl proxy serve (process \(shared.pid)) relays them")
        }
        for (endpoint, owner) in assigned.skipped where previous?.skipped[endpoint] != owner {
            logger.warning("not relaying the proxied ports of endpoint \(endpoint): its own service (process \(owner.pid)) relays them")
        }
        var wanted: [ProxyRoute: PublishedPort] = [:]
        for (relay, port) in assigned.relays { wanted[ProxyRoute(relay)] = port }
        // One taken port must not keep the others down: serve what can listen.
        let failed = try server.update(Array(wanted.keys), partial: true).mapValues(\.description)
        for (route, reason) in failed where failing[route] == nil { logger.warning("not serving \(route): \(reason)") }
        // Recorded only once applied: a refresh that threw is tried again on the next call.
        version = now
        assignment = assigned
        if failed != failing || wanted != routes { statistics.routesChanged() }
        failing = failed
        routes = wanted
        nextCheck = monotonicNanoseconds() + ProxyService.retryInterval
    }

    /// Counters per published port.
    public func stats() -> [(port: PublishedPort, stats: RouteStats)] {
        var byPort: [PublishedPort: RouteStats] = [:]
        for (route, stats) in server.stats() {
            guard let port = routes[route] else { continue }
            byPort[port] = (byPort[port] ?? RouteStats()) + stats
        }
        return byPort.map { ($0.key, $0.value) }.sorted { ($0.port.endpoint, $0.port.hostPort) < ($1.port.endpoint, $1.port.hostPort) }
    }

    /// Writes the counters where `netctl port stats` reads them, if they moved (see
    /// `StatisticsWriter`); whether it wrote.
    @discardableResult
    public func writeStatsIfChanged() -> Bool {
        statistics.writeIfChanged(totals: server.totals()) { self.stats() }
    }

    /// The counters in Prometheus' text format.
    public func metrics() -> String { PortStatistics.prometheus(stats()) }

    /// Stops accepting and gives up the claim at once (another service may take the ports
    /// over), then lets open connections finish for up to `drainSeconds`.
    public func stop(drainSeconds: Double) {
        server.stop(drainSeconds: drainSeconds) { manager.releaseRelays(scope) }
        statistics.remove()
    }

    /// Refreshes every 250 ms and writes counters every second while they move, until
    /// `wait` (which sleeps up to the given nanoseconds) says to stop. Errors of a refresh
    /// are logged; the next tick tries again.
    func loop(metrics: MetricsEndpoint? = nil, wait: (UInt64) -> Bool) {
        var tick = 0
        while !wait(250_000_000) {
            do { try refresh() } catch { logger.error("\(error)") }
            tick += 1
            if tick % 4 == 0 && writeStatsIfChanged() {
                metrics?.update(self.metrics())
            }
        }
    }
}

extension ProxyRoute {
    init(_ relay: Relay) {
        self.init(proto: relay.proto == .udp ? .udp : .tcp, listen: relay.listen, backend: relay.backend)
    }
}
