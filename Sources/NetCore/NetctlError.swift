import Netlink
import Primitives

/// An input of a request that an error is about. Front ends name it in their own words (the
/// CLI's `--ip`, a CNI configuration's "the requested IP"); see `NetctlError.message(naming:)`.
public enum InputField: String, Sendable, CaseIterable {
    /// The endpoint's IPv4 address (`AttachRequest.ip`).
    case ip
    /// The endpoint's IPv6 address (`AttachRequest.ip6`).
    case ip6
    case gateway, gateway6, subnet, subnet6

    /// How the library names it.
    public var plainName: String {
        switch self {
        case .ip: return "the requested address"
        case .ip6: return "the requested IPv6 address"
        case .gateway: return "the gateway"
        case .gateway6: return "the IPv6 gateway"
        case .subnet: return "the subnet"
        case .subnet6: return "the IPv6 subnet"
        }
    }
}

/// What is wrong with a given address.
public enum AddressProblem: Equatable, Sendable {
    /// Not an address of the family the input takes.
    case notAnAddress(ipv4: Bool)
    case outside(subnet: String)
    case networkAddress(subnet: String)
    case broadcastAddress(subnet: String)
    /// It is the gateway of the network.
    case isGateway(network: String)
    /// A gateway given without its subnet.
    case needsSubnet
}

/// What is wrong with a given subnet.
public enum SubnetProblem: Equatable, Sendable {
    case notCIDR
    /// An IPv6 subnet where an IPv4 one goes, or the other way round.
    case wrongFamily
    case hostBitsSet(masked: String)
    case tooSmall(prefix: Int, maxPrefix: Int)
    case tooLarge(prefix: Int, minPrefix: Int)
}

/// Why a mapping cannot be published with kernel DNAT alone.
public enum ProxyNeed: Equatable, Sendable {
    /// The kernel does not DNAT from ::1.
    case ipv6Loopback
    /// An IPv6 host address for an endpoint without IPv6.
    case noIPv6(endpoint: String)
    /// The plan would relay SCTP, which the proxy does not.
    case sctpNotRelayed
}

/// Every failure of the library: what failed, with the facts (which subnet, which endpoint,
/// which port). The words of what to do next belong to each front end (CLI flags, CNI
/// configuration keys), which adds them; `description` is the plain statement.
public enum NetctlError: Error, CustomStringConvertible, Equatable {
    case invalidName(kind: String, value: String, reason: String)
    case invalidInterfaceName(String, reason: String)
    case invalidMAC(String)
    case invalidSubnet(String, field: InputField, problem: SubnetProblem)
    case invalidAddress(String, field: InputField, problem: AddressProblem)
    case subnetOverlapsNetwork(subnet: String, network: String, other: String)
    case subnetOverlapsRoute(subnet: String, route: String)
    case noFreeSubnet
    case networkExists(String)
    case networkNotFound(String)
    case bridgeInUse(bridge: String, network: String)
    case bridgeNotOurs(String)
    case networkInUse(network: String, endpoints: [String])
    case endpointExists(String)
    case endpointNotFound(String)
    case addressTaken(address: String, network: String, endpoint: String)
    case addressPoolExhausted(network: String, subnet: String)
    case namespaceExists(String)
    /// The target namespace is the host's own (the caller's).
    case hostNamespace(String)
    case interfaceExistsInNamespace(interface: String, namespace: String)
    /// The namespace has a default route of the family already (another network's).
    case defaultRouteExists(namespace: String, gateway: String)
    case invalidPortSpec(spec: String, reason: String)
    case portAlreadyPublished(port: String, hostIP: String, endpoint: String)
    case portInUse(port: String, hostIP: String)
    case noFreeHostPort(range: String, proto: String)
    case hostAddressNotLocal(String)
    case needsProxy(spec: String, need: ProxyNeed)
    /// Ports are not published from an internal network (Docker's rule): nothing reaches it.
    case publishOnInternalNetwork(endpoint: String, network: String)
    case portNotPublished(endpoint: String, spec: String)
    case endpointNotActive(String)
    case endpointBroken(String, reason: String)
    case invalidRoute(String, reason: String)
    case relaysClaimed(scope: String, pid: Int32)
    case namespace(NamespaceError)
    /// The kernel refused or failed a request. `unchanged`: state and ruleset are as before.
    case kernel(NetlinkError, unchanged: Bool)
    /// A sysctl could not be set (netctl needs root).
    case sysctl(name: String, value: String, code: Int32)
    /// The state directory or database cannot be opened or created.
    case stateUnavailable(path: String, reason: String)
    /// A state database operation failed.
    case state(String)
    /// The process lacks CAP_NET_ADMIN.
    case needsPrivilege
    /// State does not look like the state this directory had (emptied, replaced, rolled
    /// back): refused for anything that would make the kernel match it.
    case stateSuspect(path: String, problem: StateProblem)

