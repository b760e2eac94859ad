import Glibc
import Netlink
import Primitives

/// The host side of an endpoint as the kernel has it: what a runtime reports about the
/// links it was given (e.g. a CNI result's interfaces).
public struct EndpointLinks: Equatable, Sendable {
    public var bridge: String
    public var bridgeMAC: String
    public var hostInterface: String
    public var hostMAC: String
    public var mtu: Int
}

/// Endpoints: a namespace's attachment to a network. Records and leases first, then the
/// veth pair (its peer made directly inside the namespace) and what is configured inside;
/// taken down in batches.
final class Attachments {
    private let context: ManagerContext
    private let registry: NetworkRegistry
    private let publisher: PortPublisher
    private var store: StateStore { context.store }
    private var host: RouteNetlink { context.host }

    init(_ context: ManagerContext, registry: NetworkRegistry, publisher: PortPublisher) {
        self.context = context
        self.registry = registry
        self.publisher = publisher
    }

    func endpoints(network: String? = nil) throws -> [Endpoint] {
        try store.endpoints(network: network)
    }

    func endpoint(named name: String) throws -> Endpoint {
        guard let endpoint = try store.endpoint(named: name) else { throw NetctlError.endpointNotFound(name) }
        return endpoint
    }

    /// Where an attach goes, once its request has been checked.
    struct Target {
        /// Open when the namespace exists already; nil for one netctl makes (`.new`).
        var namespace: NetworkNamespace?
        var path: String
        var pid: Int32?
        var mac: MACAddress?
    }

    /// Checks what can be checked of a request without a network and without changing
    /// anything, and opens its namespace.
    func check(_ request: AttachRequest) throws -> Target {
        if let interface = request.interface { try Validate.interfaceName(interface) }
        let mac = try request.mac.map(Validate.mac)
        if let name = request.name { try Validate.objectName(name, kind: "endpoint") }
        for alias in request.aliases { try Validate.objectName(alias, kind: "alias") }
        for server in request.dnsServers where IPAddress(server) == nil {
            throw NetctlError.invalidName(kind: "DNS server", value: server, reason: "give an IP address")
        }
        if let ip = request.ip, IPAddress(ip)?.isIPv4 != true {
            throw NetctlError.invalidAddress(ip, field: .ip, problem: .notAnAddress(ipv4: true))
        }
        if let ip6 = request.ip6, IPAddress(ip6)?.isIPv4 != false {
            throw NetctlError.invalidAddress(ip6, field: .ip6, problem: .notAnAddress(ipv4: false))
        }
        // Another process's namespace, never this host's own: attaching that would give the
        // host a container's interface, address and default route.
        func notHost(_ namespace: NetworkNamespace, _ path: String) throws -> NetworkNamespace {
            if namespace.identity == (try context.wrapKernel { try NetworkNamespace.current() }).identity {
                throw NetctlError.hostNamespace(path)
            }
            return namespace
        }
        switch request.target {
        case .path(let path):
            return Target(namespace: try notHost(try context.wrapKernel { try NetworkNamespace(path: path) }, path), path: path, mac: mac)
        case .pid(let pid):
            let path = "/proc/\(pid)/ns/net"
            return Target(namespace: try notHost(try context.wrapKernel { try NetworkNamespace(pid: pid) }, path), path: path,
                          pid: pid, mac: mac)
        case .new(let name):
            try Validate.objectName(name, kind: "namespace")
            let path = "\(context.namespaceDirectory)/\(name)"
            if fileExists(path) { throw NetctlError.namespaceExists(path) }
            return Target(path: path, mac: mac)
        }
    }

