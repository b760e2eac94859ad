import CDetached
import Firewall
import Glibc
import Logging
import Netlink
import Primitives

/// The library a runtime embeds: networks, endpoints, published ports and their
/// reconciliation with the kernel. Every CLI command, CNI call and runtime operation is one
/// call here. Each concern has a type of its own behind this facade:
///
/// - `NetworkRegistry`: networks, their bridges and address leases (IPAM);
/// - `Attachments`: endpoints, their veth pairs and what is configured inside the namespace;
/// - `PortPublisher`: published ports and netctl's nftables table, where each is a map element;
/// - `Reconciler`: `gc` and `verify`, state against the kernel;
/// - `RelayClaims`: which process relays the ports the kernel cannot serve.
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

    let context: ManagerContext
    let registry: NetworkRegistry
    let attachments: Attachments
    let publisher: PortPublisher
    let reconciler: Reconciler
    let relayClaims: RelayClaims

    public var stateDirectory: String { context.stateDirectory }

    /// When set, detaching does not wait for the kernel to delete veth pairs: they are made
    /// unusable and their names free at once (see `Attachments.retire`), and a detached
    /// process deletes them. For callers that pay every millisecond of a detach, such as the
    /// CNI plugin's DEL.
    public var detachesInBackground: Bool {
        get { context.detachesInBackground }
        set { context.detachesInBackground = newValue }
    }

    /// Opens (creating if needed) the state under `stateDirectory`. `host` defaults to a
    /// netlink socket in the calling thread's namespace.
    public init(stateDirectory: String = NetworkManager.defaultStateDirectory,
                host: RouteNetlink? = nil, firewall: NetlinkSocket? = nil,
                logger: Logger = Logger(label: "netctl")) throws {
        try NetworkManager.requirePrivilege()
        context = try ManagerContext(stateDirectory: stateDirectory, host: host, firewall: firewall, logger: logger)
        publisher = PortPublisher(context)
        registry = NetworkRegistry(context, publisher: publisher)
        attachments = Attachments(context, registry: registry, publisher: publisher)
        reconciler = Reconciler(context, registry: registry, attachments: attachments, publisher: publisher)
        relayClaims = RelayClaims(context)
        if context.store.discardedPreviousBoot {
            logger.notice("state from before the last reboot was discarded; networks will be restored on use")
        }
    }

    /// Refuses at once without CAP_NET_ADMIN: everything netctl does needs it, and without it
    /// the kernel's refusals come late and say little (an nftables request times out).
    public static func requirePrivilege() throws {
        if !hasEffectiveCapability(12) { throw NetctlError.needsPrivilege }
    }

    /// For a short-lived process (a CNI call, a CLI command), before it exits: after a batch
    /// that deleted something, the last close of an nftables or conntrack socket waits for the
    /// kernel to release it (a full RCU grace period), so a detached process takes copies of
    /// them and closes them after this process has exited. Nothing happens when nothing was
    /// deleted (an added element's close does not wait), since the hand-off costs a process.
    /// Best effort.
    public func holdSocketsUntilExit() {
        context.holdSocketsUntilExit()
    }

    /// The name rule for networks, endpoints and anything named after them (a runtime's
    /// containers are endpoints of the same name): `invalidName` if `name` breaks it.
    public static func checkName(_ name: String, kind: String) throws {
        try Validate.objectName(name, kind: kind)
    }

    /// The state's change counter: it moves whenever another process commits a change
    /// (see `StateStore.dataVersion`); how long-running services notice changes.
    public func stateVersion() throws -> Int64 { try context.store.dataVersion() }

    // MARK: Networks

    public func networks() throws -> [Network] { try registry.networks() }

    public func network(named name: String) throws -> Network { try registry.network(named: name) }

    @discardableResult
    public func createNetwork(_ spec: NetworkSpec) throws -> Network { try registry.create(spec) }

    /// Removes a network and its bridge. With `force`, detaches its endpoints first;
    /// without, refuses while any are attached. Returns the endpoints it detached.
    @discardableResult
    public func removeNetwork(named name: String, force: Bool = false) throws -> [String] {
        let network = try registry.network(named: name)
        let attached = try attachments.endpoints(network: name)
        if !attached.isEmpty {
            guard force else { throw NetctlError.networkInUse(network: name, endpoints: attached.map(\.name)) }
            try attachments.detach(attached.map(\.name))
        }
        try registry.remove(network)
        return attached.map(\.name)
    }

    // MARK: Endpoints

    public func endpoints(network: String? = nil) throws -> [Endpoint] {
        if let network { _ = try registry.network(named: network) }
        return try attachments.endpoints(network: network)
    }

    public func endpoint(named name: String) throws -> Endpoint { try attachments.endpoint(named: name) }

    /// Connects a network namespace to a network: a veth pair with its peer created
    /// directly inside the namespace, an address from IPAM, `lo` up and a default route
    /// through the gateway; then publishes the request's ports. All or nothing: a refusal or
    /// failure at any step undoes the earlier ones (a network made for this attach included).
    public func attach(_ request: AttachRequest) throws -> Endpoint {
        let target = try attachments.check(request)
        let (network, madeNetwork) = try registry.networkForAttach(request.network, create: request.createNetwork,
                                                                   ip: request.ip, routes: request.routes)
        do {
            // Its ports are recorded with it and installed as it becomes active.
            return try attachments.attach(request, target: target, to: network)
        } catch {
            // A network made for this attach alone goes with it: a refused attach changes
            // nothing. (It stays if another endpoint joined it meanwhile.)
            if madeNetwork { _ = try? registry.remove(network) }
            throw error
        }
    }

    /// Detaches endpoints: their ports, their veth pairs in one kernel batch, their
    /// namespaces if netctl made them, then their records and leases. Unknown names fail
    /// before anything changes.
    @discardableResult
    public func detach(_ names: [String]) throws -> [Endpoint] { try attachments.detach(names) }

    /// Routes for inside an endpoint's namespace, checked against the network: what attach
    /// installs for `AttachRequest.routes`.
    public func extraRoutes(_ specs: [StaticRoute], network: Network) throws -> [Route] {
        try attachments.extraRoutes(specs, network: network)
    }

    /// The bridge and host veth of an attached endpoint, read from the kernel.
    public func links(of endpoint: Endpoint, on network: Network) throws -> EndpointLinks {
        try attachments.links(of: endpoint, on: network)
    }

    // MARK: Published ports

    /// Publishes ports of an endpoint. Host ports left open (0, or a range) are chosen
    /// here: never one another mapping claims or another program holds (unless
    /// `probeHostPorts` is false: a runtime that reserves host ports itself). All or nothing.
    @discardableResult
    public func publish(endpoint name: String, _ specs: [PortMapping], backend: PortBackend = .nft,
                        probeHostPorts: Bool = true) throws -> [PublishedPort] {
        try publisher.publish(endpoint: name, specs, backend: backend, probe: probeHostPorts)
    }

    /// Removes published ports of an endpoint: those matching `specs`, or all of them.
    @discardableResult
    public func unpublish(endpoint name: String, _ specs: [(text: String, mappings: [PortMapping])] = []) throws -> [PublishedPort] {
        try publisher.unpublish(endpoint: try attachments.endpoint(named: name), specs)
    }

    /// Published ports, of every endpoint or of one.
    public func ports(endpoint name: String? = nil) throws -> [PublishedPort] {
        if let name { _ = try attachments.endpoint(named: name) }
        return try publisher.ports(endpoint: name)
    }

    /// Moves all published ports of endpoint `source` to endpoint `target` (see
    /// `PortPublisher.move`); returns them as they are now.
    @discardableResult
    public func movePorts(from source: String, to target: String) throws -> [PublishedPort] {
        try publisher.move(from: try attachments.endpoint(named: source), to: try attachments.endpoint(named: target))
    }

    /// The endpoint holding the default route of the namespace endpoint `name` is in (IPv4;
    /// where a container's published ports go); nil when none may (all internal, say).
    /// `excluding`: as if that endpoint were gone (which one would hold it next).
    public func defaultRouteEndpoint(sharingNamespaceWith name: String, excluding: String? = nil) throws -> Endpoint? {
        let endpoint = try attachments.endpoint(named: name)
        guard let identity = endpoint.namespaceIdentity else { return nil }
        let networks = try Dictionary(uniqueKeysWithValues: registry.networks().map { ($0.name, $0) })
        return Attachments.defaultRouteHolder(try attachments.endpoints(in: identity).filter { $0.name != excluding }, networks, ipv6: false)
    }

    /// Reinstalls the whole netctl table from state in one atomic batch: after
    /// `nft flush ruleset`, a firewalld reload or anything else that wiped or changed it.
    /// Returns the number of map elements installed.
    @discardableResult
    public func reload() throws -> Int { try publisher.reload() }

    /// Rebuilds the table if it is not what state says (someone deleted from it); whether it
    /// did. Cheap when intact: a few dumps.
    public func repairFirewall() throws -> Bool { try publisher.repairTable() }

    /// Why state cannot be trusted to reconcile the kernel by (see `StateProblem`), if so.
    public var stateProblem: StateProblem? { context.store.integrityProblem }

    /// Takes state as it is for the truth from now on: after restoring or rebuilding
    /// state.db on purpose (`netctl gc --accept-state`).
    public func acceptState() throws { try context.store.acceptState() }

    /// A guard against traffic from the wire to 127/8 that `nft flush ruleset` cannot remove:
    /// a table owned by the returned object's socket, for as long as it lives.
    public func ownedGuard() throws -> AnyObject { try publisher.ownedGuard() }

    /// Tracked flows of the kernel path (conntrack) per published port: clients of the
    /// port's DNAT share right now.
    public func kernelFlows(_ ports: [PublishedPort]) throws -> [PublishedPort: Int] { try publisher.kernelFlows(ports) }

    // MARK: Relays (the proxy's share)

    /// Claims the relaying of `scope` for this process, and returns what it is to relay now
    /// (see `RelayClaims` for the rule). Called again on every change of state; cheap when
    /// nothing changed.
    public func relayAssignment(for scope: RelayScope) throws -> RelayAssignment { try relayClaims.assign(scope) }

    /// Gives up this process's claim on `scope` (when its service stops).
    public func releaseRelays(_ scope: RelayScope) { relayClaims.release(scope) }

    // MARK: Reconciliation

    /// Reconciles state with the kernel: drops endpoints whose namespace or process is gone
    /// (or whose owner died mid-operation), deletes links and namespaces netctl made that
    /// state doesn't know, restores missing bridges and the table. Safe at any time, repeatedly.
    public func gc() throws -> GCReport { try reconciler.gc() }

    /// Checks that an endpoint is whole (see `Reconciler.verify`); changes nothing.
    public func verify(endpoint name: String, mac: String? = nil) throws { try reconciler.verify(endpoint: name, mac: mac) }
}

