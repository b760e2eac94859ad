import CDetached
import Firewall
import Glibc
import Logging
import Netlink
import Primitives

/// What `network create` asks for; nil fields get defaults.
public struct NetworkSpec: Sendable {
    public var name: String
    public var subnet: String?
    public var gateway: String?
    public var bridge: String?
    public var subnet6: String?
    public var gateway6: String?
    public var mtu: Int?

    public init(name: String, subnet: String? = nil, gateway: String? = nil, bridge: String? = nil,
                subnet6: String? = nil, gateway6: String? = nil, mtu: Int? = nil) {
        self.name = name; self.subnet = subnet; self.gateway = gateway; self.bridge = bridge
        self.subnet6 = subnet6; self.gateway6 = gateway6; self.mtu = mtu
    }
}

/// What `attach` asks for.
public struct AttachRequest: Sendable {
    public enum Target: Sendable, Equatable {
        /// A network namespace file, e.g. /run/netns/NAME.
        case path(String)
        /// The network namespace of a running process.
        case pid(Int32)
        /// A new namespace netctl creates under its state directory and removes on detach.
        case new(String)
    }

    public var network: String?
    public var target: Target
    public var ip: String?
    public var name: String?
    public var interface: String
    public var mac: String?
    /// Ports to publish once attached (`-p`); if publishing fails, the attach is undone.
    public var ports: [PortMapping]
    public var portBackend: PortBackend
    /// Routes added inside the namespace besides the default route(s), each through the
    /// network's gateway of its family unless it names one. Not recorded in state.
    public var routes: [StaticRoute]
    /// Makes `network` from this spec if it does not exist yet, once the request's own
    /// checks have passed; a refused attach removes it again.
    public var createNetwork: NetworkSpec?

    public init(network: String? = nil, target: Target, ip: String? = nil, name: String? = nil,
                interface: String = "eth0", mac: String? = nil, ports: [PortMapping] = [], portBackend: PortBackend = .nft,
                routes: [StaticRoute] = [], createNetwork: NetworkSpec? = nil) {
        self.network = network; self.target = target; self.ip = ip; self.name = name
        self.interface = interface; self.mac = mac; self.ports = ports; self.portBackend = portBackend
        self.routes = routes; self.createNetwork = createNetwork
    }
}

/// A route inside a container's namespace: a destination subnet and an optional next hop.
public struct StaticRoute: Sendable, Equatable {
    public var destination: String
    public var gateway: String?

    public init(destination: String, gateway: String? = nil) {
        self.destination = destination; self.gateway = gateway
    }
}

/// What `gc` found and removed.
public struct GCReport: Codable, Equatable, Sendable {
    public var removedEndpoints: [String] = []
    public var removedLinks: [String] = []
    public var removedNamespaces: [String] = []
    public var restoredBridges: [String] = []
    /// Map elements the kernel held that state doesn't know, and ones it lacked.
    public var removedMappings: [String] = []
    public var restoredMappings: [String] = []
}

/// The library a runtime embeds: networks, endpoints and their reconciliation with the
/// kernel. Every CLI command is one call here.
///
/// Ordering rule: state is written before the kernel is touched (an endpoint row in state
/// `creating` exists before its veth does), so a crash at any point leaves a record that
/// `gc` can act on; a failure half-way undoes the kernel work and then the record.
public final class NetworkManager {
    public static let defaultNetworkName = "netctl"
    public static let defaultBridgeName = "netctl0"

