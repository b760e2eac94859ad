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

extension NetworkManager {
    /// Routes for inside an endpoint's namespace, checked against the network: destinations
    /// as subnets (host bits masked), next hops default to the network's gateway of the
    /// family. Default routes of a family the network serves are dropped (attach always adds
    /// them). What attach installs for `AttachRequest.routes`.
    public func extraRoutes(_ specs: [StaticRoute], network: Network) throws -> [Route] {
        try specs.compactMap { spec in
            let (destination, nextHop) = try NetworkManager.checkRoute(spec, network: network.name, servesIPv6: network.ipv6Gateway != nil)
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
    public func links(of endpoint: Endpoint, on network: Network) throws -> EndpointLinks {
        let name = endpoint.name
        guard let bridge = try wrapKernel({ try host.link(named: network.bridge) }) else {
            throw NetctlError.endpointBroken(name, reason: "bridge \(network.bridge) is missing; run `netctl gc` to restore it")
        }
        guard let veth = try wrapKernel({ try host.link(named: endpoint.hostInterface) }) else {
            throw NetctlError.endpointBroken(name, reason: "its host interface \(endpoint.hostInterface) is missing; detach and attach it again")
        }
        return EndpointLinks(bridge: bridge.name, bridgeMAC: bridge.mac.macString, hostInterface: veth.name,
                             hostMAC: veth.mac.macString, mtu: Int(veth.mtu))
    }

    /// Checks that an endpoint is whole: its record is active, its host veth is up on the
    /// network's bridge, its namespace is the one it was attached to, and inside it the
    /// interface is up with the endpoint's address(es) and default route(s). Throws
    /// `endpointBroken` naming the first thing that is wrong; changes nothing. `mac` is the
    /// address the interface should have when something after attach changed it on purpose
    /// (e.g. a CNI `tuning` plugin); by default the one attach gave it.
    public func verify(endpoint name: String, mac: String? = nil) throws {
        let e = try endpoint(named: name)
        func broken(_ reason: String) -> NetctlError { .endpointBroken(name, reason: reason) }
        guard e.state == .active else { throw NetctlError.endpointNotActive(name) }
        let network = try self.network(named: e.network)
        let links = try wrapKernel { try host.links() }
        guard let bridge = links.first(where: { $0.name == network.bridge }) else {
            throw broken("bridge \(network.bridge) is missing")
        }
        guard let veth = links.first(where: { $0.name == e.hostInterface }) else {
            throw broken("its host interface \(e.hostInterface) is missing")
        }
        guard veth.master == bridge.index else { throw broken("\(e.hostInterface) is not on bridge \(network.bridge)") }
        guard veth.isUp else { throw broken("\(e.hostInterface) is down") }
        guard namespaceIsAlive(e) else { throw broken("its network namespace \(e.netns) is gone or was replaced") }
        let namespace = try wrapKernel { e.pid != nil ? try NetworkNamespace(pid: e.pid!) : try NetworkNamespace(path: e.netns) }
        let inside = try wrapKernel { try RouteNetlink.open(in: namespace) }
        guard let peer = try wrapKernel({ try inside.link(named: e.interface) }) else {
            throw broken("interface \(e.interface) is missing in \(e.netns)")
        }
        guard peer.isUp else { throw broken("\(e.interface) is down in \(e.netns)") }
        let expectedMAC = (mac ?? e.mac).lowercased()
        guard peer.mac.macString == expectedMAC else { throw broken("\(e.interface) has MAC \(peer.mac.macString), not \(expectedMAC)") }
        let addresses = try wrapKernel { try inside.addresses() }.filter { $0.index == peer.index }
        for ip in [e.ipv4Interface] + [e.ipv6Interface].compactMap({ $0 }) {
            guard addresses.contains(where: { $0.address == ip.address && $0.prefixLength == ip.prefixLength }) else {
                throw broken("\(e.interface) lacks its address \(ip.address)/\(ip.prefixLength)")
            }
        }
        let routes = try wrapKernel { try inside.routes(family: UInt8(AF_INET)) + inside.routes(family: UInt8(AF_INET6)) }
        for gateway in [e.gateway] + [e.gateway6].compactMap({ $0 }) {
            guard routes.contains(where: { $0.destination == nil && $0.gateway == IPAddress(gateway) }) else {
                throw broken("the default route via \(gateway) is missing in \(e.netns)")
            }
        }
    }
}