    /// Records the endpoint and leases its addresses (one transaction), then makes its kernel
    /// objects. Any failure undoes the kernel work, then the record. A namespace may have
    /// endpoints on several networks: the new one gets the next free ethN unless named, and
    /// the namespace's default route (of each family) if it outranks the others there.
    func attach(_ request: AttachRequest, target: Target, to network: Network) throws -> Endpoint {
        let routes = try extraRoutes(request.routes, network: network)
        var namespace = target.namespace
        let requestedIP = try request.ip.map {
            try Validate.requestedAddress($0, in: network.ipv4Subnet, gateway: network.ipv4Gateway, network: network.name)
        }
        let requestedIP6 = try request.ip6.map { text -> IPAddress in
            guard let subnet6 = network.ipv6Subnet, let gateway6 = network.ipv6Gateway else {
                throw NetctlError.invalidAddress(text, field: .ip6, problem: .needsSubnet)
            }
            let ip = try Validate.hostAddress(text, in: subnet6, field: .ip6)
            if ip == gateway6 { throw NetctlError.invalidAddress(text, field: .ip6, problem: .isGateway(network: network.name)) }
            return ip
        }
        // A namespace that exists already is looked at before anything is made: its
        // interfaces (for the name of ours), netctl's endpoints in it, and its default routes.
        let inside = try namespace.map { ns in try context.wrapKernel { try RouteNetlink.open(in: ns) } }
        let neighbours = try namespace.map { ns in try endpoints(in: ns.identity) } ?? []
        var taken = Set(neighbours.map(\.interface))
        if let inside { taken.formUnion(try context.wrapKernel { try inside.links() }.map(\.name)) }
        let interface = request.interface ?? Attachments.nextInterfaceName(taken: taken)
        var candidate = Endpoint(
            id: "", name: "", network: network.name, hostInterface: "", interface: interface, mac: "", ipv4: "",
            ipv6: network.ipv6Subnet.map { _ in "" }, gateway: network.gateway, gateway6: network.gateway6, netns: target.path,
            pid: target.pid, ownsNetns: false, state: .creating, created: .now())
        candidate.gatewayPriority = request.gatewayPriority
        candidate.mayHoldDefaultRoute = request.defaultRoute
        candidate.attachOrder = Int64.max
        let networks = try Dictionary(uniqueKeysWithValues: store.networks().map { ($0.name, $0) })
        let holds = (ipv4: Attachments.defaultRouteHolder(neighbours + [candidate], networks, ipv6: false)?.attachOrder == Int64.max,
                     ipv6: Attachments.defaultRouteHolder(neighbours + [candidate], networks, ipv6: true)?.attachOrder == Int64.max)
        if let inside {
            // A default route of a family ours would take, via none of netctl's gateways here,
            // is someone else's: refused rather than replaced.
            let ours = Set(neighbours.flatMap { [IPAddress($0.gateway)] + [$0.gateway6.flatMap(IPAddress.init)] }.compactMap { $0 })
            for (family, gateway) in [(false, holds.ipv4 ? network.ipv4Gateway : nil), (true, holds.ipv6 ? network.ipv6Gateway : nil)] {
                guard let gateway else { continue }
                let routes = try context.wrapKernel { try inside.routes(family: UInt8(family ? AF_INET6 : AF_INET)) }
                if routes.contains(where: { $0.destination == nil && !($0.gateway.map(ours.contains) ?? false) }) {
                    throw NetctlError.defaultRouteExists(namespace: target.path, gateway: "\(gateway)")
                }
            }
        }
        let id = randomHex(bytes: 6)
        let name = request.name ?? "ep-\(id.prefix(8))"
        // Ports that cannot be published at all are refused before anything is made.
        try publisher.check(request.ports, backend: request.portBackend,
                            on: Endpoint(id: id, name: name, network: network.name, hostInterface: "", interface: interface, mac: "",
                                         // Stand-ins of the right families: the address is not chosen yet.
                                         ipv4: "\(network.ipv4Subnet)", ipv6: network.ipv6Subnet.map { "\($0)" }, gateway: network.gateway,
                                         gateway6: network.gateway6, netns: target.path, pid: target.pid, ownsNetns: false,
                                         state: .creating, created: .now()))
        var reserved: [PublishedPort] = []

        var endpoint: Endpoint = try store.transaction {
            if try store.endpoint(named: name) != nil { throw NetctlError.endpointExists(name) }
            try publisher.requireFree(request.ports)
            let leases = try store.leases(network: network.name)
            let ipv4 = try registry.lease(in: network, requested: requestedIP, leases: leases, ipv6: false)!
            let ipv6 = try registry.lease(in: network, requested: requestedIP6, leases: leases, ipv6: true)
            var endpoint = Endpoint(
                id: id, name: name, network: network.name, hostInterface: "nc\(id.prefix(8))",
                interface: interface, mac: (target.mac ?? Attachments.mac(for: ipv4)).description,
                ipv4: "\(ipv4)/\(network.ipv4Subnet.prefixLength)",
                ipv6: zip2(ipv6, network.ipv6Subnet).map { "\($0)/\($1.prefixLength)" },
                gateway: network.gateway, gateway6: network.gateway6, netns: target.path, pid: target.pid,
                // netctl's own namespace files (attach --new) go with the last endpoint in them.
                ownsNetns: target.path.hasPrefix(context.namespaceDirectory + "/"), state: .creating, created: .now())
            endpoint.aliases = request.aliases
            endpoint.dnsServers = request.dnsServers
            endpoint.gatewayPriority = request.gatewayPriority
            endpoint.mayHoldDefaultRoute = request.defaultRoute
            endpoint.namespaceIdentity = namespace?.identity
            endpoint.owner = .current()
            try store.insert(endpoint)
            // Its ports with it: taken from now on, in the kernel once the endpoint is active.
            reserved = try publisher.reserve(request.ports, backend: request.portBackend, probe: true, for: endpoint)
            return endpoint
        }

        var undo: [() -> Void] = [{ [store] in try? store.transaction { try store.deleteEndpoint(id: id) } }]
        do {
            if namespace == nil {
                namespace = try NetworkNamespace.create(at: target.path)
                undo.append { try? NetworkNamespace.remove(at: target.path) }
            }
            let ns = namespace!
            let bridgeIndex = try registry.ensureBridge(network)
            try createVeth(endpoint, bridgeIndex: bridgeIndex, network: network, namespace: ns)
            undo.append { [host] in try? host.perform(.deleteLink(name: endpoint.hostInterface).ignoring(ENODEV)) }
            let defaults = [holds.ipv4 ? network.ipv4Gateway : nil, holds.ipv6 ? network.ipv6Gateway : nil].compactMap { $0 }
            try configureInside(try inside ?? context.wrapKernel { try RouteNetlink.open(in: ns) }, endpoint: endpoint,
                                defaultRoutes: defaults, routes: routes)
            endpoint.state = .active
            endpoint.namespaceIdentity = ns.identity
            // Active and published in one transaction: an attach is seen with its ports or not at all.
            var kernelChanged = false
            do {
                try store.transaction {
                    try store.update(endpoint: id, state: .active, namespaceIdentity: ns.identity)
                    try publisher.install(reserved, on: endpoint)
                    kernelChanged = !reserved.isEmpty
                }
            } catch {
                if kernelChanged { _ = try? publisher.syncTable() }
                throw error
            }
        } catch {
            context.logger.debug("attach \(name) failed, rolling back: \(error)")
            undo.reversed().forEach { $0() }
            // A default route ours replaced goes back to the endpoint that held it.
            if namespace != nil, holds.ipv4 || holds.ipv6 { settleDefaultRoutes(target.path, identity: namespace!.identity) }
            throw NetctlError.wrap(error)
        }
        context.logger.info("attached \(name) (\(endpoint.ipv4)) to \(network.name)")
        publisher.announce(reserved, for: name)
        return endpoint
    }