    public var description: String { message(naming: \.plainName) }

    /// The failure in words, naming inputs with `name`.
    public func message(naming name: (InputField) -> String) -> String {
        switch self {
        case .invalidName(let kind, let value, let reason):
            return "invalid \(kind) name \(quoted(value)): \(reason)"
        case .invalidInterfaceName(let name, let reason):
            return "invalid interface name \(quoted(name)): \(reason); use 1-15 bytes without '/', ':' or spaces"
        case .invalidMAC(let mac):
            return "invalid MAC address \(quoted(mac)): use six hex octets like 02:42:ac:11:00:02 with a unicast first octet"
        case .invalidSubnet(let subnet, let field, let problem):
            let reason: String
            switch problem {
            case .notCIDR: reason = "write it as ADDRESS/PREFIX, e.g. \(field == .subnet6 ? "fd00:1::/64" : "10.10.0.0/24")"
            case .wrongFamily:
                reason = field == .subnet6 ? "\(name(.subnet6)) takes an IPv6 subnet"
                                           : "\(name(.subnet)) takes an IPv4 subnet; use \(name(.subnet6)) for IPv6"
            case .hostBitsSet(let masked): reason = "host bits are set; did you mean \(masked)?"
            case .tooSmall(let prefix, let maxPrefix): reason = "a /\(prefix) has no room for a gateway and endpoints; use /\(maxPrefix) or shorter"
            case .tooLarge(let prefix, let minPrefix): reason = "a /\(prefix) is too large for one bridge; use /\(minPrefix) or longer"
            }
            return "invalid subnet \(quoted(subnet)): \(reason)"
        case .invalidAddress(let address, let field, let problem):
            let reason: String
            switch problem {
            case .notAnAddress(let ipv4): reason = "\(name(field)) must be an IPv\(ipv4 ? 4 : 6) address"
            case .outside(let subnet): reason = "\(name(field)) is outside the subnet \(subnet)"
            case .networkAddress(let subnet): reason = "\(name(field)) is the network address of \(subnet)"
            case .broadcastAddress(let subnet): reason = "\(name(field)) is the broadcast address of \(subnet)"
            case .isGateway(let network): reason = "\(name(field)) is the gateway of network \(network)"
            case .needsSubnet: reason = "\(name(field)) needs \(name(field == .gateway6 || field == .ip6 ? .subnet6 : .subnet))"
            }
            return "invalid address \(quoted(address)): \(reason)"
        case .subnetOverlapsNetwork(let subnet, let network, let other):
            return "subnet \(subnet) overlaps network \(network) (\(other))"
        case .subnetOverlapsRoute(let subnet, let route):
            return "subnet \(subnet) overlaps the host route \(route)"
        case .noFreeSubnet:
            return "no free subnet left in the default pools (172.17-31.0.0/16, 192.168.0.0/16 in /20s)"
        case .networkExists(let name):
            return "network \(name) already exists"
        case .networkNotFound(let name):
            return "no network named \(name)"
        case .bridgeInUse(let bridge, let network):
            return "bridge \(bridge) is already used by network \(network)"
        case .bridgeNotOurs(let bridge):
            return "interface \(bridge) exists and was not created by netctl"
        case .networkInUse(let network, let endpoints):
            return "network \(network) has attached endpoints (\(endpoints.joined(separator: ", ")))"
        case .endpointExists(let name):
            return "endpoint \(name) already exists"
        case .endpointNotFound(let name):
            return "no endpoint named \(name)"
        case .addressTaken(let address, let network, let endpoint):
            return "address \(address) on network \(network) is already used by endpoint \(endpoint)"
        case .addressPoolExhausted(let network, let subnet):
            return "no free address left in network \(network) (\(subnet))"
        case .namespaceExists(let path):
            return "network namespace \(path) already exists"
        case .interfaceExistsInNamespace(let interface, let namespace):
            return "an interface named \(interface) already exists in \(namespace)"
        case .defaultRouteExists(let namespace, let gateway):
            return "\(namespace) has a default route netctl did not make, so it cannot get one via \(gateway)"
        case .invalidPortSpec(let spec, let reason):
            return "invalid port mapping \(quoted(spec)): \(reason)"
        case .portAlreadyPublished(let port, let hostIP, let endpoint):
            return "port \(port) is already published on \(hostIP.isEmpty ? "all addresses" : hostIP) by endpoint \(endpoint)"
        case .portInUse(let port, let hostIP):
            return "host port \(port) is in use by another program on \(hostIP.isEmpty ? "this host" : hostIP)"
        case .noFreeHostPort(let range, let proto):
            return "no free \(proto) host port in \(range)"
        case .hostAddressNotLocal(let ip):
            return "host address \(ip) is not assigned to any interface of this host"
        case .needsProxy(let spec, let need):
            switch need {
            case .ipv6Loopback: return "cannot publish \(spec) with kernel DNAT: the kernel does not DNAT from ::1"
            case .noIPv6(let endpoint): return "cannot publish \(spec) with kernel DNAT: endpoint \(endpoint) has no IPv6 address"
            case .sctpNotRelayed: return "cannot publish \(spec) through the proxy: the proxy relays TCP and UDP only"
            }
        case .publishOnInternalNetwork(let endpoint, let network):
            return "endpoint \(endpoint) is on network \(network), which is internal: nothing from outside it can reach a published port"
        case .portNotPublished(let endpoint, let spec):
            return "endpoint \(endpoint) has no published port matching \(spec)"
        case .endpointNotActive(let name):
            return "endpoint \(name) is being set up or torn down"
        case .endpointBroken(let name, let reason):
            return "endpoint \(name) is broken: \(reason)"
        case .invalidRoute(let destination, let reason):
            return "invalid route to \(destination): \(reason)"
        case .relaysClaimed(let scope, let pid):
            return "the proxied ports of \(scope) are already relayed by process \(pid)"
        case .namespace(let error):
            return error.description
        case .kernel(let error, let unchanged):
            return unchanged ? "\(error.description); state and the ruleset are unchanged" : error.description
        case .sysctl(let name, let value, let code):
            return "cannot set \(name) to \(value): \(errorMessage(code))"
        case .needsPrivilege:
            return "netctl needs root (CAP_NET_ADMIN), and this process does not have it"
        case .hostNamespace(let path):
            return "the network namespace at \(path) is this host's own, not a container's"
        case .stateSuspect(let path, .damaged(let reason)):
            // Raised by any query, maybe half-way through a command: no claim that nothing changed.
            return "netctl's state in \(path) cannot be trusted: \(StateProblem.damaged(reason))"
        case .stateSuspect(let path, let problem):
            return "netctl's state in \(path) cannot be trusted: \(problem); nothing was changed"
        case .stateUnavailable(let path, let reason):
            return "cannot open netctl's state at \(path): \(reason)"
        case .state(let message):
            return message
        }
    }
}

extension NetctlError {
    /// Wraps kernel and namespace errors so callers see one error type.
    static func wrap(_ error: Error, unchanged: Bool = false) -> Error {
        switch error {
        case let e as NetlinkError: return NetctlError.kernel(e, unchanged: unchanged)
        case let e as NamespaceError: return NetctlError.namespace(e)
        default: return error
        }
    }
}

/// Why state must not be trusted to reconcile the kernel by (see `StateStore`).
public enum StateProblem: Equatable, Sendable, CustomStringConvertible {
    /// The database is empty or new where `writes` changes were recorded.
    case lost(writes: Int64)
    /// The database belongs to other state.
    case replaced
    /// The database has `writes` changes where `expected` were recorded.
    case rolledBack(writes: Int64, expected: Int64)
    /// SQLite cannot read the file (`reason` is SQLite's word for it).
    case damaged(String)

    public var description: String {
        switch self {
        case .lost(let writes): return "state.db is empty or new, but \(writes) changes were recorded here"
        case .replaced: return "state.db is another state's database than the one recorded here"
        case .rolledBack(let writes, let expected): return "state.db holds \(writes) changes of the \(expected) recorded here (it was rolled back)"
        case .damaged(let reason): return "state.db is damaged (\(reason))"
        }
    }
}
