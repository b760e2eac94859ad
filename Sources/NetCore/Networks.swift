import Firewall
import Glibc
import Netlink
import Primitives

/// Networks: their records, their bridges and the addresses leased on them (IPAM).
final class NetworkRegistry {
    private let context: ManagerContext
    private let publisher: PortPublisher
    private var store: StateStore { context.store }
    private var host: RouteNetlink { context.host }

    init(_ context: ManagerContext, publisher: PortPublisher) {
        self.context = context
        self.publisher = publisher
    }

    func networks() throws -> [Network] {
        try store.networks()
    }

    func network(named name: String) throws -> Network {
        guard let network = try store.network(named: name) else { throw NetctlError.networkNotFound(name) }
        return network
    }

    /// A network's gateway unless one is given: its subnet's first address.
    static func defaultGateway(of subnet: IPNetwork) -> IPAddress { subnet.address.advanced(by: 1)! }

    /// "nc-NAME" when that is a valid interface name, else "nc-" and a hash of the name.
    static func bridgeName(for network: String) -> String {
        let simple = "nc-\(network)"
        if simple.utf8.count <= 15, (try? Validate.interfaceName(simple)) != nil { return simple }
        var hash: UInt32 = 2_166_136_261  // FNV-1a
        for byte in network.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return "nc-" + String(hash, radix: 16).leftPadded(to: 8)
    }

    func create(_ spec: NetworkSpec) throws -> Network {
        try Validate.objectName(spec.name, kind: "network")
        let subnet = try spec.subnet.map { try Validate.subnet($0, ipv6: false) }
        let subnet6 = try spec.subnet6.map { try Validate.subnet($0, ipv6: true) }
        if spec.gateway != nil && subnet == nil {
            throw NetctlError.invalidAddress(spec.gateway!, field: .gateway, problem: .needsSubnet)
        }
        if spec.gateway6 != nil && subnet6 == nil {
            throw NetctlError.invalidAddress(spec.gateway6!, field: .gateway6, problem: .needsSubnet)
        }
        let gateway = try zip2(spec.gateway, subnet).map { try Validate.hostAddress($0, in: $1, field: .gateway) }
        let gateway6 = try zip2(spec.gateway6, subnet6).map { try Validate.hostAddress($0, in: $1, field: .gateway6) }
        let bridge = spec.bridge ?? NetworkRegistry.bridgeName(for: spec.name)
        try Validate.interfaceName(bridge)
        let mtu = spec.mtu ?? 1500
        guard (68...65535).contains(mtu) else {
            throw NetctlError.invalidName(kind: "MTU", value: "\(mtu)", reason: "use a value from 68 to 65535")
        }
        let existingBridge = try host.link(named: bridge)
        if let link = existingBridge, link.group != LinkGroups.bridge { throw NetctlError.bridgeNotOurs(bridge) }
        // Routes through a leftover bridge of ours with this name don't count as a clash.
        let hostRoutes = try (host.routes(family: UInt8(AF_INET)) + host.routes(family: UInt8(AF_INET6)))
            .filter { $0.destination != nil && $0.outputIndex != existingBridge?.index }

        let network: Network = try store.transaction {
            if try store.network(named: spec.name) != nil { throw NetctlError.networkExists(spec.name) }
            let others = try store.networks()
            if let owner = others.first(where: { $0.bridge == bridge }) {
                throw NetctlError.bridgeInUse(bridge: bridge, network: owner.name)
            }
            let taken = others.map { ($0.name, $0.ipv4Subnet) } + others.compactMap { n in n.ipv6Subnet.map { (n.name, $0) } }
            func clash(_ candidate: IPNetwork) -> NetctlError? {
                if let other = taken.first(where: { $0.1.overlaps(candidate) }) {
                    return .subnetOverlapsNetwork(subnet: "\(candidate)", network: other.0, other: "\(other.1)")
                }
                if let route = hostRoutes.first(where: { $0.destination!.overlaps(candidate) }) {
                    return .subnetOverlapsRoute(subnet: "\(candidate)", route: "\(route.destination!)")
                }
                return nil
            }
            let chosen: IPNetwork
            if let subnet {
                if let error = clash(subnet) { throw error }
                chosen = subnet
            } else {
                guard let free = IPAM.defaultPools.first(where: { clash($0) == nil }) else { throw NetctlError.noFreeSubnet }
                chosen = free
            }
            if let subnet6, let error = clash(subnet6) { throw error }
            let dns = spec.dns ?? (spec.name != NetworkManager.defaultNetworkName)
            let network = Network(
                name: spec.name, bridge: bridge, subnet: "\(chosen)",
                gateway: "\(gateway ?? NetworkRegistry.defaultGateway(of: chosen))",
                subnet6: subnet6.map { "\($0)" }, gateway6: subnet6.map { "\(gateway6 ?? NetworkRegistry.defaultGateway(of: $0))" },
                mtu: mtu, created: .now(), internal: spec.internal, dns: dns, isolated: spec.isolated,
                // An internal network's bridge needs an address only to serve names, or when asked.
                gatewayOnBridge: spec.gatewayOnBridge ?? (!spec.internal || dns || spec.gateway != nil || spec.gateway6 != nil),
                owner: spec.owner)
            try store.insert(network)
            return network
        }
        do {
            try publisher.syncTable()  // first: ensureBridge needs the guard in place
            _ = try ensureBridge(network)
        } catch {
            // The row goes first, and the bridge only with it: once the row is committed a
            // concurrent attach may already hang an endpoint on this bridge, and then the
            // network (and its bridge) must stay.
            let removed = (try? store.transaction { try store.deleteNetwork(named: network.name) }) != nil
            if removed && existingBridge == nil { _ = try? host.perform(.deleteLink(name: bridge).ignoring(ENODEV)) }
            context.logger.warning("creating network \(network.name) failed: \(error)")
            throw NetctlError.wrap(error)
        }
        context.logger.info("created network \(network.name) (\(network.subnet) on \(network.bridge))")
        return network
    }