    /// netctl's endpoints in a namespace, in the order they were attached.
    func endpoints(in identity: NetworkNamespace.Identity) throws -> [Endpoint] {
        try store.endpoints().filter { $0.namespaceIdentity == identity && $0.state == .active }.sorted { $0.attachOrder < $1.attachOrder }
    }

    /// eth0, eth1, ...: the first not taken.
    static func nextInterfaceName(taken: Set<String>) -> String {
        (0...).lazy.map { "eth\($0)" }.first { !taken.contains($0) }!
    }

    /// Of a namespace's endpoints, the one whose network gives it the default route of a
    /// family: those that may (not on an internal network, not told otherwise, with an
    /// address of the family), the highest gateway priority, ties to the first attached.
    static func defaultRouteHolder(_ endpoints: [Endpoint], _ networks: [String: Network], ipv6: Bool) -> Endpoint? {
        endpoints.filter { e in
            e.mayHoldDefaultRoute && networks[e.network].map { !$0.internal } ?? false && (!ipv6 || (e.ipv6 != nil && e.gateway6 != nil))
        }.max { ($0.gatewayPriority, -$0.attachOrder) < ($1.gatewayPriority, -$1.attachOrder) }
    }

    /// Gives a namespace the default routes its endpoints say it should have (after one of
    /// them went, or when an attach that replaced one is undone): the holder's, replacing
    /// whatever default route netctl put there before. Best effort: the endpoints stand.
    func settleDefaultRoutes(_ path: String, identity: NetworkNamespace.Identity) {
        do {
            let remaining = try endpoints(in: identity)
            guard let first = remaining.first else { return }
            let namespace = try first.pid.map { try NetworkNamespace(pid: $0) } ?? NetworkNamespace(path: path)
            guard namespace.identity == identity else { return }
            let networks = try Dictionary(uniqueKeysWithValues: store.networks().map { ($0.name, $0) })
            var requests: [RouteRequest] = []
            if let holder = Attachments.defaultRouteHolder(remaining, networks, ipv6: false), let gateway = IPAddress(holder.gateway) {
                requests.append(.replaceRoute(.defaultRoute(via: gateway)))
            }
            if let holder = Attachments.defaultRouteHolder(remaining, networks, ipv6: true), let gateway = holder.gateway6.flatMap(IPAddress.init) {
                requests.append(.replaceRoute(.defaultRoute(via: gateway)))
            }
            guard !requests.isEmpty else { return }
            try RouteNetlink.open(in: namespace).perform(requests)
        } catch {
            context.logger.warning("could not move the default route of \(path) to its next network: \(error)")
        }
    }

