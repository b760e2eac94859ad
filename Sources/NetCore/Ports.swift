import Firewall
import Glibc
import Netlink
import Primitives
import Proxy

/// What carries a published port's traffic.
public enum PortBackend: String, Codable, Sendable, CaseIterable {
    /// Kernel DNAT only (nftables map elements).
    case nft
    /// The userland proxy only (`netctl proxy serve`, or a `ProxyService` in a runtime).
    case proxy
    /// The kernel where it can; the proxy for the rest: `[::1]`, and IPv6 to an endpoint
    /// that has only IPv4.
    case auto
}

/// A port published for an endpoint: hostIP:hostPort/proto on the host reaches
/// containerPort on the endpoint's address(es), through kernel DNAT and/or the proxy.
public struct PublishedPort: Codable, Equatable, Hashable, Sendable {
    public var endpoint: String
    public var proto: PortMapping.Proto
    /// "" = every address of both families; "0.0.0.0" or "::" = every address of one family;
    /// anything else one address.
    public var hostIP: String
    public var hostPort: UInt16
    public var containerPort: UInt16
    /// Whether the endpoint has an IPv6 address, so an all-addresses mapping also serves [::].
    public var servesIPv6: Bool
    public var backend: PortBackend

    public init(endpoint: String, proto: PortMapping.Proto, hostIP: String, hostPort: UInt16, containerPort: UInt16,
                servesIPv6: Bool = true, backend: PortBackend = .nft) {
        self.endpoint = endpoint; self.proto = proto; self.hostIP = hostIP
        self.hostPort = hostPort; self.containerPort = containerPort; self.servesIPv6 = servesIPv6
        self.backend = backend
    }

    /// The host addresses it is served on, as printed: `0.0.0.0`, `[::]`, `127.0.0.1`...
    public var servedAddresses: [String] {
        var scope = HostScope(hostIP)
        if scope == .all && !servesIPv6 && backend == .nft { scope = .allIPv4 }  // the proxy serves [::] to IPv4
        return scope.displayAddresses
    }

    /// As `docker port` prints it: `80/tcp -> 0.0.0.0:8080`, one line per address served.
    public var description: String {
        servedAddresses.map { "\(containerPort)/\(proto.rawValue) -> \($0):\(hostPort)" }.joined(separator: "\n")
    }

    /// Whether a `port rm` spec names this port: same container port and protocol, and the
    /// host address and port when the spec gives them.
    func matches(_ spec: PortMapping) -> Bool {
        spec.proto == proto && spec.containerPort == containerPort
            && (spec.hostIP.isEmpty || spec.hostIP == hostIP)
            && (spec.hostPort == 0 || (spec.hostPort...spec.hostPortEnd).contains(hostPort))
    }
}

/// The host addresses a mapping listens on.
enum HostScope: Equatable {
    case all, allIPv4, allIPv6, address(IPAddress)

    init(_ hostIP: String) {
        switch hostIP {
        case "": self = .all
        case "0.0.0.0": self = .allIPv4
        case "::": self = .allIPv6
        default: self = IPAddress(hostIP).map { .address($0) } ?? .all
        }
    }

    var coversIPv4: Bool {
        switch self {
        case .all, .allIPv4: return true
        case .allIPv6: return false
        case .address(let ip): return ip.isIPv4
        }
    }

    var coversIPv6: Bool {
        switch self {
        case .all, .allIPv6: return true
        case .allIPv4: return false
        case .address(let ip): return !ip.isIPv4
        }
    }

    /// Two mappings clash when some host address is in both scopes.
    func overlaps(_ other: HostScope) -> Bool {
        switch (self, other) {
        case (.address(let a), .address(let b)): return a == b
        default: return (coversIPv4 && other.coversIPv4) || (coversIPv6 && other.coversIPv6)
        }
    }

    var displayAddresses: [String] {
        switch self {
        case .all: return ["0.0.0.0", "[::]"]
        case .allIPv4: return ["0.0.0.0"]
        case .allIPv6: return ["[::]"]
        case .address(let ip): return [ip.isIPv4 ? "\(ip)" : "[\(ip)]"]
        }
    }

    /// The addresses a bind probe tries (port 0, set per probe).
    var probeAddresses: [IPAddress] {
        switch self {
        case .all: return [.v4(0), .v6(0)]
        case .allIPv4: return [.v4(0)]
        case .allIPv6: return [.v6(0)]
        case .address(let ip): return [ip]
        }
    }
}

