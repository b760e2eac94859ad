import Netlink

/// Every failure netctl reports: one line that names the problem and what to do about it.
public enum NetctlError: Error, CustomStringConvertible, Equatable {
    case invalidName(kind: String, value: String, reason: String)
    case invalidInterfaceName(String, reason: String)
    case invalidMAC(String)
    case invalidSubnet(String, reason: String)
    case invalidAddress(String, reason: String)
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
    case interfaceExistsInNamespace(interface: String, namespace: String)
    case missingTarget
    case invalidPortSpec(spec: String, reason: String)
    case portAlreadyPublished(port: String, hostIP: String, endpoint: String)
    case portInUse(port: String, hostIP: String)
    case noFreeHostPort(range: String, proto: String)
    case hostAddressNotLocal(String)
    case needsProxy(spec: String, reason: String)
    case portNotPublished(endpoint: String, spec: String)
    case endpointNotActive(String)
    case endpointBroken(String, reason: String)
    case invalidRoute(String, reason: String)
    case relaysClaimed(scope: String, pid: Int32)
    case namespace(NamespaceError)
    case kernel(NetlinkError, hint: String)
    case state(String)

    public var description: String {
        switch self {
        case .invalidName(let kind, let value, let reason):
            return "invalid \(kind) name \"\(value)\": \(reason)"
        case .invalidInterfaceName(let name, let reason):
            return "invalid interface name \"\(name)\": \(reason); use 1-15 bytes without '/', ':' or spaces"
        case .invalidMAC(let mac):
            return "invalid MAC address \"\(mac)\": use six hex octets like 02:42:ac:11:00:02 with a unicast first octet"
        case .invalidSubnet(let subnet, let reason):
            return "invalid subnet \"\(subnet)\": \(reason)"
        case .invalidAddress(let address, let reason):
            return "invalid address \"\(address)\": \(reason)"
        case .subnetOverlapsNetwork(let subnet, let network, let other):
            return "subnet \(subnet) overlaps network \(network) (\(other)); choose another --subnet"
        case .subnetOverlapsRoute(let subnet, let route):
            return "subnet \(subnet) overlaps the host route \(route); choose another --subnet"
        case .noFreeSubnet:
            return "no free subnet left in the default pools (172.17-31.0.0/16, 192.168.0.0/16 in /20s); pass --subnet"
        case .networkExists(let name):
            return "network \(name) already exists; pick another name or remove it with `netctl network rm \(name)`"
        case .networkNotFound(let name):
            return "no network named \(name); list networks with `netctl network ls`"
        case .bridgeInUse(let bridge, let network):
            return "bridge \(bridge) is already used by network \(network); pass another --bridge"
        case .bridgeNotOurs(let bridge):
            return "interface \(bridge) exists and was not created by netctl; pass another --bridge"
        case .networkInUse(let network, let endpoints):
            return "network \(network) has attached endpoints (\(endpoints.joined(separator: ", "))); detach them or use --force"
        case .endpointExists(let name):
            return "endpoint \(name) already exists; pick another --name or detach it with `netctl detach \(name)`"
        case .endpointNotFound(let name):
            return "no endpoint named \(name); list endpoints with `netctl endpoints`"
        case .addressTaken(let address, let network, let endpoint):
            return "address \(address) on network \(network) is already used by endpoint \(endpoint); pick another --ip or omit it"
        case .addressPoolExhausted(let network, let subnet):
            return "no free address left in network \(network) (\(subnet)); detach endpoints or create a larger network"
        case .namespaceExists(let path):
            return "network namespace \(path) already exists; attach to it with --netns \(path) or pick another --new name"
        case .interfaceExistsInNamespace(let interface, let namespace):
            return "an interface named \(interface) already exists in \(namespace); pass another --ifname"
        case .missingTarget:
            return "say which network namespace to attach: --netns PATH, --pid PID or --new NAME (exactly one)"
        case .invalidPortSpec(let spec, let reason):
            return "invalid port mapping \"\(spec)\": \(reason)"
        case .portAlreadyPublished(let port, let hostIP, let endpoint):
            return "port \(port) is already published on \(hostIP.isEmpty ? "all addresses" : hostIP) by endpoint \(endpoint); pick another host port or remove it with `netctl port rm \(endpoint)`"
        case .portInUse(let port, let hostIP):
            return "host port \(port) is in use by another program on \(hostIP.isEmpty ? "this host" : hostIP); pick another host port or stop that program"
        case .noFreeHostPort(let range, let proto):
            return "no free \(proto) host port in \(range); widen the range or free a port"
        case .hostAddressNotLocal(let ip):
            return "host address \(ip) is not assigned to any interface of this host; publish on one of its addresses or omit it"
        case .needsProxy(let spec, let reason):
            return "cannot publish \(spec) with kernel DNAT: \(reason)"
        case .portNotPublished(let endpoint, let spec):
            return "endpoint \(endpoint) has no published port matching \(spec); list them with `netctl port ls \(endpoint)`"
        case .endpointNotActive(let name):
            return "endpoint \(name) is being set up or torn down; retry, or run `netctl gc` if its owner died"
        case .endpointBroken(let name, let reason):
            return "endpoint \(name) is broken: \(reason); detach and attach it again, or run `netctl gc`"
        case .invalidRoute(let destination, let reason):
            return "invalid route to \(destination): \(reason)"
        case .relaysClaimed(let scope, let pid):
            return "the proxied ports of \(scope) are already relayed by process \(pid); stop it first, or leave them to it"
        case .namespace(let error):
            return error.description
        case .kernel(let error, let hint):
            return hint.isEmpty ? error.description : "\(error.description); \(hint)"
        case .state(let message):
            return message
        }
    }
}

extension NetctlError {
    /// Wraps kernel and namespace errors so callers see one error type.
    static func wrap(_ error: Error, hint: String = "") -> Error {
        switch error {
        case let e as NetlinkError: return NetctlError.kernel(e, hint: hint)
        case let e as NamespaceError: return NetctlError.namespace(e)
        default: return error
        }
    }
}