    /// A stable MAC per IPv4 address (02:6e + the address), so a re-attached container
    /// keeps neighbours' ARP entries valid.
    static func mac(for ip: IPAddress) -> MACAddress {
        MACAddress(bytes: [0x02, 0x6e] + ip.bytes.suffix(4))!
    }

    private func createVeth(_ endpoint: Endpoint, bridgeIndex: Int32, network: Network, namespace: NetworkNamespace) throws {
        let spec = VethSpec(name: endpoint.hostInterface, peerName: endpoint.interface, peerNamespaceFD: namespace.fd,
                            peerMAC: try Validate.mac(endpoint.mac).bytes, mtu: UInt32(network.mtu), master: bridgeIndex,
                            group: LinkGroups.endpoint, up: true)
        do {
            try host.perform(.createVeth(spec))
        } catch let error as NetlinkError where error.code == EEXIST {
            // The pair is made atomically, so EEXIST means one of the two names is taken.
            if try host.link(named: endpoint.hostInterface) == nil {
                throw NetctlError.interfaceExistsInNamespace(interface: endpoint.interface, namespace: endpoint.netns)
            }
            throw error
        }
        // Not in the create's batch: if the name were taken, this must not touch the other link.
        try host.perform(.setLink(name: endpoint.hostInterface, LinkChange(hairpin: true)))
    }

    /// Inside the namespace, through a socket opened there: lo up, the address(es), the
    /// interface up, the default route(s) it holds (replacing another network's) and the
    /// extra routes, in one netlink round trip.
    private func configureInside(_ inside: RouteNetlink, endpoint: Endpoint, defaultRoutes: [IPAddress], routes: [Route]) throws {
        guard let peer = try inside.link(named: endpoint.interface), let lo = try inside.link(named: "lo") else {
            throw NetlinkError(operation: "finding \(endpoint.interface) in \(endpoint.netns)", code: ENODEV)
        }
        var requests: [RouteRequest] = [.setLink(index: lo.index, LinkChange(up: true))]
        for ip in [endpoint.ipv4Interface] + [endpoint.ipv6Interface].compactMap({ $0 }) {
            requests.append(.addAddress(InterfaceAddress(index: peer.index, address: ip.address, prefixLength: ip.prefixLength)))
        }
        requests.append(.setLink(index: peer.index, LinkChange(up: true)))
        requests += defaultRoutes.map { .replaceRoute(.defaultRoute(via: $0)) }
        requests += routes.map { .addRoute($0) }
        try inside.perform(requests)
    }

