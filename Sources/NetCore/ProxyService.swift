import CProcess
import FoundationEssentials
import Glibc
import Logging
import Netlink
import Primitives
import Proxy

extension NetworkManager {
    /// The proxy's share of a published port: listeners the kernel can't (or, with the
    /// proxy backend, shouldn't) serve, each to the endpoint address of the best family.
    static func proxyRoutes(_ p: PublishedPort, _ e: Endpoint) -> [ProxyRoute] {
        // SCTP is never proxied (publish refuses a mapping that would need it).
        guard p.backend != .nft, let proto = ProxyRoute.Proto(rawValue: p.proto.rawValue) else { return [] }
        let v4 = e.ipv4Interface.address, v6 = e.ipv6Interface?.address
        func route(_ listen: String, to target: IPAddress) -> ProxyRoute {
            ProxyRoute(proto: proto, listen: SocketAddress(IPAddress(listen)!, p.hostPort), backend: SocketAddress(target, p.containerPort))
        }
        let scope = HostScope(p.hostIP)
        switch p.backend {
        case .nft:
            return []
        case .proxy:
            switch scope {
            case .all: return [route("0.0.0.0", to: v4), route("::", to: v6 ?? v4)]
            case .allIPv4: return [route("0.0.0.0", to: v4)]
            case .allIPv6: return [route("::", to: v6 ?? v4)]
            case .address(let ip): return [route("\(ip)", to: ip.isIPv4 ? v4 : (v6 ?? v4))]
            }
        case .auto:
            switch scope {
            case .all, .allIPv6:
                // The kernel serves IPv6 when the endpoint has it, except ::1; else all of IPv6 is ours.
                return v6 == nil ? [route("::", to: v4)] : [route("::1", to: v6!)]
            case .allIPv4:
                return []
            case .address(let ip):
                if ip == NetworkManager.ipv6Loopback { return [route("::1", to: v6 ?? v4)] }
                return !ip.isIPv4 && v6 == nil ? [route("\(ip)", to: v4)] : []
            }
        }
    }

    /// Every route the proxy should serve now, by the mapping each belongs to.
    public func proxyRoutes() throws -> [ProxyRoute: PublishedPort] {
        var routes: [ProxyRoute: PublishedPort] = [:]
        for (port, endpoint) in try store.ports() where endpoint.state == .active {
            for route in NetworkManager.proxyRoutes(port, endpoint) { routes[route] = port }
        }
        return routes
    }

    /// The state's change counter (see `StateStore.dataVersion`).
    public func stateVersion() throws -> Int64 { try store.dataVersion() }

    public var proxyStatsPath: String { stateDirectory + "/proxy-stats.json" }
}

/// Traffic figures of one published port: the proxy's counters for its proxied part, and
/// the kernel path's open connections from conntrack.
public struct PortStats: Codable, Equatable, Sendable {
    public var port: PublishedPort
    public var proxy: RouteStats?
    /// Tracked flows to the host port right now (kernel DNAT path).
    public var kernelConnections: Int
}


/// The proxy backend as a service: serves every proxied route in state, follows state as
/// mappings come and go, and publishes its counters. `netctl proxy serve` runs one; a
/// runtime can run one in-process instead.
public final class ProxyService {
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

    /// Routes that could not listen (a port some program holds), tried again on state
    /// changes and every `retryInterval`.
    public private(set) var failing: [ProxyRoute: String] = [:]
    private var nextRetry: UInt64 = 0
    static let retryInterval: UInt64 = 5_000_000_000
    /// Bumped when the served routes change; with the counters' totals, what the stats file
    /// last showed.
    private var generation = 0
    private var written: (generation: Int, totals: RouteStats)?
    /// The last write's buffers are to be given back once the counters rest.
    private var trimDue = false
    /// No write before this (monotonic ns): writing may take at most 2% of a CPU.
    private var nextWrite: UInt64 = 0

    public init(manager: NetworkManager, options: ProxyServer.Options = .init(), logger: Logger = Logger(label: "netctl-proxy")) throws {
        self.manager = manager
        self.logger = logger
        server = try ProxyServer(options: options)
    }