/// Host port choice and the check that no other program holds a port.
enum HostPorts {
    /// The kernel's ephemeral range, where Docker also picks dynamic host ports.
    static func ephemeralRange() -> ClosedRange<UInt16> {
        let fields = (readFile("/proc/sys/net/ipv4/ip_local_port_range") ?? "")
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt16($0) }
        guard fields.count == 2, fields[0] > 0, fields[0] <= fields[1] else { return 32768...60999 }
        return fields[0]...fields[1]
    }

    /// The first port of `range` that `isFree` accepts, starting at `start` and wrapping.
    static func choose(in range: ClosedRange<UInt16>, start: UInt16, isFree: (UInt16) throws -> Bool) rethrows -> UInt16? {
        let count = Int(range.upperBound) - Int(range.lowerBound) + 1
        let offset = Int(start) - Int(range.lowerBound)
        for i in 0..<count {
            let port = UInt16(Int(range.lowerBound) + (offset + i) % count)
            if try isFree(port) { return port }
        }
        return nil
    }

    enum Probe: Equatable { case free, inUse, notLocal }

    /// Tries to bind hostIP:port for the protocol, which is what the published port would
    /// need if a program served it: EADDRINUSE means some program holds it.
    static func probe(_ scope: HostScope, port: UInt16, proto: PortMapping.Proto) -> Probe {
        for address in scope.probeAddresses {
            let ipv6 = !address.isIPv4
            let (type, number): (Int32, Int32) = switch proto {
            case .tcp: (Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_TCP))
            case .udp: (Int32(SOCK_DGRAM.rawValue), Int32(IPPROTO_UDP))
            case .sctp: (Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_SCTP))
            }
            let fd = socket(ipv6 ? AF_INET6 : AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), number)
            guard fd >= 0 else { continue }  // no IPv6 or no SCTP here: nothing can hold it
            defer { close(fd) }
            var one: Int32 = 1
            // TCP: only listeners (not TIME_WAIT leftovers) should count as holders.
            if proto == .tcp { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
            if ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
            let rc = SocketAddress(address, port).withSockaddr { bind(fd, $0, $1) }
            if rc != 0 {
                switch errno {
                case EADDRINUSE: return .inUse
                case EADDRNOTAVAIL: return .notLocal
                default: continue
                }
            }
        }
        return .free
    }
}

extension NetworkManager {
    // MARK: Port publishing

    /// Publishes ports of an endpoint. Host ports left open (0, or a range) are chosen
    /// here: never one another mapping claims or another program holds. All or nothing:
    /// any refusal or kernel failure leaves state and ruleset as they were.
    @discardableResult
    public func publish(endpoint name: String, _ specs: [PortMapping], backend: PortBackend = .nft) throws -> [PublishedPort] {
        guard !specs.isEmpty else { return [] }
        let endpoint = try self.endpoint(named: name)
        guard endpoint.state == .active else { throw NetctlError.endpointNotActive(name) }
        for spec in specs { try checkBackendCanServe(spec, backend: backend, endpoint: endpoint) }

        var kernelChanged = false
        let published: [PublishedPort]
        do {
          published = try store.transaction {
            // Checked again under the lock: a detach in flight must not get a new element.
            guard try store.endpoint(named: name)?.state == .active else { throw NetctlError.endpointNotActive(name) }
            var added: [PublishedPort] = []
            for spec in specs {
                let scope = HostScope(spec.hostIP)
                let display = { (port: UInt16) in "\(port)/\(spec.proto.rawValue)" }
                func holder(_ port: UInt16) throws -> PublishedPort? {
                    // Earlier specs of this call are in the store already (same transaction).
                    try store.ports(proto: spec.proto, hostPort: port).first { HostScope($0.hostIP).overlaps(scope) }
                }
                func probe(_ port: UInt16) throws -> Bool {
                    switch HostPorts.probe(scope, port: port, proto: spec.proto) {
                    case .free: return true
                    case .inUse: return false
                    case .notLocal: throw NetctlError.hostAddressNotLocal(spec.hostIP)
                    }
                }
                let port: UInt16
                if spec.hostPort != 0 && spec.hostPort == spec.hostPortEnd {
                    if let other = try holder(spec.hostPort) {
                        throw NetctlError.portAlreadyPublished(port: display(spec.hostPort), hostIP: other.hostIP, endpoint: other.endpoint)
                    }
                    guard try probe(spec.hostPort) else { throw NetctlError.portInUse(port: display(spec.hostPort), hostIP: spec.hostIP) }
                    port = spec.hostPort
                } else {
                    // A host range is searched in order, like Docker; the ephemeral range from
                    // a random point, so concurrent callers rarely probe the same ports.
                    let range = spec.hostPort == 0 ? HostPorts.ephemeralRange() : spec.hostPort...spec.hostPortEnd
                    let start = spec.hostPort == 0 ? UInt16.random(in: range) : range.lowerBound
                    guard let free = try HostPorts.choose(in: range, start: start, isFree: { try holder($0) == nil && probe($0) }) else {
                        throw NetctlError.noFreeHostPort(range: "\(range.lowerBound)-\(range.upperBound)", proto: spec.proto.rawValue)
                    }
                    port = free
                }
                let p = PublishedPort(endpoint: endpoint.name, proto: spec.proto, hostIP: spec.hostIP, hostPort: port,
                                      containerPort: spec.containerPort, servesIPv6: endpoint.ipv6 != nil, backend: backend)
                try store.insert(p, endpointID: endpoint.id)
                added.append(p)
            }
            try commitFirewall("publishing ports of \(name)") { batch in
                PublishRuleset.add(added.flatMap { NetworkManager.dnat($0, endpoint) }, to: &batch)
            }
            kernelChanged = true
            return added
          }
        } catch {
            // The kernel took the batch but the state COMMIT failed: put the table back as
            // state (unchanged) says.
            if kernelChanged { try? syncFirewall() }
            throw error
        }
        flushConntrack(published)
        for p in published { logger.info("published \(p.description.split(separator: "\n").joined(separator: ", ")) for \(name)") }
        return published
    }

