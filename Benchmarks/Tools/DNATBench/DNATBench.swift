import Firewall
import Foundation
import Glibc
import Logging
import NetCore
import Netlink
import Primitives

/// The DNAT path, measured: mapping add/remove latency as the table grows, and traffic
/// (new connections/s with latency percentiles, single-stream throughput) through 1 and
/// 10,000 mappings, next to the direct path and next to the one-rule-per-port layout that
/// Docker, netavark and CNI portmap use, all in one run. Run by tools/bench-dnat, which
/// puts it in a private network + mount namespace.
@main
struct DNATBench {
    static func main() throws {
        guard ProcessInfo.processInfo.environment["NETCTL_BENCH_PRIVATE"] == "1" else {
            writeStandardError("dnat-bench: run it through tools/bench-dnat (it needs a private network namespace)\n")
            exit(2)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .critical
            return handler
        }
        let arguments = CommandLine.arguments
        let quick = arguments.contains("--quick")
        let json = arguments.firstIndex(of: "--json").map { arguments[$0 + 1] }
        let bench = try Bench(quick: quick)
        defer { bench.cleanUp() }
        let latency = try bench.latencies()
        let traffic = try bench.traffic()
        Report.print(latency: latency, traffic: traffic, repeats: bench.repeats)
        if let json { try Report.json(latency: latency, traffic: traffic).write(toFile: json, atomically: true, encoding: .utf8) }
    }
}

/// The world: one network with a server container and a filler container that holds the
/// thousands of other mappings, and a client namespace routed to the host like another host.
final class Bench {
    static let hostIP = "192.0.2.1", clientIP = "192.0.2.2", serverIP = "10.77.0.2"
    let quick: Bool
    /// Samples per latency figure.
    var repeats: Int { quick ? 15 : 41 }
    let directory: String
    let manager: NetworkManager
    let nft: NftClient
    let client: NetworkNamespace
    let servers: [Thread] = []
    private var listeners: [Int32] = []

    init(quick: Bool) throws {
        self.quick = quick
        var template = Array("/tmp/netctl-dnat-bench-XXXXXX".utf8CString)
        directory = String(cString: mkdtemp(&template)!)
        manager = try NetworkManager(stateDirectory: directory)
        nft = try NftClient()
        try manager.createNetwork(NetworkSpec(name: "bench", subnet: "10.77.0.0/16"))
        let server = try manager.attach(AttachRequest(network: "bench", target: .new("srv"), ip: Bench.serverIP, name: "srv"))
        _ = try manager.attach(AttachRequest(network: "bench", target: .new("filler"), name: "filler"))

        // The client: a namespace behind a veth pair, routed through the host.
        client = try NetworkNamespace.create(at: directory + "/client")
        let host = try RouteNetlink()
        try host.perform(.createVeth(VethSpec(name: "benchup0", peerName: "eth0", peerNamespaceFD: client.fd)))
        let uplink = try host.link(named: "benchup0")!
        try host.perform([.setLink(index: uplink.index, LinkChange(up: true)),
                          .addAddress(InterfaceAddress(index: uplink.index, address: IPAddress(Bench.hostIP)!, prefixLength: 24))])
        let inside = try RouteNetlink.open(in: client)
        let eth0 = try inside.link(named: "eth0")!, lo = try inside.link(named: "lo")!
        try inside.perform([.setLink(index: lo.index, LinkChange(up: true)), .setLink(index: eth0.index, LinkChange(up: true)),
                            .addAddress(InterfaceAddress(index: eth0.index, address: IPAddress(Bench.clientIP)!, prefixLength: 24)),
                            .addRoute(.defaultRoute(via: IPAddress(Bench.hostIP)!))])
        // Many short connections from one client address: let TIME_WAIT ports be reused.
        try client.run { try writeSysctl("net/ipv4/tcp_tw_reuse", "1") }

        // Servers in the container: :80 answers each connection with one byte and closes;
        // :81 swallows a bulk stream.
        let namespace = try NetworkNamespace(path: server.netns)
        let short = try namespace.run { try Sockets.listen(port: 80) }
        let bulk = try namespace.run { try Sockets.listen(port: 81) }
        listeners = [short, bulk]
        Thread.detachNewThread { Sockets.serveShort(short) }
        Thread.detachNewThread { Sockets.serveBulk(bulk) }
    }