    /// `$NETCTL_STATE_DIR`, else /var/lib/netctl.
    public static var defaultStateDirectory: String {
        getenv("NETCTL_STATE_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/netctl"
    }

    public let stateDirectory: String
    let store: StateStore
    let host: RouteNetlink
    let logger: Logger
    private let firewallSocket: NetlinkSocket?
    private var firewallClient: NftClient?
    private var conntrackClient: ConntrackClient?

    /// When set, detaching does not wait for the kernel to delete veth pairs: they are made
    /// unusable and their names free at once (see `retire`), and a detached process deletes
    /// them. For callers that pay every millisecond of a detach, such as the CNI plugin's DEL.
    public var detachesInBackground = false

    /// Opens (creating if needed) the state under `stateDirectory`. `host` defaults to a
    /// netlink socket in the calling thread's namespace.
    public init(stateDirectory: String = NetworkManager.defaultStateDirectory,
                host: RouteNetlink? = nil, firewall: NetlinkSocket? = nil,
                logger: Logger = Logger(label: "netctl")) throws {
        self.stateDirectory = stateDirectory
        self.firewallSocket = firewall
        self.logger = logger
        try makeDirectories(stateDirectory)
        try makeDirectories(stateDirectory + "/netns")
        store = try StateStore(path: stateDirectory + "/state.db")
        do {
            self.host = try host ?? RouteNetlink()
        } catch {
            throw NetctlError.wrap(error, hint: "netctl needs root (CAP_NET_ADMIN)")
        }
        if store.discardedPreviousBoot {
            logger.notice("state from before the last reboot was discarded; networks will be restored on use")
        }
    }

    var namespaceDirectory: String { stateDirectory + "/netns" }

    /// For a short-lived process (a CNI call, a CLI command), before it exits: after a batch
    /// that deleted something, the last close of an nftables or conntrack socket waits for the
    /// kernel to release it, a full RCU grace period (4-14 ms measured in a CNI DEL), so a
    /// detached process takes copies of them and closes them after this process has exited.
    /// Nothing happens when nothing was deleted (an added element's close does not wait,
    /// measured), since the hand-off costs a process. Best effort.
    public func holdSocketsUntilExit() {
        guard firewallClient?.sentRemovals == true else { return }
        let descriptors = [firewallClient?.descriptor, conntrackClient?.descriptor].compactMap { $0 }
        guard !descriptors.isEmpty else { return }
        _ = descriptors.withUnsafeBufferPointer { cdetached_hold_until_exit($0.baseAddress, Int32($0.count)) }
    }

    /// The nftables client, opened on first use (in the namespace of the thread that made
    /// the manager's host socket, which is the caller's).
    func firewall() throws -> NftClient {
        if let firewallClient { return firewallClient }
        let client = try wrapKernel { try firewallSocket.map { NftClient(socket: $0) } ?? NftClient() }
        firewallClient = client
        return client
    }

    func conntrack() throws -> ConntrackClient {
        if let conntrackClient { return conntrackClient }
        let client = try wrapKernel { try ConntrackClient() }
        conntrackClient = client
        return client
    }

    /// The name rule for networks, endpoints and anything named after them (a runtime's
    /// containers are endpoints of the same name): `invalidName` if `name` breaks it.
    public static func checkName(_ name: String, kind: String) throws {
        try Validate.objectName(name, kind: kind)
    }

    // MARK: Networks

    public func networks() throws -> [Network] {
        try store.networks()
    }

    public func network(named name: String) throws -> Network {
        guard let network = try store.network(named: name) else { throw NetctlError.networkNotFound(name) }
        return network
    }

    /// A network's gateway unless one is given: its subnet's first address.
    static func defaultGateway(of subnet: IPNetwork) -> IPAddress { subnet.address.advanced(by: 1)! }

    @discardableResult
    public func createNetwork(_ spec: NetworkSpec) throws -> Network {
        try Validate.objectName(spec.name, kind: "network")
        let subnet = try spec.subnet.map { try Validate.subnet($0, ipv6: false) }
        let subnet6 = try spec.subnet6.map { try Validate.subnet($0, ipv6: true) }
        if spec.gateway != nil && subnet == nil {
            throw NetctlError.invalidAddress(spec.gateway!, reason: "--gateway needs --subnet")
        }
        if spec.gateway6 != nil && subnet6 == nil {
            throw NetctlError.invalidAddress(spec.gateway6!, reason: "--gateway6 needs --subnet6")
        }
        let gateway = try zip2(spec.gateway, subnet).map { try Validate.hostAddress($0, in: $1, what: "--gateway") }
        let gateway6 = try zip2(spec.gateway6, subnet6).map { try Validate.hostAddress($0, in: $1, what: "--gateway6") }
        let bridge = spec.bridge ?? NetworkManager.bridgeName(for: spec.name)
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
            let network = Network(
                name: spec.name, bridge: bridge, subnet: "\(chosen)",
                gateway: "\(gateway ?? NetworkManager.defaultGateway(of: chosen))",
                subnet6: subnet6.map { "\($0)" }, gateway6: subnet6.map { "\(gateway6 ?? NetworkManager.defaultGateway(of: $0))" },
                mtu: mtu, created: .now())
            try store.insert(network)
            return network
        }
        do {
            try syncFirewall()  // first: ensureBridge needs the guard in place
            _ = try ensureBridge(network)
        } catch {
            // The row goes first, and the bridge only with it: once the row is committed a
            // concurrent attach may already hang an endpoint on this bridge, and then the
            // network (and its bridge) must stay.
            let removed = (try? store.transaction { try store.deleteNetwork(named: network.name) }) != nil
            if removed && existingBridge == nil { _ = try? host.perform(.deleteLink(name: bridge).ignoring(ENODEV)) }
            logger.warning("creating network \(network.name) failed: \(error)")
            throw NetctlError.wrap(error)
        }
        logger.info("created network \(network.name) (\(network.subnet) on \(network.bridge))")
        return network
    }