    /// Removes published ports of an endpoint: those matching `specs`, or all of them.
    /// A spec that matches nothing is refused before anything changes.
    @discardableResult
    public func unpublish(endpoint name: String, _ specs: [(text: String, mappings: [PortMapping])] = []) throws -> [PublishedPort] {
        let endpoint = try self.endpoint(named: name)
        var kernelChanged = false
        let removed: [PublishedPort]
        do {
          removed = try store.transaction {
            let current = try store.ports(endpoint: name).map(\.port)
            var chosen = current
            if !specs.isEmpty {
                chosen = []
                for spec in specs {
                    let hits = current.filter { p in spec.mappings.contains { p.matches($0) } }
                    guard !hits.isEmpty else { throw NetctlError.portNotPublished(endpoint: name, spec: spec.text) }
                    chosen += hits.filter { !chosen.contains($0) }
                }
            }
            try removePorts(chosen, of: endpoint)
            kernelChanged = !chosen.isEmpty
            return chosen
          }
        } catch {
            if kernelChanged { try? syncFirewall() }
            throw error
        }
        flushConntrack(removed)
        return removed
    }

    /// Published ports, of every endpoint or of one.
    public func ports(endpoint name: String? = nil) throws -> [PublishedPort] {
        if let name { _ = try endpoint(named: name) }
        return try store.ports(endpoint: name).map(\.port)
    }

    /// Reinstalls the whole netctl table from state in one atomic batch: after
    /// `nft flush ruleset`, a firewalld reload or anything else that wiped or changed it.
    /// Returns the number of mappings installed.
    @discardableResult
    public func reload() throws -> Int {
        try store.transaction {
            let (batch, count) = try rulesetFromState()
            try wrapKernel { try firewall().commit(batch, "reloading the netctl table") }
            return count
        }
    }

    // MARK: Firewall plumbing (callers hold the state transaction)

    /// Deletes port records and their map elements; the caller holds the transaction.
    func removePorts(_ ports: [PublishedPort], of endpoint: Endpoint) throws {
        guard !ports.isEmpty else { return }
        for p in ports { try store.delete(p) }
        try commitFirewall("unpublishing ports of \(endpoint.name)") { batch in
            PublishRuleset.remove(ports.flatMap { NetworkManager.dnat($0, endpoint) }, to: &batch)
        }
    }

    /// Commits a change to the table; when the kernel's table disagrees with state (it was
    /// flushed, or holds leftovers) the whole table is rebuilt from state instead, which
    /// already includes this change.
    func commitFirewall(_ operation: String, _ build: (inout NftBatch) -> Void) throws {
        var batch = NftBatch()
        build(&batch)
        do {
            try firewall().commit(batch, operation)
        } catch let error as NetlinkError where [ENOENT, EEXIST, EBUSY].contains(error.code) {
            logger.notice("the netctl table was not as expected (\(error)); rebuilding it from state")
            try wrapKernel { try firewall().commit(rulesetFromState().batch, "rebuilding the netctl table") }
        } catch {
            throw NetctlError.wrap(error, hint: "the ruleset and state are unchanged")
        }
    }

    func rulesetFromState() throws -> (batch: NftBatch, mappings: Int) {
        let networks = try store.networks().map(NetworkManager.bridgeNetwork)
        let mappings = try store.ports().flatMap { NetworkManager.dnat($0.port, $0.endpoint) }
        return (PublishRuleset.rebuild(networks: networks, mappings: mappings), mappings.count)
    }

    /// Rebuilds the table after a network change (rules are per network); `gc` and `reload`
    /// also come here.
    func syncFirewall() throws {
        try store.transaction {
            try wrapKernel { try firewall().commit(rulesetFromState().batch, "installing the netctl table") }
        }
    }