    func cleanUp() {
        for fd in listeners { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        _ = try? manager.removeNetwork(named: "bench", force: true)
        _ = try? nft.commit({ var b = NftBatch(family: PerPortRules.ipv4); b.addTable(PerPortRules.table); b.deleteTable(PerPortRules.table); return b }(), "removing the per-port table")
        _ = try? RouteNetlink().perform(.deleteLink(name: "benchup0").ignoring(ENODEV))
        try? NetworkNamespace.remove(at: directory + "/client")
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Add/remove latency

    struct Latency: Codable {
        var existing: Int
        var publishMs: Double, unpublishMs: Double
        var elementAddMs: Double, elementRemoveMs: Double
        var ruleAppendMs: Double
    }

    /// Latency of one more mapping with 0, 999 and 9,999 already in place: through the
    /// library (state + table) and as the bare kernel operation, and appending one rule to a
    /// chain of as many per-port rules.
    func latencies() throws -> [Latency] {
        var results: [Latency] = []
        var filled = 0
        let perPort = PerPortRules(nft: nft)
        try perPort.create()
        for existing in [0, 999, 9999] {
            // Grow the filler's mappings (host ports 20000...) and the per-port chain.
            while filled < existing {
                let count = min(1000, existing - filled)
                try manager.publish(endpoint: "filler", (0..<count).map {
                    PortMapping(hostPort: UInt16(20000 + filled + $0), containerPort: 80)
                })
                try perPort.append(ports: (0..<count).map { UInt16(20000 + filled + $0) })
                filled += count
            }
            var publish: [Double] = [], unpublish: [Double] = [], add: [Double] = [], remove: [Double] = [], rule: [Double] = []
            let one = DNATMapping(hostIP: nil, proto: .tcp, hostPort: 45000, containerIP: IPAddress(Bench.serverIP)!, containerPort: 80)
            for _ in 0..<repeats {
                publish.append(try time { try manager.publish(endpoint: "srv", [PortMapping(hostPort: 40000, containerPort: 80)]) })
                unpublish.append(try time { try manager.unpublish(endpoint: "srv") })
                var batch = NftBatch()
                PublishRuleset.add([one], to: &batch)
                add.append(try time { try nft.commit(batch, "adding one element") })
                batch = NftBatch()
                PublishRuleset.remove([one], to: &batch)
                remove.append(try time { try nft.commit(batch, "removing one element") })
            }
            // Apart from the loop above: a 10,000-rule commit leaves the kernel work (and cold
            // caches) that would otherwise be charged to the next publish.
            for i in 0..<repeats { rule.append(try time { try perPort.append(ports: [UInt16(30000 + existing + i)]) }) }
            results.append(Latency(existing: existing, publishMs: median(publish), unpublishMs: median(unpublish),
                                   elementAddMs: median(add), elementRemoveMs: median(remove), ruleAppendMs: median(rule)))
        }
        try manager.unpublish(endpoint: "filler")
        try perPort.drop()
        return results
    }

    // MARK: Traffic

    struct Traffic: Codable {
        var path: String
        var phase: String
        /// Medians over the rounds, and the median of each round's ratio to the direct path.
        var cps: Double
        var p50Ms: Double, p99Ms: Double
        var gbps: Double
        var cpsRatio: Double, p99Ratio: Double, gbpsRatio: Double
    }

    /// One phase: the direct path and the DNAT path, alternated round by round so drift
    /// on this shared machine hits both alike; each ratio is taken within a round.
    func phase(_ name: String, path: String, address: String, short: UInt16, bulk: UInt16) throws -> [Traffic] {
        let rounds = quick ? 4 : 14, connections = quick ? 300 : 400, seconds = quick ? 0.3 : 0.5
        // Every phase starts from an empty conntrack table: thousands of TIME_WAIT entries
        // left by the phase before would otherwise make its successors slower.
        let conntrack = try ConntrackClient()
        try conntrack.flush(conntrack.entries())
        struct Round { var cps: Double; var samples: [Double]; var gbps: Double }
        var direct: [Round] = [], mapped: [Round] = []
        for round in 0..<rounds {
            // ABBA: which path goes first alternates, so a trend over the phase cancels out.
            let order = [(Bench.serverIP, UInt16(80), UInt16(81), 0), (address, short, bulk, 1)]
            for (target, port, bulkPort, into) in round % 2 == 0 ? order : order.reversed() {
                let (cps, samples) = try client.run { try Sockets.connectionRate(to: target, port: port, count: connections, seconds: 5) }
                let gbps = try client.run { try Sockets.throughput(to: target, port: bulkPort, seconds: seconds) }
                if into == 0 { direct.append(Round(cps: cps, samples: samples, gbps: gbps)) } else { mapped.append(Round(cps: cps, samples: samples, gbps: gbps)) }
            }
        }
        func summary(_ pathName: String, _ rs: [Round]) -> Traffic {
            let all = rs.flatMap(\.samples)
            let p99 = { (r: Round) in percentile(r.samples, 0.99) }
            return Traffic(path: pathName, phase: name, cps: median(rs.map(\.cps)),
                           p50Ms: percentile(all, 0.5), p99Ms: percentile(all, 0.99), gbps: median(rs.map(\.gbps)),
                           cpsRatio: median(zip(rs, direct).map { $0.cps / $1.cps }),
                           p99Ratio: median(zip(rs, direct).map { p99($0) / p99($1) }),
                           gbpsRatio: median(zip(rs, direct).map { $0.gbps / $1.gbps }))
        }
        return [summary("direct", direct), summary(path, mapped)]
    }

    func traffic() throws -> [Traffic] {
        var results: [Traffic] = []
        // One mapping (two ports: the short and the bulk server).
        try manager.publish(endpoint: "srv", [PortMapping(hostPort: 30000, containerPort: 80), PortMapping(hostPort: 30001, containerPort: 81)])
        results += try phase("1 mapping", path: "nft", address: Bench.hostIP, short: 30000, bulk: 30001)
        // 10,000 mappings in the maps.
        var filled = 0
        while filled < 9998 {
            let count = min(1000, 9998 - filled)
            try manager.publish(endpoint: "filler", (0..<count).map { PortMapping(hostPort: UInt16(20000 + filled + $0), containerPort: 80) })
            filled += count
        }
        results += try phase("10,000 mappings", path: "nft", address: Bench.hostIP, short: 30000, bulk: 30001)
        try manager.unpublish(endpoint: "filler")
        try manager.unpublish(endpoint: "srv")
        // One DNAT rule per port in a linear chain, the mapped ports last (a new connection
        // walks every rule before them).
        let perPort = PerPortRules(nft: nft)
        try perPort.create()
        try perPort.append(ports: [30000, 30001], to: Bench.serverIP, containerPorts: [80, 81])
        results += try phase("1 rule", path: "rule-per-port", address: Bench.hostIP, short: 30000, bulk: 30001)
        try perPort.drop()
        try perPort.create()
        try perPort.append(ports: (0..<9998).map { UInt16(20000 + $0) })
        try perPort.append(ports: [30000, 30001], to: Bench.serverIP, containerPorts: [80, 81])
        results += try phase("10,000 rules", path: "rule-per-port", address: Bench.hostIP, short: 30000, bulk: 30001)
        try perPort.drop()
        return results
    }
}

/// The layout Docker, netavark and CNI portmap use, built over the same netlink path as
/// ours so only the layout differs: `tcp dport P dnat to C:port`, one rule per port, in a
/// chain that a new connection to a local address walks top to bottom.
struct PerPortRules {
    static let table = "perport"
    // Kernel constants (CNftables is internal to the library): NFPROTO_IPV4, NF_INET_PRE_ROUTING,
    // NFT_META_L4PROTO, NFT_CMP_EQ, NFT_PAYLOAD_TRANSPORT_HEADER.
    static let ipv4: UInt16 = 2, prerouting: UInt32 = 0, l4proto: UInt32 = 16, eq: UInt32 = 0, transport: UInt32 = 2
    let nft: NftClient

    func create() throws {
        var batch = NftBatch(family: PerPortRules.ipv4)
        batch.addTable(PerPortRules.table)
        batch.addChain(table: PerPortRules.table, name: "prerouting", hook: ("nat", PerPortRules.prerouting, -110))
        batch.addChain(table: PerPortRules.table, name: "ports")
        // Like Docker's `-m addrtype --dst-type LOCAL -j DOCKER`: only traffic to a local
        // address walks the per-port rules, so the direct path doesn't pay for them.
        batch.addRule(table: PerPortRules.table, chain: "prerouting", [
            .fibDestinationType(into: 1),
            .compare(register: 1, op: PerPortRules.eq, data: [2, 0, 0, 0] /* RTN_LOCAL */),
            .verdict(-3 /* NFT_JUMP */, chain: "ports"),
        ])
        try nft.commit(batch, "creating the per-port table")
    }

    func drop() throws {
        var batch = NftBatch(family: PerPortRules.ipv4)
        batch.deleteTable(PerPortRules.table)
        try nft.commit(batch, "deleting the per-port table")
    }

    /// Appends one rule per port (to 10.77.0.3:80, the filler, unless told otherwise).
    func append(ports: [UInt16], to target: String = "10.77.0.3", containerPorts: [UInt16]? = nil) throws {
        for start in stride(from: 0, to: ports.count, by: 1000) {
            var batch = NftBatch(family: PerPortRules.ipv4)
            for i in start..<min(start + 1000, ports.count) {
                let port: UInt16 = ports[i], containerPort: UInt16 = containerPorts?[i] ?? 80
                let portBytes: [UInt8] = [UInt8(port >> 8), UInt8(port & 0xff)]
                let containerPortBytes: [UInt8] = [UInt8(containerPort >> 8), UInt8(containerPort & 0xff)]
                let targetBytes: [UInt8] = IPAddress(target)!.bytes
                let rule: [NftExpression] = [
                    .meta(key: PerPortRules.l4proto, into: 1),
                    .compare(register: 1, op: PerPortRules.eq, data: [6]),
                    .payload(base: PerPortRules.transport, offset: 2, length: 2, into: 1),
                    .compare(register: 1, op: PerPortRules.eq, data: portBytes),
                    .immediateData(targetBytes, into: 1),
                    .immediateData(containerPortBytes, into: 2),
                    .dnat(family: UInt32(PerPortRules.ipv4), addressRegister: 1, portRegister: 2),
                ]
                batch.addRule(table: PerPortRules.table, chain: "ports", rule)
            }
            try nft.commit(batch, "appending per-port rules")
        }
    }
}

func time(_ body: () throws -> Void) rethrows -> Double {
    var start = timespec(), end = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    try body()
    clock_gettime(CLOCK_MONOTONIC, &end)
    return Double(end.tv_sec - start.tv_sec) * 1e3 + Double(end.tv_nsec - start.tv_nsec) / 1e6
}

func median(_ values: [Double]) -> Double { percentile(values, 0.5) }

func percentile(_ values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
}

func writeSysctl(_ name: String, _ value: String) throws {
    guard let file = fopen("/proc/sys/" + name, "w") else { throw BenchError("cannot open /proc/sys/\(name)") }
    fputs(value, file)
    fclose(file)
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