/// What the parts of a `NetworkManager` share: the state, the kernel's sockets and the log.
final class ManagerContext {
    let stateDirectory: String
    let store: StateStore
    let host: RouteNetlink
    let logger: Logger
    var detachesInBackground = false
    private let firewallSocket: NetlinkSocket?
    private var firewallClient: NftClient?
    private var conntrackClient: ConntrackClient?

    init(stateDirectory: String, host: RouteNetlink?, firewall: NetlinkSocket?, logger: Logger) throws {
        self.stateDirectory = stateDirectory
        self.firewallSocket = firewall
        self.logger = logger
        do {
            try makeDirectories(stateDirectory)
            try makeDirectories(stateDirectory + "/netns")
        } catch let error as SystemError {
            throw NetctlError.stateUnavailable(path: stateDirectory, reason: error.description)
        }
        // State someone else could write would let them steer netctl (which gc removes,
        // what a port maps to): its directory is this user's alone.
        var info = stat()
        guard stat(stateDirectory, &info) == 0 else {
            throw NetctlError.stateUnavailable(path: stateDirectory, reason: errorMessage(errno))
        }
        guard info.st_uid == geteuid() else {
            throw NetctlError.stateUnavailable(path: stateDirectory, reason: "it belongs to user \(info.st_uid), not to this one (\(geteuid()))")
        }
        if info.st_mode & 0o077 != 0 { chmod(stateDirectory, 0o700) }
        store = try StateStore(path: stateDirectory + "/state.db")
        do {
            self.host = try host ?? RouteNetlink()
        } catch {
            throw NetctlError.wrap(error)
        }
    }

    var namespaceDirectory: String { stateDirectory + "/netns" }

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

    func holdSocketsUntilExit() {
        guard firewallClient?.sentRemovals == true else { return }
        let descriptors = [firewallClient?.descriptor, conntrackClient?.descriptor].compactMap { $0 }
        guard !descriptors.isEmpty else { return }
        _ = descriptors.withUnsafeBufferPointer { cdetached_hold_until_exit($0.baseAddress, Int32($0.count)) }
    }

    func wrapKernel<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw NetctlError.wrap(error) }
    }
}

func zip2<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}

func randomHex(bytes: Int) -> String {
    (0..<bytes).map { _ in String(UInt8.random(in: 0...255), radix: 16).leftPadded(to: 2) }.joined()
}
