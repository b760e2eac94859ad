import Netlink
import Primitives

/// A bridge network: one Linux bridge, an IPv4 subnet and optionally an IPv6 one.
public struct Network: Codable, Equatable, Sendable {
    public var name: String
    public var bridge: String
    public var subnet: String
    public var gateway: String
    public var subnet6: String?
    public var gateway6: String?
    public var mtu: Int
    public var created: Timestamp
    /// No route out: no masquerade, endpoints get no default route, nothing is forwarded in
    /// or out (Docker's and Podman's `--internal`).
    public var `internal`: Bool = false
    /// Names resolve: netctl's DNS server answers the names and aliases of this network's
    /// endpoints on its gateway address (user-defined networks; not the default network).
    public var dns: Bool = false
    /// No traffic with other netctl networks, also routed through the host (the default).
    public var isolated: Bool = true
    /// Whether the bridge carries the gateway address: always, except on an internal
    /// network with no names, where it is there only when asked for.
    public var gatewayOnBridge: Bool = true
    /// Who decides the network's life: "" for netctl's own commands (it lasts until `network
    /// rm`); a runtime's name (the netavark front end's "podman") when that runtime keeps the
    /// definition and netctl makes the network on first use and removes it with its last
    /// endpoint.
    public var owner: String = ""

    var ipv4Subnet: IPNetwork { IPNetwork(subnet)! }
    var ipv4Gateway: IPAddress { IPAddress(gateway)! }
    var ipv6Subnet: IPNetwork? { subnet6.flatMap { IPNetwork($0) } }
    var ipv6Gateway: IPAddress? { gateway6.flatMap { IPAddress($0) } }
}

/// A container's attachment to a network: a veth pair, host end on the bridge, the other
/// end inside the container's network namespace.
public struct Endpoint: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Recorded, kernel objects being made; its owner process is at work.
        case creating
        case active
        /// Being taken down.
        case removing
    }

    public var id: String
    public var name: String
    public var network: String
    /// The veth end on the host, enslaved to the bridge.
    public var hostInterface: String
    /// The interface name inside the namespace, e.g. eth0.
    public var interface: String
    public var mac: String
    /// Address with prefix, e.g. 172.17.0.2/16.
    public var ipv4: String
    public var ipv6: String?
    public var gateway: String
    public var gateway6: String?
    public var netns: String
    public var pid: Int32?
    /// True when netctl created the namespace (attach --new) and removes it on detach.
    public var ownsNetns: Bool
    public var state: State
    public var created: Timestamp
    /// Names besides `name` this endpoint answers to on its network (Docker's network aliases).
    public var aliases: [String] = []
    /// Of a namespace's endpoints that may hold its default route, the highest priority
    /// holds it (ties: the first attached), as Docker's gateway priority.
    public var gatewayPriority: Int = 0
    /// False: never the namespace's default route (netavark's `no_default_route`).
    public var mayHoldDefaultRoute: Bool = true
    /// Upstream name servers of its own (`--dns`): the name server forwards this endpoint's
    /// other queries there rather than to the host's.
    public var dnsServers: [String] = []
    /// Increases with every attach: what breaks ties between equal priorities.
    var attachOrder: Int64 = 0

    var namespaceIdentity: NetworkNamespace.Identity? = nil

    /// `ipv4` and `ipv6` as address + prefix length.
    var ipv4Interface: (address: IPAddress, prefixLength: Int) { Endpoint.split(ipv4)! }
    var ipv6Interface: (address: IPAddress, prefixLength: Int)? { ipv6.flatMap(Endpoint.split) }

    private static func split(_ cidr: String) -> (address: IPAddress, prefixLength: Int)? {
        let parts = cidr.split(separator: "/")
        guard parts.count == 2, let ip = IPAddress(String(parts[0])), let length = Int(parts[1]) else { return nil }
        return (ip, length)
    }
    var owner = ProcessIdentity(pid: 0, startTime: 0)

    enum CodingKeys: String, CodingKey {
        case id, name, network, hostInterface, interface, mac, ipv4, ipv6, gateway, gateway6,
             netns, pid, ownsNetns, state, created, aliases, gatewayPriority, mayHoldDefaultRoute, dnsServers
    }
}