    /// Brings the served routes in line with state when state changed (or when `force`).
    public func refresh(force: Bool = false) throws {
        let now = try manager.stateVersion()
        let retry = !failing.isEmpty && monotonicNanoseconds() >= nextRetry
        guard force || now != version || retry else { return }
        let wanted = try manager.proxyRoutes()
        // One taken port must not keep the others down: serve what can listen.
        let failed = try server.update(Array(wanted.keys), partial: true).mapValues(\.description)
        for (route, reason) in failed where failing[route] == nil { logger.warning("not serving \(route): \(reason)") }
        // Recorded only once applied: a refresh that threw is tried again on the next call.
        version = now
        if failed != failing || wanted != routes { generation += 1 }
        failing = failed
        routes = wanted
        nextRetry = monotonicNanoseconds() + ProxyService.retryInterval
    }

    /// Counters per published port, for the stats file and the metrics endpoint.
    public func stats() -> [(port: PublishedPort, stats: RouteStats)] {
        var byPort: [PublishedPort: RouteStats] = [:]
        for (route, stats) in server.stats() {
            guard let port = routes[route] else { continue }
            byPort[port] = (byPort[port] ?? RouteStats()) + stats
        }
        return byPort.map { ($0.key, $0.value) }.sorted { ($0.port.endpoint, $0.port.hostPort) < ($1.port.endpoint, $1.port.hostPort) }
    }

    /// Writes the counters where `netctl port stats` reads them (atomically: rename) if the
    /// served routes changed, a counter moved or the file is gone since the last write; returns
    /// whether it wrote. An idle proxy writes nothing, and a busy one waits 50 times as long as
    /// its last write took: encoding 10,000 ports takes about 100 ms of CPU, so their file is
    /// rewritten every 5 s, a few hundred ports' every second or so (the caller's pace).
    @discardableResult
    public func writeStatsIfChanged() -> Bool {
        let start = monotonicNanoseconds()
        guard start >= nextWrite else { return false }
        let now = (generation: generation, totals: server.totals())
        guard written.map({ $0.generation != now.generation || $0.totals != now.totals }) ?? true
                || access(manager.proxyStatsPath, F_OK) != 0 else {
            if trimDue {
                // The encoding's buffers (megabytes for 10,000 ports) are free, but malloc
                // keeps their pages: without this the RSS stays at its high-water mark.
                cproc_release_free_memory()
                trimDue = false
            }
            return false
        }
        let routesChanged = written?.generation != now.generation
        if writeStats() { written = now }  // else tried again next time
        let end = monotonicNanoseconds()
        nextWrite = end + 50 * (end - start)
        // After a change of routes at once (rare, and it leaves the most garbage); while
        // traffic flows, once it rests: a trim per write would only fault the pages back in.
        if routesChanged { cproc_release_free_memory() } else { trimDue = true }
        return true
    }

    /// Writes the counters where `netctl port stats` reads them (atomically: rename).
    @discardableResult
    public func writeStats() -> Bool {
        let entries = stats().map { StatsEntry(port: $0.port, stats: $0.stats) }
        guard let json = try? JSONCoding.encode(entries) else { return false }
        let temporary = manager.proxyStatsPath + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        let complete = json.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == json.count
        return close(fd) == 0 && complete && rename(temporary, manager.proxyStatsPath) == 0
    }

