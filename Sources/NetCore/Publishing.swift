import Firewall
import Glibc
import Netlink
import Primitives

/// Published ports and netctl's nftables table (`inet netctl`), where each mapping is a map
/// element. Every change to ports is one state transaction with one kernel batch in it, so
/// state and table move together; the table is rebuilt from state whenever it is not what
/// state says.
final class PortPublisher {
    private let context: ManagerContext
    private var store: StateStore { context.store }

    init(_ context: ManagerContext) {
        self.context = context
    }

    /// Publishes ports of an endpoint. Host ports left open (0, or a range) are chosen
    /// here: never one another mapping claims or another program holds. All or nothing:
    /// any refusal or kernel failure leaves state and ruleset as they were. `probe` false:
    /// the caller reserves host ports itself (Podman's conmon holds a socket on each), so a
    /// bound port is no reason to refuse.
    @discardableResult
    func publish(endpoint name: String, _ specs: [PortMapping], backend: PortBackend, probe probing: Bool = true) throws -> [PublishedPort] {
        guard !specs.isEmpty else { return [] }
        guard let endpoint = try store.endpoint(named: name) else { throw NetctlError.endpointNotFound(name) }
        guard endpoint.state == .active else { throw NetctlError.endpointNotActive(name) }
        try check(specs, backend: backend, on: endpoint)

        var kernelChanged = false
        let published: [PublishedPort]
        do {
          published = try store.transaction {
            // Checked again under the lock: a detach in flight must not get a new element.
            guard try store.endpoint(named: name)?.state == .active else { throw NetctlError.endpointNotActive(name) }
            let added = try reserve(specs, backend: backend, probe: probing, for: endpoint)
            try install(added, on: endpoint)
            kernelChanged = true
            return added
          }
        } catch {
            // The kernel took the batch but the state COMMIT failed: put the table back as
            // state (unchanged) says.
            if kernelChanged { _ = try? syncTable() }
            throw error
        }
        announce(published, for: name)
        return published
    }

    /// What can be refused before any state changes: a port of an internal network's
    /// endpoint, a mapping the backend cannot serve.
    func check(_ specs: [PortMapping], backend: PortBackend, on endpoint: Endpoint) throws {
        guard !specs.isEmpty else { return }
        if try store.network(named: endpoint.network)?.internal == true {
            throw NetctlError.publishOnInternalNetwork(endpoint: endpoint.name, network: endpoint.network)
        }
        for spec in specs { try checkBackendCanServe(spec, backend: backend, endpoint: endpoint) }
    }

    /// Records ports of an endpoint, each with its host port chosen: from here on no other
    /// mapping can take them (the caller holds the state transaction; an attach records them
    /// with the endpoint, so a burst of attaches is refused for a taken port before it takes
    /// an address). The kernel learns of them with `install`.
    func reserve(_ specs: [PortMapping], backend: PortBackend, probe probing: Bool, for endpoint: Endpoint) throws -> [PublishedPort] {
        var added: [PublishedPort] = []
        for spec in specs {
            let p = PublishedPort(endpoint: endpoint.name, proto: spec.proto, hostIP: spec.hostIP,
                                  hostPort: try chooseHostPort(spec, probing: probing), containerPort: spec.containerPort,
                                  servesIPv6: endpoint.ipv6 != nil, backend: backend)
            try store.insert(p, endpointID: endpoint.id)  // the next spec's choice sees it
            added.append(p)
        }
        return added
    }

    /// Refuses specs whose host ports mappings already hold (the caller holds the state
    /// transaction): run before an address is leased, so a taken port is what a refusal names.
    func requireFree(_ specs: [PortMapping]) throws {
        for spec in specs { _ = try chooseHostPort(spec, probing: false) }
    }

    /// The kernel's share of recorded ports, in one batch (the caller holds the transaction).
    func install(_ ports: [PublishedPort], on endpoint: Endpoint) throws {
        guard !ports.isEmpty else { return }
        try commit("publishing ports of \(endpoint.name)") { batch in
            PublishRuleset.add(ports.flatMap { PortPlan($0, on: endpoint).kernel }, to: &batch)
        }
    }

    /// After the state commit: conntrack of the host ports flushed, and a log line.
    func announce(_ published: [PublishedPort], for name: String) {
        flushConntrack(published)
        for p in published {
            context.logger.info("published \(p.description.split(separator: "\n").joined(separator: ", ")) for \(name)")
        }
    }

