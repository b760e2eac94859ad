import CProcess
import FoundationEssentials
import Glibc
import NetCore
import Primitives
import Proxy

/// Traffic figures of one published port: the proxy's counters for its relayed share, and
/// the kernel path's open connections from conntrack.
public struct PortStats: Codable, Equatable, Sendable {
    public var port: PublishedPort
    public var proxy: RouteStats?
    /// Tracked flows to the host port right now (kernel DNAT path).
    public var kernelConnections: Int
}

/// The counters a relaying service writes for `netctl port stats`: one file per service
/// (`proxy-stats.json` for `proxy serve`, `proxy-stats.ENDPOINT.json` for a scoped one),
/// replaced atomically, read by `PortStatistics.read`.
public enum PortStatistics {
    static func path(stateDirectory: String, scope: RelayScope) -> String {
        switch scope {
        case .all: return stateDirectory + "/proxy-stats.json"
        case .endpoint(let name): return stateDirectory + "/proxy-stats.\(name).json"
        case .namespace(let path): return stateDirectory + "/proxy-stats.\(path.split(separator: "/").last ?? "netns").json"
        }
    }

    /// Counters for published ports: the relaying services' (from their files) and the
    /// kernel path's tracked flows.
    public static func read(_ manager: NetworkManager, endpoint name: String? = nil) throws -> [PortStats] {
        let ports = try manager.ports(endpoint: name)
        var proxied: [PublishedPort: RouteStats] = [:]
        for file in listDirectory(manager.stateDirectory) where file.hasPrefix("proxy-stats.") && file.hasSuffix(".json") {
            guard let bytes = readBytes(manager.stateDirectory + "/" + file),
                  let entries = try? JSONDecoder().decode([Entry].self, from: Data(bytes)) else { continue }
            for entry in entries { proxied[entry.port] = (proxied[entry.port] ?? RouteStats()) + entry.stats }
        }
        let flows = (try? manager.kernelFlows(ports)) ?? [:]
        return ports.map { PortStats(port: $0, proxy: proxied[$0], kernelConnections: flows[$0] ?? 0) }
    }

    /// One port's counters in a statistics file.
    struct Entry: Codable {
        var port: PublishedPort
        var stats: RouteStats
    }

    /// Counters in Prometheus' text format.
    static func prometheus(_ all: [(port: PublishedPort, stats: RouteStats)]) -> String {
        func labels(_ p: PublishedPort) -> String {
            "endpoint=\"\(p.endpoint)\",proto=\"\(p.proto.rawValue)\",host_ip=\"\(p.hostIP)\",host_port=\"\(p.hostPort)\""
        }
        var lines = [
            "# HELP netctl_proxy_bytes_total Bytes relayed by the netctl proxy, by direction.",
            "# TYPE netctl_proxy_bytes_total counter",
        ]
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
}

/// Writes a service's statistics file when the counters moved: an idle proxy writes
/// nothing, and a busy one waits 50 times as long as its last write took (encoding
/// thousands of ports is not cheap, and this keeps writing under 2% of one CPU whatever it costs).
final class StatisticsWriter {
    let path: String
    /// Bumped when the served routes change; with the counters' totals, what the file last showed.
    private var generation = 0
    private var written: (generation: Int, totals: RouteStats)?
    /// The last write's buffers are to be given back once the counters rest.
    private var trimDue = false
    /// No write before this (monotonic ns).
    private var nextWrite: UInt64 = 0

    init(path: String) { self.path = path }

    func routesChanged() { generation += 1 }

    func writeIfChanged(totals: RouteStats, entries: () -> [(port: PublishedPort, stats: RouteStats)]) -> Bool {
        let start = monotonicNanoseconds()
        guard start >= nextWrite else { return false }
        let now = (generation: generation, totals: totals)
        guard written.map({ $0.generation != now.generation || $0.totals != now.totals }) ?? true || !fileExists(path) else {
            if trimDue {
                // The encoding's buffers (megabytes for 10,000 ports) are free, but malloc
                // keeps their pages: without this the RSS stays at its high-water mark.
                cproc_release_free_memory()
                trimDue = false
            }
            return false
        }
        let routesChanged = written?.generation != now.generation
        if write(entries()) { written = now }  // else tried again next time
        let end = monotonicNanoseconds()
        nextWrite = end + 50 * (end - start)
        // After a change of routes at once (rare, and it leaves the most garbage); while
        // traffic flows, once it rests: a trim per write would only fault the pages back in.
        if routesChanged { cproc_release_free_memory() } else { trimDue = true }
        return true
    }

    private func write(_ entries: [(port: PublishedPort, stats: RouteStats)]) -> Bool {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let json = try? encoder.encode(entries.map { PortStatistics.Entry(port: $0.port, stats: $0.stats) }) else { return false }
        return (try? writeFile(path, Array(json), mode: 0o644, atomically: true)) != nil
    }

    func remove() { unlink(path) }
}