    /// Routes for inside an endpoint's namespace, checked against the network: destinations
    /// as subnets (host bits masked), next hops default to the network's gateway of the
    /// family. Default routes of a family the network serves are dropped (attach always adds
    /// them).
    func extraRoutes(_ specs: [StaticRoute], network: Network) throws -> [Route] {
        try specs.compactMap { spec in
            let (destination, nextHop) = try Attachments.checkRoute(spec, network: network.name, servesIPv6: network.ipv6Gateway != nil)
            let gateway = nextHop ?? (destination.isIPv4 ? network.ipv4Gateway : network.ipv6Gateway!)
            if destination.prefixLength == 0 {
                // The default route of a family the network serves is added by attach anyway.
                if destination.isIPv4 || network.ipv6Subnet != nil { return nil }
            }
            return Route(destination: destination.prefixLength == 0 ? nil : destination, gateway: gateway,
                         isIPv4: destination.isIPv4)
        }
    }

    /// A route's destination and next hop (nil: the network's gateway), checked as far as
    /// the network's name and families allow: callable before the network exists.
    static func checkRoute(_ spec: StaticRoute, network: String, servesIPv6: Bool) throws -> (IPNetwork, IPAddress?) {
        guard let destination = IPNetwork(spec.destination, strict: false) else {
            throw NetctlError.invalidRoute(spec.destination, reason: "the destination is not a subnet like 10.0.0.0/8")
        }
        guard let text = spec.gateway else {
            if !destination.isIPv4 && !servesIPv6 {
                throw NetctlError.invalidRoute(spec.destination, reason: "network \(network) has no IPv6 subnet; give a next hop or drop the route")
            }
            return (destination, nil)
        }
        guard let ip = IPAddress(text), ip.isIPv4 == destination.isIPv4 else {
            throw NetctlError.invalidRoute(spec.destination, reason: "next hop \"\(text)\" is not an address of the destination's family")
        }
        return (destination, ip)
    }

    /// The bridge and host veth of an attached endpoint, read from the kernel.
    func links(of endpoint: Endpoint, on network: Network) throws -> EndpointLinks {
        let name = endpoint.name
        guard let bridge = try context.wrapKernel({ try host.link(named: network.bridge) }) else {
            throw NetctlError.endpointBroken(name, reason: "bridge \(network.bridge) is missing")
        }
        guard let veth = try context.wrapKernel({ try host.link(named: endpoint.hostInterface) }) else {
            throw NetctlError.endpointBroken(name, reason: "its host interface \(endpoint.hostInterface) is missing")
        }
        return EndpointLinks(bridge: bridge.name, bridgeMAC: MACAddress(bytes: bridge.mac)?.description ?? "",
                             hostInterface: veth.name, hostMAC: MACAddress(bytes: veth.mac)?.description ?? "", mtu: Int(veth.mtu))
    }

    // MARK: Detaching

    @discardableResult
    func detach(_ names: [String]) throws -> [Endpoint] {
        var seen = Set<String>()
        let endpoints = try names.filter { seen.insert($0).inserted }.map { try endpoint(named: $0) }
        try teardown(endpoints)
        for e in endpoints { context.logger.info("detached \(e.name)") }
        return endpoints
    }

