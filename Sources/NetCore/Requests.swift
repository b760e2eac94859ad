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
    /// No route out (see `Network.internal`).
    public var `internal`: Bool
    /// Names resolve on it (see `Network.dns`); nil: yes, except on the default network.
    public var dns: Bool?
    /// No traffic with other netctl networks (see `Network.isolated`).
    public var isolated: Bool
    /// Whether the gateway address goes on the bridge; nil: as `Network.gatewayOnBridge` says.
    public var gatewayOnBridge: Bool?
    /// See `Network.owner`.
    public var owner: String

    public init(name: String, subnet: String? = nil, gateway: String? = nil, bridge: String? = nil,
                subnet6: String? = nil, gateway6: String? = nil, mtu: Int? = nil, internal: Bool = false,
                dns: Bool? = nil, isolated: Bool = true, gatewayOnBridge: Bool? = nil, owner: String = "") {
        self.name = name; self.subnet = subnet; self.gateway = gateway; self.bridge = bridge
        self.subnet6 = subnet6; self.gateway6 = gateway6; self.mtu = mtu
        self.internal = `internal`; self.dns = dns; self.isolated = isolated
        self.gatewayOnBridge = gatewayOnBridge; self.owner = owner
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
    /// A static IPv6 address (the network needs an IPv6 subnet).
    public var ip6: String?
    public var name: String?
    /// The interface name inside the namespace; nil: the first free eth0, eth1, ...
    public var interface: String?
    public var mac: String?
    /// Names besides `name` the endpoint answers to on its network.
    public var aliases: [String]
    /// Which of a namespace's networks holds its default route: the highest priority, ties
    /// going to the first attached (Docker's gateway priority; netavark's metric, negated).
    public var gatewayPriority: Int
    /// False: this endpoint never holds the namespace's default route.
    public var defaultRoute: Bool
    /// Upstream name servers for this endpoint's queries (`--dns`); empty: the host's.
    public var dnsServers: [String]
    /// Ports to publish once attached (`-p`); if publishing fails, the attach is undone.
    public var ports: [PortMapping]
    public var portBackend: PortBackend
    /// Routes added inside the namespace besides the default route(s), each through the
    /// network's gateway of its family unless it names one. Not recorded in state.
    public var routes: [StaticRoute]
    /// Makes `network` from this spec if it does not exist yet, once the request's own
    /// checks have passed; a refused attach removes it again.
    public var createNetwork: NetworkSpec?

    public init(network: String? = nil, target: Target, ip: String? = nil, ip6: String? = nil, name: String? = nil,
                interface: String? = nil, mac: String? = nil, aliases: [String] = [], gatewayPriority: Int = 0,
                defaultRoute: Bool = true, dnsServers: [String] = [], ports: [PortMapping] = [], portBackend: PortBackend = .nft,
                routes: [StaticRoute] = [], createNetwork: NetworkSpec? = nil) {
        self.network = network; self.target = target; self.ip = ip; self.ip6 = ip6; self.name = name
        self.interface = interface; self.mac = mac; self.aliases = aliases; self.gatewayPriority = gatewayPriority
        self.defaultRoute = defaultRoute; self.dnsServers = dnsServers; self.ports = ports; self.portBackend = portBackend
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