    /// The host port a spec gets (the caller holds the state transaction): its fixed port if
    /// no mapping claims it and no program holds it, else the first free one of its range
    /// (a random start in the kernel's ephemeral range when it names none).
    private func chooseHostPort(_ spec: PortMapping, probing: Bool) throws -> UInt16 {
        let scope = HostScope(spec.hostIP)
        let display = { (port: UInt16) in "\(port)/\(spec.proto.rawValue)" }
        func holder(_ port: UInt16) throws -> PublishedPort? {
            try store.ports(proto: spec.proto, hostPort: port).first { HostScope($0.hostIP).overlaps(scope) }
        }
        func probe(_ port: UInt16) throws -> Bool {
            guard probing else { return true }
            switch HostPorts.probe(scope, port: port, proto: spec.proto) {
            case .free: return true
            case .inUse: return false
            case .notLocal: throw NetctlError.hostAddressNotLocal(spec.hostIP)
            }
        }
        if spec.hostPort != 0 && spec.hostPort == spec.hostPortEnd {
            if let other = try holder(spec.hostPort) {
                throw NetctlError.portAlreadyPublished(port: display(spec.hostPort), hostIP: other.hostIP, endpoint: other.endpoint)
            }
            guard try probe(spec.hostPort) else { throw NetctlError.portInUse(port: display(spec.hostPort), hostIP: spec.hostIP) }
            return spec.hostPort
        }
        // A host range is searched in order, like Docker; the ephemeral range from a random
        // point, so concurrent callers rarely probe the same ports.
        let range = spec.hostPort == 0 ? HostPorts.ephemeralRange() : spec.hostPort...spec.hostPortEnd
        let start = spec.hostPort == 0 ? UInt16.random(in: range) : range.lowerBound
        guard let free = try HostPorts.choose(in: range, start: start, isFree: { try holder($0) == nil && probe($0) }) else {
            throw NetctlError.noFreeHostPort(range: "\(range.lowerBound)-\(range.upperBound)", proto: spec.proto.rawValue)
        }
        return free
    }

    /// What the chosen backend can't do is refused up front.
    private func checkBackendCanServe(_ spec: PortMapping, backend: PortBackend, endpoint: Endpoint) throws {
        let text = spec.hostIP.isEmpty ? "\(spec.containerPort)/\(spec.proto.rawValue)" : "\(spec.hostIP) -> \(spec.containerPort)/\(spec.proto.rawValue)"
        let scope = HostScope(spec.hostIP)
        switch backend {
        case .nft:
            if case .address(let ip) = scope, ip == PortPlan.ipv6Loopback {
                throw NetctlError.needsProxy(spec: text, need: .ipv6Loopback)
            }
            if spec.hostIP != "" && scope.coversIPv6 && endpoint.ipv6 == nil {
                throw NetctlError.needsProxy(spec: text, need: .noIPv6(endpoint: endpoint.name))
            }
        case .proxy, .auto:
            let relays = PortPlan.shares(scope, backend: backend, v4: endpoint.ipv4Interface.address,
                                         v6: endpoint.ipv6Interface?.address).relays
            if spec.proto == .sctp && !relays.isEmpty {
                throw NetctlError.needsProxy(spec: text, need: .sctpNotRelayed)
            }
        }
    }

    /// Removes published ports of an endpoint: those matching `specs`, or all of them.
    /// A spec that matches nothing is refused before anything changes.
    func unpublish(endpoint: Endpoint, _ specs: [(text: String, mappings: [PortMapping])]) throws -> [PublishedPort] {
        var kernelChanged = false
        let removed: [PublishedPort]
        do {
          removed = try store.transaction {
            let current = try store.ports(endpoint: endpoint.name).map(\.port)
            var chosen = current
            if !specs.isEmpty {
                chosen = []
                for spec in specs {
                    let hits = current.filter { p in spec.mappings.contains { p.matches($0) } }
                    guard !hits.isEmpty else { throw NetctlError.portNotPublished(endpoint: endpoint.name, spec: spec.text) }
                    chosen += hits.filter { !chosen.contains($0) }
                }
            }
            try removePorts(chosen, of: endpoint)
            kernelChanged = !chosen.isEmpty
            return chosen
          }
        } catch {
            if kernelChanged { _ = try? syncTable() }
            throw error
        }
        flushConntrack(removed)
        return removed
    }