    /// Removes a network that has no endpoints, and its bridge. Refused (changing nothing)
    /// if an endpoint is attached, also by another process meanwhile.
    func remove(_ network: Network) throws {
        do {
            try store.transaction { try store.deleteNetwork(named: network.name) }
        } catch is SQLiteConstraintViolation {
            throw NetctlError.networkInUse(network: network.name, endpoints: try store.endpoints(network: network.name).map(\.name))
        }
        try publisher.syncTable()
        if let link = try host.link(named: network.bridge), link.group == LinkGroups.bridge {
            try context.wrapKernel { try host.perform(.deleteLink(index: link.index).ignoring(ENODEV)) }
        }
        context.logger.info("removed network \(network.name)")
    }

    /// Makes the network's bridge exist, up, with its gateway addresses; returns its index.
    /// Idempotent: run on every attach, so a bridge lost to a reboot or `ip link del` comes back.
    @discardableResult
    func ensureBridge(_ network: Network) throws -> Int32 {
        var link = try host.link(named: network.bridge)
        if link == nil {
            let created = try host.performEach([.createBridge(
                name: network.bridge, mtu: UInt32(network.mtu), mac: MACAddress.random().bytes,
                group: LinkGroups.bridge)])
            // EEXIST: another process made it first; it is checked below like any other.
            if created[0] != 0 && created[0] != EEXIST {
                throw NetlinkError(operation: "creating bridge \(network.bridge)", code: created[0])
            }
            link = try host.link(named: network.bridge)
        }
        guard let bridge = link else { throw NetlinkError(operation: "creating bridge \(network.bridge)", code: ENODEV) }
        guard bridge.group == LinkGroups.bridge else { throw NetctlError.bridgeNotOurs(network.bridge) }
        var requests: [RouteRequest] = [.setLink(index: bridge.index, LinkChange(up: true, alias: "netctl network \(network.name)"))]
        if network.gatewayOnBridge {
            requests.append(.addAddress(InterfaceAddress(index: bridge.index, address: network.ipv4Gateway,
                                                         prefixLength: network.ipv4Subnet.prefixLength)).ignoring(EEXIST))
            if let gateway6 = network.ipv6Gateway, let subnet6 = network.ipv6Subnet {
                requests.append(.addAddress(InterfaceAddress(index: bridge.index, address: gateway6,
                                                             prefixLength: subnet6.prefixLength)).ignoring(EEXIST))
            }
        }
        try host.perform(requests)
        // Forwarding carries published and outbound traffic; route_localnet lets the host's
        // own 127.0.0.1 connections be DNATed onto the bridge. That is safe only with the
        // table's guard chain in place (it drops anything from the wire addressed to 127/8),
        // so the table is checked, and rebuilt if a reboot or a flush took it, first.
        try publisher.ensureGuard()
        try setSysctl("net/ipv4/ip_forward", "1")
        try setSysctl("net/ipv4/conf/\(network.bridge)/route_localnet", "1")
        if network.ipv6Subnet != nil { try setSysctl("net/ipv6/conf/all/forwarding", "1") }
        return bridge.index
    }

    /// The network to attach to: the named one, or one made on first use (the default
    /// network, or `create`'s). Also says whether this call made the network, so a refused
    /// attach can take it away again.
    func networkForAttach(_ name: String?, create: NetworkSpec?, ip: String?,
                          routes: [StaticRoute]) throws -> (network: Network, made: Bool) {
        let name = name ?? NetworkManager.defaultNetworkName
        if let network = try store.network(named: name) { return (network, false) }
        var spec = create
        if spec == nil && name == NetworkManager.defaultNetworkName {
            spec = NetworkSpec(name: name, bridge: NetworkManager.defaultBridgeName)
        }
        guard var spec else { throw NetctlError.networkNotFound(name) }
        spec.name = name
        // What can be checked against the spec alone is, before anything is made.
        if let ip, let subnet = try spec.subnet.map({ try Validate.subnet($0, ipv6: false) }) {
            let gateway = spec.gateway.flatMap(IPAddress.init) ?? NetworkRegistry.defaultGateway(of: subnet)
            _ = try Validate.requestedAddress(ip, in: subnet, gateway: gateway, network: name)
        }
        for route in routes { _ = try Attachments.checkRoute(route, network: name, servesIPv6: spec.subnet6 != nil) }
        do {
            return (try self.create(spec), true)
        } catch NetctlError.networkExists {
            return (try network(named: name), false)  // another process made it first
        }
    }

    /// Leases an address on `network` (the caller holds the state transaction): `requested`
    /// if free, else the next free one after the last handed out.
    func lease(in network: Network, requested: IPAddress?, leases: [IPAddress: String], ipv6: Bool) throws -> IPAddress? {
        guard let subnet = ipv6 ? network.ipv6Subnet : network.ipv4Subnet else { return nil }
        if let requested {
            if let holder = leases[requested] {
                throw NetctlError.addressTaken(address: "\(requested)", network: network.name, endpoint: holder)
            }
            return requested
        }
        var taken = Set(leases.keys)
        taken.insert(ipv6 ? network.ipv6Gateway! : network.ipv4Gateway)
        let last = try store.lastAllocated(network: network.name, ipv6: ipv6)
        guard let ip = IPAM.allocate(in: subnet, taken: taken, after: last) else {
            throw NetctlError.addressPoolExhausted(network: network.name, subnet: "\(subnet)")
        }
        try store.setLastAllocated(network: network.name, ipv6: ipv6, ip)
        return ip
    }
}