    /// The same counters in Prometheus' text format.
    public func metrics() -> String {
        var lines = [
            "# HELP netctl_proxy_bytes_total Bytes relayed by the netctl proxy, by direction.",
            "# TYPE netctl_proxy_bytes_total counter",
        ]
        let all = stats()
        func labels(_ p: PublishedPort) -> String {
            "endpoint=\"\(p.endpoint)\",proto=\"\(p.proto.rawValue)\",host_ip=\"\(p.hostIP)\",host_port=\"\(p.hostPort)\""
        }
        for (p, s) in all {
            lines.append("netctl_proxy_bytes_total{\(labels(p)),direction=\"in\"} \(s.bytesIn)")
            lines.append("netctl_proxy_bytes_total{\(labels(p)),direction=\"out\"} \(s.bytesOut)")
        }
        lines += ["# HELP netctl_proxy_connections_total TCP connections and UDP flows accepted.", "# TYPE netctl_proxy_connections_total counter"]
        for (p, s) in all { lines.append("netctl_proxy_connections_total{\(labels(p))} \(s.connections)") }
        lines += ["# HELP netctl_proxy_connections_active TCP connections and UDP flows open now.", "# TYPE netctl_proxy_connections_active gauge"]
        for (p, s) in all { lines.append("netctl_proxy_connections_active{\(labels(p))} \(s.active)") }
        lines += ["# HELP netctl_proxy_failures_total Connections refused or reset, datagrams dropped.", "# TYPE netctl_proxy_failures_total counter"]
        for (p, s) in all { lines.append("netctl_proxy_failures_total{\(labels(p))} \(s.failures)") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Stops accepting and lets open connections finish for up to `drainSeconds`.
    public func stop(drainSeconds: Double) {
        server.stop(drainSeconds: drainSeconds)
        unlink(manager.proxyStatsPath)
    }
}

extension NetworkManager {
    /// Counters for published ports: the proxy's (from a running `proxy serve`) and the
    /// kernel path's tracked flows.
    public func portStats(endpoint name: String? = nil) throws -> [PortStats] {
        let ports = try self.ports(endpoint: name)
        var proxied: [PublishedPort: RouteStats] = [:]
        if let text = readFile(proxyStatsPath), let entries = try? JSONCoding.decode([StatsEntry].self, from: text) {
            for entry in entries { proxied[entry.port] = entry.stats }
        }
        var flows: [ConntrackKey: Int] = [:]
        if ports.contains(where: { $0.backend != .proxy }), let entries = try? conntrack().entries() {
            // Flows to this host only: a container's own flow out to some port 443 is not one.
            let local = try localAddresses()
            for entry in entries where isAddressedToHost(entry, local: local) {
                flows[ConntrackKey(proto: entry.proto, port: entry.destinationPort), default: 0] += 1
            }
        }
        return ports.map { p in
            let number: UInt8 = switch p.proto { case .tcp: 6; case .udp: 17; case .sctp: 132 }
            return PortStats(port: p, proxy: proxied[p], kernelConnections: p.backend == .proxy ? 0 : flows[ConntrackKey(proto: number, port: p.hostPort)] ?? 0)
        }
    }
}

/// One port's counters in the stats file `proxy serve` writes and `port stats` reads.
private struct StatsEntry: Codable {
    var port: PublishedPort
    var stats: RouteStats
}

private struct ConntrackKey: Hashable {
    var proto: UInt8
    var port: UInt16
}

/// JSON for the stats file, with FoundationEssentials (not Foundation: it costs start-up time).
enum JSONCoding {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(value))
    }

    static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }
}

/// A minimal HTTP endpoint for Prometheus: GET /metrics answers with the latest text set
/// by `update`; anything else gets 404. One thread, one request per connection.
public final class MetricsEndpoint: @unchecked Sendable {
    private let fd: Int32
    private var lock = pthread_mutex_t()
    private var text = ""

    /// Listens on `target` (in the caller's network namespace).
    public init(listen target: SocketAddress) throws {
        fd = socket(target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = target.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw NetctlError.state("cannot serve metrics on \(target): \(String(cString: strerror(code)))")
        }
        pthread_mutex_init(&lock, nil)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = cproc_thread_start(&thread, { raw in
            Unmanaged<MetricsEndpoint>.fromOpaque(raw!).takeRetainedValue().serve()
        }, context)
        guard rc == 0 else {
            Unmanaged<MetricsEndpoint>.fromOpaque(context).release()
            close(fd)
            throw NetctlError.state("cannot start the metrics thread: \(String(cString: strerror(-rc)))")
        }
        pthread_detach(thread)  // it serves for the process's lifetime
    }

    public func update(_ text: String) {
        pthread_mutex_lock(&lock)
        self.text = text
        pthread_mutex_unlock(&lock)
    }

    private func current() -> String {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return text
    }

    fileprivate func serve() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 { if errno == EINTR { continue } else { return } }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))  // a client that never reads
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            let request = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
            let found = request.hasPrefix("GET /metrics ") || request.hasPrefix("GET /metrics?")
            let body = found ? current() : "not found; try /metrics\n"
            let response = "HTTP/1.1 \(found ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\n" +
                "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            _ = Array(response.utf8).withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(client)
        }
    }
}