    /// Takes endpoints down: their published ports with the state change (one transaction),
    /// their veth pairs in one kernel batch, the namespaces netctl made, then their records.
    func teardown(_ endpoints: [Endpoint]) throws {
        guard !endpoints.isEmpty else { return }
        let ports: [PublishedPort] = try store.transaction {
            var ports: [PublishedPort] = []
            for e in endpoints {
                try store.update(endpoint: e.id, state: .removing, owner: .current())
                let own = try store.ports(endpoint: e.name).map(\.port)
                try publisher.removePorts(own, of: e)
                ports += own
            }
            return ports
        }
        publisher.flushConntrack(ports)
        // The namespaces they leave: netctl's own files go with their last endpoint; the
        // others get their default routes from the networks that remain.
        let going = Set(endpoints.map(\.id))
        let staying = try store.endpoints().filter { !going.contains($0.id) }
        var settle: [String: NetworkNamespace.Identity] = [:]
        var removing: [Endpoint] = []
        for e in endpoints {
            let others = staying.filter { $0.netns == e.netns || ($0.namespaceIdentity != nil && $0.namespaceIdentity == e.namespaceIdentity) }
            if others.isEmpty {
                if e.ownsNetns { removing.append(e) }
            } else if let identity = e.namespaceIdentity {
                settle[e.netns] = identity
            }
        }
        if context.detachesInBackground {
            try context.wrapKernel { try retire(endpoints, namespacesGoing: Set(removing.map(\.id))) }
        } else {
            try context.wrapKernel { try host.deleteLinks(names: endpoints.map(\.hostInterface)) }
        }
        for e in removing { try context.wrapKernel { try NetworkNamespace.remove(at: e.netns) } }
        try store.transaction {
            for e in endpoints {
                // A publish that raced this teardown may have added rows; their elements go too.
                try publisher.removePorts(try store.ports(endpoint: e.name).map(\.port), of: e)
                try store.deleteEndpoint(id: e.id)
            }
        }
        for (path, identity) in settle { settleDefaultRoutes(path, identity: identity) }
    }

    /// Takes endpoints' veth pairs out of use at once and leaves their deletion to a detached
    /// process: deleting a link waits for the kernel's RCU barrier, most of a detach, while
    /// this costs a few netlink round trips. At return, the host end is down, off the bridge
    /// and in the `retired` group (gc deletes any a lost process left), and the container end
    /// is down and renamed (`ncrt` + the endpoint id), so the next attach can use its name.
    /// `namespacesGoing`: endpoints whose namespace is removed with them; nobody attaches
    /// there again, so their inner ends are left as they are (no thread in the namespace, no
    /// rename, which a detach otherwise waits for).
    func retire(_ endpoints: [Endpoint], namespacesGoing: Set<String> = []) throws {
        var hostRequests: [RouteRequest] = []
        var peers: [(endpoint: Endpoint, index: Int32)] = []
        for endpoint in endpoints {
            guard let link = try host.link(named: endpoint.hostInterface),
                  link.group == LinkGroups.endpoint || link.group == LinkGroups.retired else {
                continue  // gone already, or the name is not ours any more
            }
            hostRequests.append(RouteRequest.setLink(index: link.index, LinkChange(up: false, master: 0, group: LinkGroups.retired))
                .ignoring(ENODEV))
            if let peer = link.peerIndex, peer > 0, link.peerNamespaceID != nil, !namespacesGoing.contains(endpoint.id) {
                peers.append((endpoint, peer))
            }
        }
        guard !hostRequests.isEmpty else { return }
        try host.perform(hostRequests)
        // Retired pairs are deleted whatever happens below; without a process for it, here.
        do {
            try host.deleteLinksDetached(inGroup: LinkGroups.retired, lockDirectory: context.stateDirectory)
        } catch {
            context.logger.notice("deleting retired links in the background failed (\(error)); deleting them now")
            try host.perform(.deleteLinks(inGroup: LinkGroups.retired).ignoring(ENODEV))
            return
        }
        // Freeing the container's interface name is a courtesy to the next attach: the pair
        // is out of use and its deletion under way, so a failure here fails nothing.
        for peer in peers {
            // Only in the namespace the endpoint was made in: the file may name another one now.
            guard let identity = peer.endpoint.namespaceIdentity,
                  let namespace = try? NetworkNamespace(path: peer.endpoint.netns), namespace.identity == identity else { continue }
            do {
                try RouteNetlink.open(in: namespace).perform([
                    RouteRequest.setLink(index: peer.index, LinkChange(up: false)).ignoring(ENODEV),
                    RouteRequest.setLink(index: peer.index, LinkChange(name: "ncrt" + peer.endpoint.id.prefix(8))).ignoring(ENODEV),
                ])
            } catch {
                context.logger.notice("renaming \(peer.endpoint.interface) in \(peer.endpoint.netns) failed: \(error)")
            }
        }
    }
}
