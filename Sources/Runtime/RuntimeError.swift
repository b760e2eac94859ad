import Primitives

/// Why a container operation failed: one line saying what, with the facts; front ends add
/// what to do in their own words.
public enum RuntimeError: Error, CustomStringConvertible, Equatable {
    case runcMissing(String)
    case runcFailed(step: String, container: String, message: String)
    case containerNotFound(String)
    case ambiguousName(String, matches: [String])
    case nameInUse(name: String, id: String)
    case noCommand(image: String)
    case invalidEnvironment(String)
    case unknownUser(user: String, reason: String)
    case stillRunning(String)
    case stillStarting(String)
    case monitorFailed(container: String, message: String)
    case io(what: String, errno: Int32)
    case invalidExtraHost(String)
    case invalidDNSServer(String)
    case notRunning(String)
    case alreadyConnected(container: String, network: String)
    case notConnected(container: String, network: String)
    case lastNetwork(container: String, network: String)
    case portsNeedNetwork(container: String, network: String)

    public var description: String {
        switch self {
        case .runcMissing(let looked):
            return "runc is not installed (looked for \(looked)); install it with `apt-get install runc` or set $NETCTL_RUNC to its path"
        case .runcFailed(let step, let container, let message):
            return "runc \(step) failed for container \(container): \(message)"
        case .containerNotFound(let name):
            return "no container named \(name)"
        case .ambiguousName(let name, let matches):
            return "\(name) matches several containers (\(matches.joined(separator: ", "))); give more of the ID or the name"
        case .nameInUse(let name, let id):
            return "the name \(name) is already used by container \(id.prefix(12))"
        case .noCommand(let image):
            return "image \(image) has no Entrypoint or Cmd, and no command was given"
        case .invalidEnvironment(let entry):
            return "invalid environment variable \"\(entry)\": use KEY=VALUE, or KEY to copy it from this environment"
        case .unknownUser(let user, let reason):
            return "cannot run as user \"\(user)\": \(reason)"
        case .stillRunning(let name):
            return "container \(name) is running"
        case .stillStarting(let name):
            return "container \(name) is still starting"
        case .monitorFailed(let container, let message):
            return "container \(container) did not start: \(message)"
        case .io(let what, let code):
            return "\(what): \(errorMessage(code))"
        case .invalidExtraHost(let entry):
            return "invalid extra host \"\(entry)\": write it as NAME:IP"
        case .invalidDNSServer(let server):
            return "invalid DNS server \"\(server)\": give an IP address"
        case .notRunning(let name):
            return "container \(name) is not running"
        case .alreadyConnected(let container, let network):
            return "container \(container) is already on network \(network)"
        case .notConnected(let container, let network):
            return "container \(container) is not on network \(network)"
        case .lastNetwork(let container, let network):
            return "network \(network) is the last network of container \(container)"
        case .portsNeedNetwork(let container, let network):
            return "container \(container) publishes ports through network \(network), and no other network of it can carry them"
        }
    }
}
