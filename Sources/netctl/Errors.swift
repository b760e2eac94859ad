import ArgumentParser
import Glibc
import Images
import Agent
import NetCore
import Netlink
import Primitives
import Proxy
import Registry
import ProxyService
import Runtime

// The CLI's words for failures: every error, whichever library it comes from, becomes one
// line `netctl: error: WHAT; WHAT TO DO` naming the CLI's own flags and commands. Exit status
// 1, except `run`'s own failures (125, as `docker run`, so that a container's status passes
// through unchanged).

/// Something the command line itself got wrong, found by the CLI.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The flag each library input comes from.
func flag(_ field: InputField) -> String {
    switch field {
    case .ip: return "--ip"
    case .ip6: return "--ip6"
    case .gateway: return "--gateway"
    case .gateway6: return "--gateway6"
    case .subnet: return "--subnet"
    case .subnet6: return "--subnet6"
    }
}

/// What to do about a library failure, in the CLI's words; nil when the message says it.
func advice(_ error: NetctlError) -> String? {
    switch error {
    case .invalidName, .invalidInterfaceName, .invalidMAC, .invalidSubnet, .invalidAddress, .invalidPortSpec,
         .invalidRoute, .namespace:
        return nil
    case .subnetOverlapsNetwork, .subnetOverlapsRoute: return "choose another --subnet"
    case .noFreeSubnet: return "pass --subnet"
    case .networkExists(let name): return "pick another name or remove it with `netctl network rm \(name)`"
    case .networkNotFound: return "list networks with `netctl network ls`"
    case .bridgeInUse, .bridgeNotOurs: return "pass another --bridge"
    case .networkInUse: return "detach them or use --force"
    case .endpointExists(let name): return "pick another --name or detach it with `netctl detach \(name)`"
    case .endpointNotFound: return "list endpoints with `netctl endpoints`"
    case .addressTaken: return "pick another --ip or omit it"
    case .addressPoolExhausted: return "detach endpoints or create a larger network"
    case .hostNamespace: return "give the namespace of a container (--netns PATH, --pid PID), or --new NAME for a new one"
    case .namespaceExists(let path): return "attach to it with --netns \(path) or pick another --new name"
    case .interfaceExistsInNamespace: return "pass another --ifname"
    case .defaultRouteExists: return "pass --no-default-route to attach without one, or remove that route first"
    case .publishOnInternalNetwork: return "publish on an endpoint of a network that is not --internal"
    case .portAlreadyPublished(_, _, let endpoint): return "pick another host port or remove it with `netctl port rm \(endpoint)`"
    case .portInUse: return "pick another host port or stop that program"
    case .noFreeHostPort: return "widen the range or free a port"
    case .hostAddressNotLocal: return "publish on one of its addresses or omit it"
    case .needsProxy(_, .ipv6Loopback): return "use --backend auto (or proxy), or publish on 127.0.0.1"
    case .needsProxy(_, .noIPv6): return "use --backend auto (or proxy), or give its network a --subnet6"
    case .needsProxy(_, .sctpNotRelayed): return "publish SCTP with --backend nft"
    case .portNotPublished(let endpoint, _): return "list them with `netctl port ls \(endpoint)`"
    case .endpointNotActive: return "retry, or run `netctl gc` if its owner died"
    case .endpointBroken: return "detach and attach it again, or run `netctl gc`"
    case .relaysClaimed: return "stop it first, or leave them to it"
    case .kernel(let e, let unchanged): return kernelAdvice(e.code) ?? (unchanged ? nil : "run `netctl gc` to bring state and the kernel in line")
    case .sysctl: return "netctl needs root (CAP_NET_ADMIN)"
    case .needsPrivilege: return "run it as root (sudo netctl ...)"
    case .stateUnavailable: return "netctl needs root; or pass --state-dir DIR (or set $NETCTL_STATE_DIR) for a directory it may write"
    case .state: return "if it persists, look at the state directory (--state-dir) or run `netctl gc`"
    case .stateSuspect(_, .damaged):
        return "restore state.db from a copy; or move it aside and run `netctl gc --accept-state` to start from empty state (gc then removes what it no longer knows)"
    case .stateSuspect: return "if state.db was restored or rebuilt on purpose, run `netctl gc --accept-state`; otherwise put the right state.db back first"
    }
}

/// Advice for a kernel error number, when it says something about this host.
func kernelAdvice(_ code: Int32) -> String? {
    switch code {
    case EPERM, EACCES: return "netctl needs root (CAP_NET_ADMIN)"
    case ETIMEDOUT: return "the kernel did not answer in time; retry"
    case ENOMEM, ENOBUFS: return "the host is short of memory; retry"
    default: return nil
    }
}

/// What to do about a runtime failure, in the CLI's words.
func advice(_ error: RuntimeError) -> String? {
    switch error {
    case .containerNotFound: return "list containers with `netctl ps -a`"
    case .nameInUse(let name, _): return "remove it with `netctl rm \(name)` or pick another --name"
    case .noCommand: return "give a command after the image"
    case .stillRunning(let name): return "stop it first with `netctl stop \(name)` or remove it with `netctl rm -f \(name)`"
    case .stillStarting: return "try again once `netctl ps` shows it running"
    case .io(_, let code): return kernelAdvice(code)
    case .notRunning: return "see `netctl ps -a`"
    case .alreadyConnected: return "list its networks with `netctl ps --json`"
    case .notConnected: return "list its networks with `netctl ps --json`"
    case .lastNetwork: return "connect it to another network first, or pass --force to leave it on none"
    case .portsNeedNetwork: return "connect it to a network that is not internal first, or use --force to drop its ports"
    case .runcMissing, .runcFailed, .ambiguousName, .invalidEnvironment, .unknownUser, .monitorFailed, .invalidExtraHost,
         .invalidDNSServer: return nil
    }
}

/// Advice an image error's own message leaves out: how to free space.
func imageAdvice(_ error: ImageError) -> String? {
    if case .io(_, ENOSPC) = error { return "free space where the state directory is (`netctl rmi` removes images), then pull again" }
    return nil
}

/// One line for any error that reaches the CLI.
func errorLine(_ error: Error) -> String {
    let text: String
    switch error {
    case let e as NetctlError: text = join(e.message(naming: flag), advice(e))
    case let e as RuntimeError: text = join(e.description, advice(e))
    case let e as RegistryError: text = join(e.description, advice(e))
    case let e as ImageError: text = join(e.description, imageAdvice(e))
    case let e as NetlinkError: text = join(e.description, kernelAdvice(e.code))
    case let e as SystemError: text = join(e.description, kernelAdvice(e.code))
    case AgentError.binaryMissing: text = join("\(error)", "install netctl-agent there, beside netctl (tools/build-release builds it)")
    default: text = "\(error)"  // ImageError, ProxyError, ServiceError, NamespaceError, UsageError: facts and advice
    }
    // One line, whatever a message holds (a name with a newline in it, say).
    return text.split(whereSeparator: \.isNewline).joined(separator: " ")
}

private func join(_ message: String, _ advice: String?) -> String {
    advice.map { message + "; " + $0 } ?? message
}

/// Runs a command body; any error becomes one line on stderr and `exitCode`.
func reportingErrors(exitCode: Int32 = 1, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let code as ExitCode {
        throw code
    } catch {
        writeStandardError("netctl: error: \(errorLine(error))\n")
        throw ExitCode(exitCode)
    }
}
