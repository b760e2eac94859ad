import Glibc
import NetCore
import Primitives

/// What the netavark front end refuses or could not do, in Podman's terms. Podman prints
/// the message after "netavark: ", so each says what is wrong and what to do.
public enum NetavarkError: Error, Equatable, CustomStringConvertible {
    case invalidOptions(String)
    case invalidNamespace(path: String, reason: String)
    case missingNetworkInfo(network: String)
    case unsupportedDriver(network: String, driver: String)
    case unsupported(network: String, what: String)
    case invalidOption(network: String, option: String, value: String)
    case noStaticAddress(network: String)
    case settingsDiffer(network: String, differences: [String])
    case rootless
    case several([String])

    public var description: String {
        switch self {
        case .invalidOptions(let reason):
            return "failed to load network options: \(reason)"
        case .invalidNamespace(let path, let reason):
            return "invalid namespace path \(path): \(reason)"
        case .missingNetworkInfo(let network):
            return "network options for network \(network) not found"
        case .unsupportedDriver(let network, let driver):
            return "network \(network) uses driver \(driver); netctl serves bridge networks only (use Podman's own netavark for it: tools/podman-backend uninstall)"
        case .unsupported(let network, let what):
            return "network \(network): \(what) is not supported by netctl"
        case .invalidOption(let network, let option, let value):
            return "network \(network): unable to parse option \"\(option)\" (\(value))"
        case .noStaticAddress(let network):
            return "network \(network): no static ips provided (Podman's IPAM gives them; is the network's ipam driver host-local?)"
        case .settingsDiffer(let network, let differences):
            return "network \(network) exists in netctl with \(differences.joined(separator: ", ")); "
                + "remove the containers on it, or remove it with `netctl network rm \(network)` once none uses it"
        case .rootless:
            return "netctl-netavark serves rootful Podman only (netctl needs CAP_NET_ADMIN), and found no netavark of Podman's to hand rootless calls to"
        case .several(let messages):
            return "netctl-netavark encountered multiple errors: " + messages.joined(separator: "; ")
        }
    }

    /// The one line Podman shows for any error: NetCore's facts in Podman's terms, with
    /// what to do.
    public static func message(_ error: Error) -> String {
        let text: String
        switch error {
        case let e as NetctlError:
            text = e.message(naming: field) + (advice(e).map { "; " + $0 } ?? "")
        default:
            text = "\(error)"
        }
        return text.split(whereSeparator: \.isNewline).joined(separator: " ")
    }

    static func field(_ field: InputField) -> String {
        switch field {
        case .ip: return "the static IP"
        case .ip6: return "the static IPv6"
        default: return field.plainName
        }
    }

    static func advice(_ e: NetctlError) -> String? {
        switch e {
        case .addressTaken: return "another netctl endpoint holds it; detach it (`netctl endpoints` lists them) or give the container another --ip"
        case .subnetOverlapsNetwork, .subnetOverlapsRoute: return "create the Podman network with another --subnet"
        case .bridgeNotOurs(let bridge): return "delete \(bridge) (left by Podman's own netavark?) with `ip link del \(bridge)` once no container uses it"
        case .bridgeInUse(let bridge, let network): return "bridge \(bridge) belongs to netctl network \(network); create the Podman network with another --interface-name"
        case .portAlreadyPublished, .portInUse, .noFreeHostPort: return "publish another host port (-p)"
        case .publishOnInternalNetwork: return "publish ports only from a container on a network that is not --internal"
        case .needsProxy: return "publish on an IPv4 host address, or give the network an IPv6 subnet"
        case .interfaceExistsInNamespace: return "give the network another interface_name"
        case .defaultRouteExists: return "the container's namespace has a default route netctl did not make"
        case .endpointExists(let name): return "a stale attachment of a container of that name is left; run `netctl gc`, or `netctl detach \(name)`"
        case .kernel(let error, _) where error.code == EPERM || error.code == EACCES: return "netctl needs root (CAP_NET_ADMIN)"
        case .sysctl, .stateUnavailable: return "netctl needs root, and its state directory ($NETCTL_STATE_DIR or /var/lib/netctl) writable"
        case .endpointNotActive: return "another operation on it is in flight; retry"
        default: return nil
        }
    }
}