    /// Moves all of an endpoint's published ports to another endpoint (another network of
    /// the same container, when the one holding its default route changes): the same host
    /// ports, now to the other endpoint's addresses, in one transaction and one kernel batch.
    func move(from source: Endpoint, to target: Endpoint) throws -> [PublishedPort] {
        var kernelChanged = false
        let moved: [PublishedPort]
        do {
          moved = try store.transaction {
            guard try store.endpoint(named: target.name)?.state == .active else { throw NetctlError.endpointNotActive(target.name) }
            if try store.network(named: target.network)?.internal == true {
                throw NetctlError.publishOnInternalNetwork(endpoint: target.name, network: target.network)
            }
            let old = try store.ports(endpoint: source.name).map(\.port)
            guard !old.isEmpty else { return [] }
            let new = old.map { p in
                PublishedPort(endpoint: target.name, proto: p.proto, hostIP: p.hostIP, hostPort: p.hostPort,
                              containerPort: p.containerPort, servesIPv6: target.ipv6 != nil, backend: p.backend)
            }
            for p in old { try store.delete(p) }
            for p in new { try store.insert(p, endpointID: target.id) }
            try commit("moving ports of \(source.name) to \(target.name)") { batch in
                PublishRuleset.remove(old.flatMap { PortPlan($0, on: source).kernel }, to: &batch)
                PublishRuleset.add(new.flatMap { PortPlan($0, on: target).kernel }, to: &batch)
            }
            kernelChanged = true
            return new
          }
        } catch {
            if kernelChanged { _ = try? syncTable() }
            throw error
        }
        flushConntrack(moved)
        return moved
    }

    func ports(endpoint name: String? = nil) throws -> [PublishedPort] {
        try store.ports(endpoint: name).map(\.port)
    }

    /// Every published port with its endpoint and plan.
    /// Ports of active endpoints: an attach in flight has its ports recorded (reserved) but
    /// not in the kernel until it is active.
    func plans() throws -> [(port: PublishedPort, endpoint: Endpoint, plan: PortPlan)] {
        try store.ports().filter { $0.endpoint.state == .active }.map { ($0.port, $0.endpoint, PortPlan($0.port, on: $0.endpoint)) }
    }

    // MARK: The table (callers of `removePorts` and `commit` hold the state transaction)

    /// Deletes port records and their map elements.
    func removePorts(_ ports: [PublishedPort], of endpoint: Endpoint) throws {
        guard !ports.isEmpty else { return }
        for p in ports { try store.delete(p) }
        try commit("unpublishing ports of \(endpoint.name)") { batch in
            PublishRuleset.remove(ports.flatMap { PortPlan($0, on: endpoint).kernel }, to: &batch)
        }
    }

    /// Commits a change to the table; when the kernel's table disagrees with state (it was
    /// flushed, or holds leftovers) the whole table is rebuilt from state instead, which
    /// already includes this change.
    private func commit(_ operation: String, _ build: (inout NftBatch) -> Void) throws {
        var batch = NftBatch()
        build(&batch)
        do {
            try context.firewall().commit(batch, operation)
        } catch let error as NetlinkError where [ENOENT, EEXIST, EBUSY].contains(error.code) {
            context.logger.notice("the netctl table was not as expected (\(error)); rebuilding it from state")
            try context.wrapKernel { try context.firewall().commit(tableFromState().batch, "rebuilding the netctl table") }
        } catch {
            throw NetctlError.wrap(error, unchanged: true)
        }
    }

    private func tableFromState() throws -> (batch: NftBatch, mappings: [DNATMapping]) {
        let networks = try store.networks().map {
            BridgeNetwork(bridge: $0.bridge, subnet: $0.ipv4Subnet, subnet6: $0.ipv6Subnet, internal: $0.internal,
                          isolated: $0.isolated, gateways: $0.gatewayOnBridge ? [$0.ipv4Gateway] + [$0.ipv6Gateway].compactMap { $0 } : [])
        }
        let mappings = try plans().flatMap(\.plan.kernel)
        return (PublishRuleset.rebuild(networks: networks, mappings: mappings), mappings)
    }

    /// Installs the whole table from state in one atomic batch (after a network change,
    /// which changes per-network rules; `reload` and `gc` come here too). Returns the number
    /// of map elements.
    @discardableResult
    func syncTable() throws -> Int {
        try store.requireTrusted()
        return try store.transaction {
            let (batch, mappings) = try tableFromState()
            try context.wrapKernel { try context.firewall().commit(batch, "installing the netctl table") }
            return mappings.count
        }
    }

    func reload() throws -> Int { try syncTable() }

    /// Puts the table back if it is not what state says (a chain short of its rules, a map
    /// short of, or beyond, its elements, the table gone), in one batch; whether it did.
    /// Read under the state lock, so a change in flight is not mistaken for damage.
    func repairTable() throws -> Bool {
        try store.requireTrusted()
        return try store.transaction {
            guard try !store.networks().isEmpty else { return false }
            let (batch, mappings) = try tableFromState()
            let intact = try context.wrapKernel { () -> Bool in
                let firewall = try context.firewall()
                for (chain, count) in batch.ruleCounts where try firewall.ruleCount(chain: chain) != count { return false }
                guard let kernel = try firewall.mappings() else { return false }
                return kernel.count == mappings.count && Set(kernel) == Set(mappings)
            }
            guard !intact else { return false }
            try context.wrapKernel { try context.firewall().commit(batch, "repairing the netctl table") }
            return true
        }
    }