    /// Removes a network and its bridge. With `force`, detaches its endpoints first;
    /// without, refuses while any are attached. Returns the endpoints it detached.
    @discardableResult
    public func removeNetwork(named name: String, force: Bool = false) throws -> [String] {
        let network = try self.network(named: name)
        let attached = try store.endpoints(network: name)
        if !attached.isEmpty {
            guard force else { throw NetctlError.networkInUse(network: name, endpoints: attached.map(\.name)) }
            try detach(attached.map(\.name))
        }
        do {
            try store.transaction { try store.deleteNetwork(named: name) }
        } catch is SQLiteConstraintViolation {
            // An endpoint was attached meanwhile by another process.
            throw NetctlError.networkInUse(network: name, endpoints: try store.endpoints(network: name).map(\.name))
        }
        try syncFirewall()
        if let link = try host.link(named: network.bridge), link.group == LinkGroups.bridge {
            try wrapKernel { try host.perform(.deleteLink(index: link.index).ignoring(ENODEV)) }
        }
        logger.info("removed network \(name)")
        return attached.map(\.name)
    }

    /// Makes the network's bridge exist, up, with its gateway addresses; returns its index.
    /// Idempotent: run on every attach, so a bridge lost to a reboot or `ip link del` comes back.
    @discardableResult
    func ensureBridge(_ network: Network) throws -> Int32 {
        var link = try host.link(named: network.bridge)
        if link == nil {
            let created = try host.performEach([.createBridge(
                name: network.bridge, mtu: UInt32(network.mtu), mac: NetworkManager.randomMAC(),
                group: LinkGroups.bridge)])
            // EEXIST: another process made it first; it is checked below like any other.
            if created[0] != 0 && created[0] != EEXIST {
                throw NetlinkError(operation: "creating bridge \(network.bridge)", code: created[0])
            }
            link = try host.link(named: network.bridge)
        }
        guard let bridge = link else { throw NetlinkError(operation: "creating bridge \(network.bridge)", code: ENODEV) }
        guard bridge.group == LinkGroups.bridge else { throw NetctlError.bridgeNotOurs(network.bridge) }
        var requests: [RouteRequest] = [
            .setLink(index: bridge.index, LinkChange(up: true, alias: "netctl network \(network.name)")),
            .addAddress(InterfaceAddress(index: bridge.index, address: network.ipv4Gateway,
                                         prefixLength: network.ipv4Subnet.prefixLength)).ignoring(EEXIST),
        ]
        if let gateway6 = network.ipv6Gateway, let subnet6 = network.ipv6Subnet {
            requests.append(.addAddress(InterfaceAddress(index: bridge.index, address: gateway6,
                                                         prefixLength: subnet6.prefixLength)).ignoring(EEXIST))
        }
        try host.perform(requests)
        // Forwarding carries published and outbound traffic; route_localnet lets the host's
        // own 127.0.0.1 connections be DNATed onto the bridge. That is safe only with the
        // table's guard chain in place (it drops anything from the wire addressed to 127/8),
        // so the table is checked, and rebuilt if a reboot or a flush took it, first.
        if try wrapKernel({ try firewall().ruleCount(chain: PublishRuleset.guardChain) }) == 0 { try syncFirewall() }
        try setSysctl("net/ipv4/ip_forward", "1")
        try setSysctl("net/ipv4/conf/\(network.bridge)/route_localnet", "1")
        if network.ipv6Subnet != nil { try setSysctl("net/ipv6/conf/all/forwarding", "1") }
        return bridge.index
    }

