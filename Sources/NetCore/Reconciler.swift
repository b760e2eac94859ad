import Glibc
import Netlink
import Primitives

/// State against the kernel: `gc` repairs what disagrees, `verify` reports it.
final class Reconciler {
    private let context: ManagerContext
    private let registry: NetworkRegistry
    private let attachments: Attachments
    private let publisher: PortPublisher
    private var store: StateStore { context.store }
    private var host: RouteNetlink { context.host }

    init(_ context: ManagerContext, registry: NetworkRegistry, attachments: Attachments, publisher: PortPublisher) {
        self.context = context
        self.registry = registry
        self.attachments = attachments
        self.publisher = publisher
    }

    /// Drops endpoints whose namespace or process is gone (or whose owner died
    /// mid-operation), deletes links and namespaces netctl made that state doesn't know,
    /// restores missing bridges, and rebuilds the table from state.
    func gc() throws -> GCReport {
        try store.requireTrusted()
        var report = GCReport()
        // State, kernel, state again. Every netctl link or namespace is recorded in state
        // before it is made, so one seen in the kernel whose record is missing from the read
        // after is a leftover. An endpoint is judged stale only by the read before: one that
        // turned active after the link dump would otherwise look like it lost its veth.
        let judged = try store.endpoints()
        let links = try host.links()
        let namespaceFiles = listDirectory(context.namespaceDirectory)
        let endpoints = try store.endpoints()
        let networks = try store.networks()
        let linkNames = Set(links.map(\.name))

        let stale = judged.filter { e in
            switch e.state {
            case .creating, .removing: return !e.owner.isAlive
            case .active: return !linkNames.contains(e.hostInterface) || !Reconciler.namespaceIsAlive(e)
            }
        }
        try attachments.teardown(stale)
        report.removedEndpoints = stale.map(\.name)

        let knownLinks = Set(endpoints.map(\.hostInterface)).union(networks.map(\.bridge))
        let orphans = links.filter {
            ($0.group == LinkGroups.endpoint || $0.group == LinkGroups.bridge) && !knownLinks.contains($0.name)
        }.map(\.name)
        // Retired pairs a detached deletion has not reached yet (or never will): deleted like
        // a detach would, in the background when this manager detaches that way.
        let retired = links.filter { $0.group == LinkGroups.retired }.map(\.name)
        let background = context.detachesInBackground && !retired.isEmpty
        if background {
            try context.wrapKernel { try host.deleteLinksDetached(inGroup: LinkGroups.retired, lockDirectory: context.stateDirectory) }
        }
        try context.wrapKernel { try host.deleteLinks(names: orphans + (background ? [] : retired)) }
        report.removedLinks = orphans + retired

        let knownNamespaces = Set(endpoints.filter(\.ownsNetns).map(\.netns))
        for file in namespaceFiles where !knownNamespaces.contains("\(context.namespaceDirectory)/\(file)") {
            try context.wrapKernel { try NetworkNamespace.remove(at: "\(context.namespaceDirectory)/\(file)") }
            report.removedNamespaces.append(file)
        }

        for network in networks where !linkNames.contains(network.bridge) {
            try context.wrapKernel { _ = try registry.ensureBridge(network) }
            report.restoredBridges.append(network.bridge)
        }

        let table = try publisher.rebuildTable()
        report.removedMappings = table.removed
        report.restoredMappings = table.restored
        return report
    }

    /// Whether the namespace an endpoint was attached to still exists.
    static func namespaceIsAlive(_ e: Endpoint) -> Bool {
        guard let identity = e.namespaceIdentity else { return false }
        var st = stat()
        let path = e.pid.map { "/proc/\($0)/ns/net" } ?? e.netns
        guard stat(path, &st) == 0 else { return false }
        return UInt64(st.st_dev) == identity.device && UInt64(st.st_ino) == identity.inode
    }

    /// Checks that an endpoint is whole: its record is active, its host veth is up on the
    /// network's bridge, its namespace is the one it was attached to, and inside it the
    /// interface is up with the endpoint's address(es) and default route(s). Throws
    /// `endpointBroken` naming the first thing that is wrong; changes nothing. `mac` is the
    /// address the interface should have when something after attach changed it on purpose
    /// (e.g. a CNI `tuning` plugin); by default the one attach gave it.
    func verify(endpoint name: String, mac: String? = nil) throws {
        let e = try attachments.endpoint(named: name)
        func broken(_ reason: String) -> NetctlError { .endpointBroken(name, reason: reason) }
        guard e.state == .active else { throw NetctlError.endpointNotActive(name) }
        let network = try registry.network(named: e.network)
        let links = try context.wrapKernel { try host.links() }
        guard let bridge = links.first(where: { $0.name == network.bridge }) else {
            throw broken("bridge \(network.bridge) is missing")
        }
        guard let veth = links.first(where: { $0.name == e.hostInterface }) else {
            throw broken("its host interface \(e.hostInterface) is missing")
        }
        guard veth.master == bridge.index else { throw broken("\(e.hostInterface) is not on bridge \(network.bridge)") }
        guard veth.isUp else { throw broken("\(e.hostInterface) is down") }
        guard Reconciler.namespaceIsAlive(e) else { throw broken("its network namespace \(e.netns) is gone or was replaced") }
        let namespace = try context.wrapKernel { e.pid != nil ? try NetworkNamespace(pid: e.pid!) : try NetworkNamespace(path: e.netns) }
        let inside = try context.wrapKernel { try RouteNetlink.open(in: namespace) }
        guard let peer = try context.wrapKernel({ try inside.link(named: e.interface) }) else {
            throw broken("interface \(e.interface) is missing in \(e.netns)")
        }
        guard peer.isUp else { throw broken("\(e.interface) is down in \(e.netns)") }
        let expectedMAC = (mac ?? e.mac).lowercased()
        let actualMAC = MACAddress(bytes: peer.mac)?.description ?? "none"
        guard actualMAC == expectedMAC else { throw broken("\(e.interface) has MAC \(actualMAC), not \(expectedMAC)") }
        let addresses = try context.wrapKernel { try inside.addresses() }.filter { $0.index == peer.index }
        for ip in [e.ipv4Interface] + [e.ipv6Interface].compactMap({ $0 }) {
            guard addresses.contains(where: { $0.address == ip.address && $0.prefixLength == ip.prefixLength }) else {
                throw broken("\(e.interface) lacks its address \(ip.address)/\(ip.prefixLength)")
            }
        }
        // The default route of each family this endpoint holds among the namespace's.
        let routes = try context.wrapKernel { try inside.routes(family: UInt8(AF_INET)) + inside.routes(family: UInt8(AF_INET6)) }
        let neighbours = try attachments.endpoints(in: namespace.identity)
        let networks = try Dictionary(uniqueKeysWithValues: store.networks().map { ($0.name, $0) })
        for (ipv6, gateway) in [(false, Optional(e.gateway)), (true, e.gateway6)] {
            guard let gateway, Attachments.defaultRouteHolder(neighbours, networks, ipv6: ipv6)?.id == e.id else { continue }
            guard routes.contains(where: { $0.destination == nil && $0.gateway == IPAddress(gateway) }) else {
                throw broken("the default route via \(gateway) is missing in \(e.netns)")
            }
        }
    }
}