    /// Installs the guard table owned by a new socket (see `PublishRuleset.ownedGuard`);
    /// it lasts while the returned client does.
    func ownedGuard() throws -> NftClient {
        let client = try context.wrapKernel { try NftClient() }
        try context.wrapKernel { try client.commit(PublishRuleset.ownedGuard(), "installing netctl's owned guard") }
        return client
    }

    /// Makes sure the guard chain (drops traffic from the wire to 127/8) is in force,
    /// rebuilding the table if a reboot or a flush took it: `route_localnet` may only be on
    /// with it.
    func ensureGuard() throws {
        if try context.wrapKernel({ try context.firewall().ruleCount(chain: PublishRuleset.guardChain) }) == 0 { try syncTable() }
    }

    /// Rebuilds the table from state and says which map elements the kernel held that state
    /// doesn't know, and which it lacked. Both are read under the state lock, so a publish
    /// in flight is not mistaken for a leftover. Always rebuilt (one atomic batch): rules
    /// someone deleted or added by hand come back as state says, not only the elements.
    func rebuildTable() throws -> (removed: [String], restored: [String]) {
        try store.requireTrusted()
        return try store.transaction {
            let (batch, mappings) = try tableFromState()
            let kernel = try context.wrapKernel { try context.firewall().mappings() }
            if try kernel == nil && mappings.isEmpty && store.networks().isEmpty { return ([], []) }
            let expected = Set(mappings), present = Set(kernel ?? [])
            try context.wrapKernel { try context.firewall().commit(batch, "rebuilding the netctl table") }
            return (present.subtracting(expected).map(\.description).sorted(), expected.subtracting(present).map(\.description).sorted())
        }
    }

    // MARK: Conntrack

    /// This host's addresses, on every interface.
    private func localAddresses() throws -> Set<IPAddress> { Set(try context.host.addresses().map(\.address)) }

    /// Whether a tracked flow was addressed to this host (one of its addresses, or loopback):
    /// a client of a published port, not a container's own flow out.
    private static func isAddressedToHost(_ entry: ConntrackClient.Entry, local: Set<IPAddress>) -> Bool {
        guard let destination = entry.destination else { return false }
        return local.contains(destination) || (destination.isIPv4 ? destination.bytes[0] == 127 : destination == PortPlan.ipv6Loopback)
    }

    /// Tracked flows to each port's host port (its kernel share), from conntrack.
    func kernelFlows(_ ports: [PublishedPort]) throws -> [PublishedPort: Int] {
        guard ports.contains(where: { $0.backend != .proxy }) else { return [:] }
        let entries = try context.conntrack().entries()
        let local = try localAddresses()
        var flows: [DNATMapping.Proto: [UInt16: Int]] = [:]
        for entry in entries where PortPublisher.isAddressedToHost(entry, local: local) {
            guard let proto = DNATMapping.Proto(rawValue: entry.proto) else { continue }
            flows[proto, default: [:]][entry.destinationPort, default: 0] += 1
        }
        var result: [PublishedPort: Int] = [:]
        for p in ports where p.backend != .proxy {
            result[p] = flows[DNATMapping.Proto(p.proto)]?[p.hostPort] ?? 0
        }
        return result
    }

    /// The tracked UDP flows that are clients of these ports: addressed to this host (`local`,
    /// or loopback) on a host port, at the port's own address when it has one. A container's
    /// outbound flow to some server's port 53 is not one and must survive.
    static func staleFlows(_ entries: [ConntrackClient.Entry], of ports: [PublishedPort], local: Set<IPAddress>) -> [ConntrackClient.Entry] {
        entries.filter { entry in
            guard entry.proto == UInt8(IPPROTO_UDP), isAddressedToHost(entry, local: local), let destination = entry.destination else {
                return false
            }
            return ports.contains { p in
                guard p.proto == .udp, p.hostPort == entry.destinationPort else { return false }
                if case .address(let ip) = HostScope(p.hostIP) { return destination == ip }
                return true
            }
        }
    }

    /// Drops UDP conntrack entries for the host ports, so a client that never pauses is
    /// not left pinned to the old target. Best effort: the mapping change itself stands.
    func flushConntrack(_ ports: [PublishedPort]) {
        let udp = ports.filter { $0.proto == .udp }
        guard !udp.isEmpty else { return }
        do {
            let client = try context.conntrack()
            let entries = try client.entries()
            // Only flows addressed to this host: a container's outbound flow to some server's
            // port 53 or 443 is not a client of the mapping and must survive.
            let removed = try client.flush(PortPublisher.staleFlows(entries, of: udp, local: try localAddresses()))
            if removed > 0 { context.logger.debug("flushed \(removed) UDP conntrack entries") }
        } catch {
            context.logger.warning("could not flush UDP conntrack entries: \(error)")
        }
    }
}
