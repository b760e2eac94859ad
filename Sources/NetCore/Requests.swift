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