    static func bridgeNetwork(_ n: Network) -> BridgeNetwork {
        BridgeNetwork(bridge: n.bridge, subnet: n.ipv4Subnet, subnet6: n.ipv6Subnet)
    }

    /// The DNAT elements a published port needs: one per host address family it covers
    /// that the endpoint has an address in.
    static func dnat(_ p: PublishedPort, _ e: Endpoint) -> [DNATMapping] {
        guard p.backend != .proxy else { return [] }
        let proto: DNATMapping.Proto = switch p.proto { case .tcp: .tcp; case .udp: .udp; case .sctp: .sctp }
        let scope = HostScope(p.hostIP)
        if case .address(let ip) = scope, ip == NetworkManager.ipv6Loopback { return [] }  // (auto: the proxy's)
        var result: [DNATMapping] = []
        let hostIP: IPAddress? = if case .address(let ip) = scope { ip } else { nil }
        if scope.coversIPv4 {
            result.append(DNATMapping(hostIP: hostIP, proto: proto, hostPort: p.hostPort,
                                      containerIP: e.ipv4Interface.address, containerPort: p.containerPort))
        }
        if scope.coversIPv6, let v6 = e.ipv6Interface?.address {
            result.append(DNATMapping(hostIP: hostIP, proto: proto, hostPort: p.hostPort, containerIP: v6, containerPort: p.containerPort))
        }
        return result
    }

    /// What the chosen backend can't do is refused up front.
    private func checkBackendCanServe(_ spec: PortMapping, backend: PortBackend, endpoint: Endpoint) throws {
        let text = spec.hostIP.isEmpty ? "\(spec.containerPort)/\(spec.proto.rawValue)" : "\(spec.hostIP) -> \(spec.containerPort)/\(spec.proto.rawValue)"
        switch backend {
        case .nft:
            if case .address(let ip) = HostScope(spec.hostIP), ip == NetworkManager.ipv6Loopback {
                throw NetctlError.needsProxy(spec: text, reason: "the kernel does not DNAT from ::1; use --backend auto (or proxy), or publish on 127.0.0.1")
            }
            if spec.hostIP != "" && HostScope(spec.hostIP).coversIPv6 && endpoint.ipv6 == nil {
                throw NetctlError.needsProxy(spec: text, reason: "endpoint \(endpoint.name) has no IPv6 address; use --backend auto (or proxy), or give its network a --subnet6")
            }
        case .proxy, .auto:
            // Would the proxy carry part of it? (Asked as TCP: SCTP itself has no proxy route.)
            let proxyShare = NetworkManager.proxyRoutes(
                PublishedPort(endpoint: endpoint.name, proto: .tcp, hostIP: spec.hostIP, hostPort: 1, containerPort: 1, backend: backend), endpoint)
            if spec.proto == .sctp && !proxyShare.isEmpty {
                throw NetctlError.needsProxy(spec: text, reason: "the proxy relays TCP and UDP only; publish SCTP with --backend nft")
            }
        }
    }

    static let ipv6Loopback = IPAddress("::1")!

    static func isLoopback(_ ip: IPAddress) -> Bool {
        ip.isIPv4 ? ip.bytes[0] == 127 : ip == ipv6Loopback
    }

    /// This host's addresses, on every interface.
    func localAddresses() throws -> Set<IPAddress> { Set(try host.addresses().map(\.address)) }

    /// Whether a tracked flow was addressed to this host (one of its addresses, or loopback):
    /// a client of a published port, not a container's own flow out.
    func isAddressedToHost(_ entry: ConntrackClient.Entry, local: Set<IPAddress>) -> Bool {
        guard let destination = entry.destination else { return false }
        return local.contains(destination) || NetworkManager.isLoopback(destination)
    }

    /// Drops UDP conntrack entries for the host ports, so a client that never pauses is
    /// not left pinned to the old target. Best effort: the mapping change itself stands.
    func flushConntrack(_ ports: [PublishedPort]) {
        let udp = ports.filter { $0.proto == .udp }
        guard !udp.isEmpty else { return }
        do {
            let client = try conntrack()
            let entries = try client.entries()
            // Only flows addressed to this host: a container's outbound flow to some server's
            // port 53 or 443 is not a client of the mapping and must survive.
            let local = try localAddresses()
            let stale = entries.filter { entry in
                guard entry.proto == UInt8(IPPROTO_UDP), isAddressedToHost(entry, local: local),
                      let destination = entry.destination else { return false }
                return udp.contains { p in
                    guard p.hostPort == entry.destinationPort else { return false }
                    if case .address(let ip) = HostScope(p.hostIP) { return destination == ip }
                    return true
                }
            }
            let removed = try client.flush(stale)
            if removed > 0 { logger.debug("flushed \(removed) UDP conntrack entries") }
        } catch {
            logger.warning("could not flush UDP conntrack entries: \(error)")
        }
    }
}