    /// The network to attach to: the named one, or one made on first use (the default
    /// network, or `create`'s). Also says whether this call made the network, so a refused
    /// attach can take it away again.
    private func networkForAttach(_ name: String?, create: NetworkSpec?, ip: String?,
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
            let gateway = spec.gateway.flatMap(IPAddress.init) ?? NetworkManager.defaultGateway(of: subnet)
            _ = try Validate.requestedAddress(ip, in: subnet, gateway: gateway, network: name)
        }
        for route in routes { _ = try NetworkManager.checkRoute(route, network: name, servesIPv6: spec.subnet6 != nil) }
        do {
            return (try createNetwork(spec), true)
        } catch NetctlError.networkExists {
            return (try network(named: name), false)  // another process made it first
        }
    }

    // MARK: Endpoints

    public func endpoints(network: String? = nil) throws -> [Endpoint] {
        if let network { _ = try self.network(named: network) }
        return try store.endpoints(network: network)
    }

    public func endpoint(named name: String) throws -> Endpoint {
        guard let endpoint = try store.endpoint(named: name) else { throw NetctlError.endpointNotFound(name) }
        return endpoint
    }

    /// Connects a network namespace to a network: a veth pair with its peer created
    /// directly inside the namespace, an address from IPAM, `lo` up and a default route
    /// through the gateway.
    public func attach(_ request: AttachRequest) throws -> Endpoint {
        // 1. Check everything that can be checked without changing anything.
        try Validate.interfaceName(request.interface)
        let requestedMAC = try request.mac.map(Validate.mac)
        if let name = request.name { try Validate.objectName(name, kind: "endpoint") }
        var namespace: NetworkNamespace?
        let netnsPath: String
        var pid: Int32?
        switch request.target {
        case .path(let path):
            namespace = try wrapKernel { try NetworkNamespace(path: path) }
            netnsPath = path
        case .pid(let p):
            namespace = try wrapKernel { try NetworkNamespace(pid: p) }
            netnsPath = "/proc/\(p)/ns/net"
            pid = p
        case .new(let name):
            try Validate.objectName(name, kind: "namespace")
            netnsPath = "\(namespaceDirectory)/\(name)"
            if fileExists(netnsPath) { throw NetctlError.namespaceExists(netnsPath) }
        }
        if let ip = request.ip, IPAddress(ip)?.isIPv4 != true {
            throw NetctlError.invalidAddress(ip, reason: "--ip must be an IPv4 address")
        }
        let (network, madeNetwork) = try networkForAttach(request.network, create: request.createNetwork, ip: request.ip,
                                                         routes: request.routes)
        do {
            let routes = try extraRoutes(request.routes, network: network)
            let endpoint = try attach(request, to: network, mac: requestedMAC, namespace: namespace, netnsPath: netnsPath, pid: pid,
                                      routes: routes)
            do {
                try publish(endpoint: endpoint.name, request.ports, backend: request.portBackend)
            } catch {
                _ = try? detach([endpoint.name])
                throw error
            }
            return endpoint
        } catch {
            // A default network made for this attach alone goes with it: a refused attach
            // changes nothing. (It stays if another endpoint joined it meanwhile.)
            if madeNetwork { _ = try? removeNetwork(named: network.name) }
            throw error
        }
    }

    private func attach(_ request: AttachRequest, to network: Network, mac requestedMAC: [UInt8]?, namespace: NetworkNamespace?,
                        netnsPath: String, pid: Int32?, routes: [Route]) throws -> Endpoint {
        var namespace = namespace
        let requestedIP = try request.ip.map {
            try Validate.requestedAddress($0, in: network.ipv4Subnet, gateway: network.ipv4Gateway, network: network.name)
        }
        let id = NetworkManager.randomHex(bytes: 6)
        let name = request.name ?? "ep-\(id.prefix(8))"

        // 2. Record the intent and lease the addresses, atomically.
        var endpoint: Endpoint = try store.transaction {
            if try store.endpoint(named: name) != nil { throw NetctlError.endpointExists(name) }
            let leases = try store.leases(network: network.name)
            let ipv4 = try lease(in: network, requested: requestedIP, leases: leases, ipv6: false)!
            let ipv6 = try lease(in: network, requested: nil, leases: leases, ipv6: true)
            let endpoint = Endpoint(
                id: id, name: name, network: network.name, hostInterface: "nc\(id.prefix(8))",
                interface: request.interface, mac: (requestedMAC ?? NetworkManager.mac(for: ipv4)).macString,
                ipv4: "\(ipv4)/\(network.ipv4Subnet.prefixLength)",
                ipv6: zip2(ipv6, network.ipv6Subnet).map { "\($0)/\($1.prefixLength)" },
                gateway: network.gateway, gateway6: network.gateway6, netns: netnsPath, pid: pid,
                ownsNetns: namespace == nil, state: .creating, created: .now(),
                namespaceIdentity: namespace?.identity, owner: .current())
            try store.insert(endpoint)
            return endpoint
        }

        // 3. Make the kernel objects; on any failure undo them, then the record.
        var undo: [() -> Void] = [{ [store] in try? store.transaction { try store.deleteEndpoint(id: id) } }]
        do {
            if namespace == nil {
                namespace = try NetworkNamespace.create(at: netnsPath)
                undo.append { try? NetworkNamespace.remove(at: netnsPath) }
            }
            let ns = namespace!
            let bridgeIndex = try ensureBridge(network)
            try createVeth(endpoint, bridgeIndex: bridgeIndex, network: network, namespace: ns)
            undo.append { [host] in try? host.perform(.deleteLink(name: endpoint.hostInterface).ignoring(ENODEV)) }
            try configureInside(ns, endpoint: endpoint, routes: routes)
            endpoint.state = .active
            endpoint.namespaceIdentity = ns.identity
            try store.transaction { try store.update(endpoint: id, state: .active, namespaceIdentity: ns.identity) }
        } catch {
            logger.debug("attach \(name) failed, rolling back: \(error)")
            undo.reversed().forEach { $0() }
            throw NetctlError.wrap(error)
        }
        logger.info("attached \(name) (\(endpoint.ipv4)) to \(network.name)")
        return endpoint
    }

    private func lease(in network: Network, requested: IPAddress?, leases: [IPAddress: String], ipv6: Bool) throws -> IPAddress? {
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

    private func createVeth(_ endpoint: Endpoint, bridgeIndex: Int32, network: Network, namespace: NetworkNamespace) throws {
        let spec = VethSpec(name: endpoint.hostInterface, peerName: endpoint.interface, peerNamespaceFD: namespace.fd,
                            peerMAC: try Validate.mac(endpoint.mac), mtu: UInt32(network.mtu), master: bridgeIndex,
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
    /// interface up and the default route(s), in one netlink round trip.
    private func configureInside(_ namespace: NetworkNamespace, endpoint: Endpoint, routes: [Route]) throws {
        let inside = try RouteNetlink.open(in: namespace)
        guard let peer = try inside.link(named: endpoint.interface), let lo = try inside.link(named: "lo") else {
            throw NetlinkError(operation: "finding \(endpoint.interface) in \(endpoint.netns)", code: ENODEV)
        }
        var requests: [RouteRequest] = [.setLink(index: lo.index, LinkChange(up: true))]
        for ip in [endpoint.ipv4Interface] + [endpoint.ipv6Interface].compactMap({ $0 }) {
            requests.append(.addAddress(InterfaceAddress(index: peer.index, address: ip.address, prefixLength: ip.prefixLength)))
        }
        requests.append(.setLink(index: peer.index, LinkChange(up: true)))
        requests.append(.addRoute(.defaultRoute(via: IPAddress(endpoint.gateway)!)))
        if let gateway6 = endpoint.gateway6.flatMap(IPAddress.init) {
            requests.append(.addRoute(.defaultRoute(via: gateway6)))
        }
        requests += routes.map { .addRoute($0) }
        try inside.perform(requests)
    }

    /// Detaches endpoints: their veth pairs go in one kernel batch, their namespaces if
    /// netctl made them, then their records and leases. Unknown names fail before anything changes.
    @discardableResult
    public func detach(_ names: [String]) throws -> [Endpoint] {
        var seen = Set<String>()
        let endpoints = try names.filter { seen.insert($0).inserted }.map { try endpoint(named: $0) }
        try teardown(endpoints)
        for e in endpoints { logger.info("detached \(e.name)") }
        return endpoints
    }

    private func teardown(_ endpoints: [Endpoint]) throws {
        guard !endpoints.isEmpty else { return }
        // Their published ports go first, with the state change, in one transaction.
        let ports: [PublishedPort] = try store.transaction {
            var ports: [PublishedPort] = []
            for e in endpoints {
                try store.update(endpoint: e.id, state: .removing, owner: .current())
                let own = try store.ports(endpoint: e.name).map(\.port)
                try removePorts(own, of: e)
                ports += own
            }
            return ports
        }
        flushConntrack(ports)
        if detachesInBackground {
            try wrapKernel { try retire(endpoints) }
        } else {
            try wrapKernel { try host.deleteLinks(names: endpoints.map(\.hostInterface)) }
        }
        for e in endpoints where e.ownsNetns {
            try wrapKernel { try NetworkNamespace.remove(at: e.netns) }
        }
        try store.transaction {
            for e in endpoints {
                // A publish that raced this teardown may have added rows; their elements go too.
                try removePorts(try store.ports(endpoint: e.name).map(\.port), of: e)
                try store.deleteEndpoint(id: e.id)
            }
        }
    }

    /// Takes endpoints' veth pairs out of use at once and leaves their deletion to a detached
    /// process. Deleting a link waits for the kernel's RCU barrier (16-35 ms a batch here),
    /// most of a detach; this costs a few netlink round trips. At return, the host end is
    /// down, off the bridge and in the `retired` group (gc deletes any a lost process left),
    /// and the container end is down and renamed (`ncrt` + the endpoint id), so the next
    /// attach can use its name at once.
    func retire(_ endpoints: [Endpoint]) throws {
        var hostRequests: [RouteRequest] = []
        var peers: [(endpoint: Endpoint, index: Int32)] = []
        for endpoint in endpoints {
            guard let link = try host.link(named: endpoint.hostInterface),
                  link.group == LinkGroups.endpoint || link.group == LinkGroups.retired else {
                continue  // gone already, or the name is not ours any more
            }
            hostRequests.append(RouteRequest.setLink(index: link.index, LinkChange(up: false, master: 0, group: LinkGroups.retired))
                .ignoring(ENODEV))
            if let peer = link.peerIndex, peer > 0, link.peerNamespaceID != nil { peers.append((endpoint, peer)) }
        }
        guard !hostRequests.isEmpty else { return }
        try host.perform(hostRequests)
        // Retired pairs are deleted whatever happens below; without a process for it, here.
        do {
            try host.deleteLinksDetached(inGroup: LinkGroups.retired, lockDirectory: stateDirectory)
        } catch {
            logger.notice("deleting retired links in the background failed (\(error)); deleting them now")
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
                logger.notice("renaming \(peer.endpoint.interface) in \(peer.endpoint.netns) failed: \(error)")
            }
        }
    }

    // MARK: Reconciliation

    /// Reconciles state with the kernel: drops endpoints whose namespace or process is gone
    /// (or whose owner died mid-operation), deletes links and namespaces netctl made that
    /// state doesn't know, and restores missing bridges. Safe to run at any time, repeatedly.
    public func gc() throws -> GCReport {
        var report = GCReport()
        // State, kernel, state again. Every netctl link or namespace is recorded in state
        // before it is made, so one seen in the kernel whose record is missing from the read
        // after is a leftover. An endpoint is judged stale only by the read before: one that
        // turned active after the link dump would otherwise look like it lost its veth.
        let judged = try store.endpoints()
        let links = try host.links()
        let namespaceFiles = listDirectory(namespaceDirectory)
        let endpoints = try store.endpoints()
        let networks = try store.networks()
        let linkNames = Set(links.map(\.name))

        let stale = judged.filter { e in
            switch e.state {
            case .creating, .removing: return !e.owner.isAlive
            case .active: return !linkNames.contains(e.hostInterface) || !namespaceIsAlive(e)
            }
        }
        try teardown(stale)
        report.removedEndpoints = stale.map(\.name)

        let knownLinks = Set(endpoints.map(\.hostInterface)).union(networks.map(\.bridge))
        let orphans = links.filter {
            ($0.group == LinkGroups.endpoint || $0.group == LinkGroups.bridge) && !knownLinks.contains($0.name)
        }.map(\.name)
        // Retired pairs a detached deletion has not reached yet (or never will): deleted like
        // a detach would, in the background when this manager detaches that way.
        let retired = links.filter { $0.group == LinkGroups.retired }.map(\.name)
        let background = detachesInBackground && !retired.isEmpty
        if background {
            try wrapKernel { try host.deleteLinksDetached(inGroup: LinkGroups.retired, lockDirectory: stateDirectory) }
        }
        try wrapKernel { try host.deleteLinks(names: orphans + (background ? [] : retired)) }
        report.removedLinks = orphans + retired

        let knownNamespaces = Set(endpoints.filter(\.ownsNetns).map(\.netns))
        for file in namespaceFiles where !knownNamespaces.contains("\(namespaceDirectory)/\(file)") {
            try wrapKernel { try NetworkNamespace.remove(at: "\(namespaceDirectory)/\(file)") }
            report.removedNamespaces.append(file)
        }

        for network in networks where !linkNames.contains(network.bridge) {
            try wrapKernel { _ = try ensureBridge(network) }
            report.restoredBridges.append(network.bridge)
        }

        // The table's maps must hold exactly state's mappings; read both under the state
        // lock so a publish in flight is not mistaken for a leftover.
        try store.transaction {
            let expected = Set(try store.ports().flatMap { NetworkManager.dnat($0.port, $0.endpoint) })
            let kernel = try wrapKernel { try firewall().mappings() }
            if kernel == nil && expected.isEmpty && networks.isEmpty { return }
            let present = Set(kernel ?? [])
            // Always rebuilt (one atomic batch): rules someone deleted or added by hand come
            // back as state says, not only the elements.
            try wrapKernel { try firewall().commit(rulesetFromState().batch, "rebuilding the netctl table") }
            report.removedMappings = present.subtracting(expected).map(\.description).sorted()
            report.restoredMappings = expected.subtracting(present).map(\.description).sorted()
        }
        return report
    }

    /// Whether the namespace an endpoint was attached to still exists.
    func namespaceIsAlive(_ e: Endpoint) -> Bool {
        guard let identity = e.namespaceIdentity else { return false }
        var st = stat()
        let path = e.pid.map { "/proc/\($0)/ns/net" } ?? e.netns
        guard stat(path, &st) == 0 else { return false }
        return UInt64(st.st_dev) == identity.device && UInt64(st.st_ino) == identity.inode
    }

    // MARK: Helpers

    func wrapKernel<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw NetctlError.wrap(error) }
    }

    /// "nc-NAME" when that is a valid interface name, else "nc-" and a hash of the name.
    static func bridgeName(for network: String) -> String {
        let simple = "nc-\(network)"
        if simple.utf8.count <= 15, (try? Validate.interfaceName(simple)) != nil { return simple }
        var hash: UInt32 = 2_166_136_261  // FNV-1a
        for byte in network.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return "nc-" + String(hash, radix: 16).leftPadded(to: 8)
    }

    /// A stable MAC per IPv4 address (02:6e + the address), so a re-attached container
    /// keeps neighbours' ARP entries valid.
    static func mac(for ip: IPAddress) -> [UInt8] {
        [0x02, 0x6e] + ip.bytes.suffix(4)
    }

    static func randomMAC() -> [UInt8] {
        var mac = (0..<6).map { _ in UInt8.random(in: 0...255) }
        mac[0] = (mac[0] & 0xfc) | 0x02  // locally administered, unicast
        return mac
    }

    static func randomHex(bytes: Int) -> String {
        (0..<bytes).map { _ in String(UInt8.random(in: 0...255), radix: 16).leftPadded(to: 2) }.joined()
    }
}

func zip2<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}
