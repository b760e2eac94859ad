import Glibc
import NetCore
import Netlink
import Primitives

/// The CNI plugin: one invocation is one call of `run`, from the environment and stdin to
/// what goes to stdout and the exit status. Everything the protocol can refuse (environment,
/// JSON, version, configuration) is checked before state or the kernel is touched; the
/// work itself is one NetCore call per command.
public enum CNIPlugin {
    public struct Output: Equatable {
        public var stdout: String
        public var status: Int32
    }

    /// `openManager` opens netctl's state (a `NetworkManager`) in the given directory.
    public static func run(environment: [String: String], stdin: [UInt8],
                           openManager: (String) throws -> NetworkManager = { try NetworkManager(stateDirectory: $0) }) -> Output {
        var version = CNIVersion.latest
        do {
            let env = try CNIEnvironment(environment)
            if env.command == .version { return versionInfo(stdin) }
            guard stdin.count <= BridgeConfig.maxInputBytes else {
                throw CNIError(.decodingFailure, "the network configuration on stdin is over \(BridgeConfig.maxInputBytes) bytes; a configuration is a few KB")
            }
            let decoded = try BridgeConfig.decodeVersion(stdin)
            version = decoded.version
            let full = env.command == .add || env.command == .check
            let config = try BridgeConfig(decoded.json, version: version, environment: env, full: full)
            if (env.command == .status || env.command == .gc) && version != "1.1.0" {
                throw CNIError(.incompatibleVersion, "\(env.command.rawValue) needs cniVersion 1.1.0, the configuration says \(version)")
            }
            let stateDir = config.stateDir ?? environment["NETCTL_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/netctl"
            let manager: NetworkManager
            do {
                manager = try openManager(stateDir)
            } catch {
                let code: CNIError.Code = env.command == .status ? .notAvailable : .internalFailure
                throw CNIError(code, "netctl state in \(stateDir) cannot be opened", details: "\(error)")
            }
            // A runtime waits for each call; the kernel's deletion of a veth pair (an RCU
            // barrier) need not be part of that wait once the interface is out of use and its
            // name free.
            manager.detachesInBackground = true
            let plugin = Operations(manager: manager, env: env, config: config)
            // After a removal (DEL, GC, a refused ADD's rollback), closing the nftables socket
            // would wait for the kernel's release of it (an RCU grace period).
            defer { manager.holdSocketsUntilExit() }
            switch env.command {
            case .add: return Output(stdout: try plugin.add().json(cniVersion: version).text, status: 0)
            case .check: try plugin.check()
            case .del: try plugin.del()
            case .gc: try plugin.gc()
            case .status: try plugin.status()
            case .version: break
            }
            return Output(stdout: "", status: 0)
        } catch let error as CNIError {
            return Output(stdout: error.json(cniVersion: version).text, status: 1)
        } catch {
            return Output(stdout: CNIPlugin.cniError(error).json(cniVersion: version).text, status: 1)
        }
    }

    static func versionInfo(_ stdin: [UInt8]) -> Output {
        // The runtime's own version, when it says one we speak; ours otherwise.
        let asked = (try? JSON.parse(stdin))?["cniVersion"]?.string
        let version = asked.flatMap { CNIVersion.supported.contains($0) ? $0 : nil } ?? CNIVersion.latest
        let info = JSON.object([("cniVersion", .string(version)),
                                ("supportedVersions", .array(CNIVersion.supported.map { .string($0) }))])
        return Output(stdout: info.text, status: 0)
    }

    /// NetCore's errors as CNI codes, with what to do in a configuration's terms.
    public static func cniError(_ error: Error) -> CNIError {
        guard let e = error as? NetctlError else { return CNIError(.internalFailure, "\(error)") }
        let code: CNIError.Code
        switch e {
        case .addressPoolExhausted, .endpointNotActive:
            // Both clear up without a configuration change: when attachments are deleted,
            // or when the operation in flight ends.
            code = .tryAgainLater
        case .invalidName, .invalidInterfaceName, .invalidMAC, .invalidSubnet, .invalidAddress, .subnetOverlapsNetwork,
             .subnetOverlapsRoute, .noFreeSubnet, .bridgeInUse, .bridgeNotOurs, .invalidPortSpec, .hostAddressNotLocal,
             .needsProxy, .invalidRoute, .addressTaken, .publishOnInternalNetwork:
            code = .invalidNetworkConfig
        case .portAlreadyPublished, .portInUse, .noFreeHostPort:
            code = .portConflict
        case .namespace, .interfaceExistsInNamespace, .defaultRouteExists:
            code = .invalidEnvironment
        case .endpointExists:
            code = .alreadyAttached
        case .endpointBroken:
            code = .attachmentBroken
        default:
            code = .internalFailure
        }
        return CNIError(code, e.message(naming: configurationKey), details: advice(e) ?? "")
    }

    /// How a configuration names each input NetCore may refuse.
    static func configurationKey(_ field: InputField) -> String {
        switch field {
        case .ip: return "the requested IP"
        case .ip6: return "the requested IPv6"
        default: return field.plainName
        }
    }

    /// What to do, in a configuration's terms; nil when the message says it.
    static func advice(_ e: NetctlError) -> String? {
        switch e {
        case .addressTaken:
            return "request another IP (runtimeConfig.ips, args or CNI_ARGS IP=), or none"
        case .portAlreadyPublished:
            return "map another hostPort, or DEL the container that holds it"
        case .portInUse:
            return "map another hostPort, or stop the program that holds it"
        case .bridgeNotOurs(let bridge):
            return "set another \"bridge\" in the configuration, or delete \(bridge) (e.g. left by the bridge plugin) once no container uses it"
        case .bridgeInUse(let bridge, let network):
            return "bridge \(bridge) belongs to netctl network \(network); give this configuration its own \"bridge\""
        case .interfaceExistsInNamespace(let interface, _):
            return "give the attachment another CNI_IFNAME, or remove \(interface) from the container"
        case .defaultRouteExists:
            return "the container is attached to another network with a default route; DEL that attachment first"
        case .needsProxy:
            // The plugin publishes with kernel DNAT only: a configuration has no backend to choose.
            return "use an IPv4 hostIP, or none; an IPv6 one needs an IPv6 subnet in \"ipam\", and ::1 never works"
        case .publishOnInternalNetwork:
            return "drop portMappings from this configuration, or attach the container to a network that is not internal"
        case .subnetOverlapsNetwork, .subnetOverlapsRoute, .noFreeSubnet:
            return "change the subnet in \"ipam\""
        case .addressPoolExhausted:
            return "DEL containers that are gone, or give the network a larger subnet"
        case .endpointNotActive:
            return "another operation on this attachment is in flight; retry"
        case .endpointBroken:
            return "DEL and ADD it again"
        case .kernel(let error, _) where error.code == EPERM || error.code == EACCES:
            return "the plugin needs root (CAP_NET_ADMIN)"
        case .sysctl, .stateUnavailable:
            return "the plugin needs root (CAP_NET_ADMIN), and netctl's state directory (\"stateDir\", $NETCTL_STATE_DIR or /var/lib/netctl) writable"
        default:
            return nil
        }
    }

    /// netctl's endpoint name for a (network, container, interface) attachment: stable, so
    /// DEL, CHECK and GC find what ADD made.
    public static func endpointName(network: String, containerID: String, ifname: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a, 64 bits
        for byte in Array(network.utf8) + [0] + Array(containerID.utf8) + [0] + Array(ifname.utf8) {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "cni-" + String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// One command's work against NetCore.
struct Operations {
    let manager: NetworkManager
    let env: CNIEnvironment
    let config: BridgeConfig

    var endpointName: String {
        CNIPlugin.endpointName(network: config.name, containerID: env.containerID!, ifname: env.ifname!)
    }

    /// The configuration's network as netctl would make it.
    var networkSpec: NetworkSpec {
        NetworkSpec(name: config.name, subnet: config.subnet, gateway: config.gateway, bridge: config.bridge,
                    subnet6: config.subnet6, gateway6: config.gateway6, mtu: config.mtu)
    }

    /// Refuses a configuration whose network exists in netctl with other settings.
    func checkSameSettings(_ existing: Network) throws {
        // Compared as addresses, not text: "FD00::/64" is the subnet stored as "fd00::/64".
        func sameNetwork(_ a: String?, _ b: String) -> Bool { a.flatMap { IPNetwork($0) } == IPNetwork(b) }
        func sameAddress(_ a: String?, _ b: String) -> Bool { a.flatMap { IPAddress($0) } == IPAddress(b) }
        var differences: [String] = []
        if existing.bridge != config.bridge { differences.append("bridge \(existing.bridge), not \(config.bridge)") }
        if let s = config.subnet, !sameNetwork(existing.subnet, s) { differences.append("subnet \(existing.subnet), not \(s)") }
        if let g = config.gateway, !sameAddress(existing.gateway, g) { differences.append("gateway \(existing.gateway), not \(g)") }
        if let s = config.subnet6, !sameNetwork(existing.subnet6, s) { differences.append("IPv6 subnet \(existing.subnet6 ?? "none"), not \(s)") }
        if let g = config.gateway6, !sameAddress(existing.gateway6, g) { differences.append("IPv6 gateway \(existing.gateway6 ?? "none"), not \(g)") }
        if let m = config.mtu, existing.mtu != m { differences.append("MTU \(existing.mtu), not \(m)") }
        guard differences.isEmpty else {
            throw CNIError(.invalidNetworkConfig, "network \(config.name) exists in netctl with \(differences.joined(separator: ", "))",
                           details: "change the configuration back, or remove the network (`netctl network rm \(config.name)`) once no container uses it")
        }
    }

    func add() throws -> CNIResult {
        let previous = try config.prevResult.map(CNIResult.init)
        // If the network exists, its settings must be the configuration's; if not, the
        // attach makes it, after its own checks.
        let exists: Bool
        do {
            try checkSameSettings(try manager.network(named: config.name))
            exists = true
        } catch NetctlError.networkNotFound {
            exists = false
        }
        let name = endpointName
        let endpoint: Endpoint
        do {
            // NetCore checks the request before it makes the network, and removes a network
            // it made for a refused attach: a refused ADD changes nothing.
            endpoint = try manager.attach(AttachRequest(
                network: config.name, target: .path(env.netns!), ip: config.ip, name: name, interface: env.ifname!,
                mac: config.mac, ports: config.portMappings, portBackend: .nft, routes: config.routes,
                createNetwork: exists ? nil : networkSpec))
        } catch NetctlError.endpointExists {
            throw CNIError(.alreadyAttached, "container \(env.containerID!) already has \(env.ifname!) on network \(config.name)",
                           details: "DEL it before adding it again")
        }
        let network: Network, links: EndpointLinks
        do {
            network = try manager.network(named: config.name)
            // A concurrent ADD of another configuration may have made it first, and the
            // attach joined that one.
            if !exists { try checkSameSettings(network) }
            links = try manager.links(of: endpoint, on: network)
        } catch {
            _ = try? manager.detach([name])
            if !exists { _ = try? manager.removeNetwork(named: config.name) }  // refused if another container joined
            throw error
        }
        var result = CNIResult(
            interfaces: [
                .init(name: links.bridge, mac: links.bridgeMAC, mtu: network.mtu),
                .init(name: links.hostInterface, mac: links.hostMAC, mtu: links.mtu),
                .init(name: endpoint.interface, mac: endpoint.mac, mtu: network.mtu, sandbox: endpoint.netns),
            ],
            ips: [.init(address: endpoint.ipv4, gateway: endpoint.gateway, interface: 2)],
            routes: [.init(dst: "0.0.0.0/0", gw: endpoint.gateway)],
            dns: config.dns)
        if let ipv6 = endpoint.ipv6, let gateway6 = endpoint.gateway6 {
            result.ips.append(.init(address: ipv6, gateway: gateway6, interface: 2))
            result.routes.append(.init(dst: "::/0", gw: gateway6))
        }
        // As attach installed them (destinations masked, next hops filled in).
        for route in try manager.extraRoutes(config.routes, network: network) {
            let destination = route.destination.map { "\($0)" } ?? (route.isIPv4 ? "0.0.0.0/0" : "::/0")
            result.routes.append(.init(dst: destination, gw: route.gateway.map { "\($0)" }))
        }
        return previous.map { result.appended(to: $0) } ?? result
    }

    func check() throws {
        let name = endpointName
        let endpoint: Endpoint
        do {
            endpoint = try manager.endpoint(named: name)
        } catch NetctlError.endpointNotFound {
            throw CNIError(.unknownContainer, "container \(env.containerID!) has no \(env.ifname!) on network \(config.name)",
                           details: "ADD it first")
        }
        func broken(_ reason: String) -> CNIError {
            CNIError(.attachmentBroken, "attachment of container \(env.containerID!) (\(env.ifname!)) on \(config.name) is broken: \(reason)",
                     details: "DEL and ADD it again")
        }
        if endpoint.netns != env.netns! { throw broken("it was made in \(endpoint.netns), not \(env.netns!)") }
        let previous = try config.prevResult.map(CNIResult.init)
        // The chain's final result may carry a MAC a later plugin (tuning) set on purpose.
        let finalMAC = previous?.interfaces.last(where: { $0.name == env.ifname! && $0.sandbox == env.netns! })?.mac
        try manager.verify(endpoint: name, mac: finalMAC)
        if let previous {
            let ours = [endpoint.ipv4] + [endpoint.ipv6].compactMap { $0 }
            let listed = previous.ips.map(\.address)
            for address in ours where !listed.contains(address) {
                throw broken("prevResult does not list its address \(address)")
            }
            guard previous.interfaces.contains(where: { $0.name == env.ifname! && $0.sandbox == env.netns! }) else {
                throw broken("prevResult does not list interface \(env.ifname!) in \(env.netns!)")
            }
        }
        let published = try manager.ports(endpoint: name)
        for wanted in config.portMappings {
            let found = published.contains {
                $0.hostPort == wanted.hostPort && $0.containerPort == wanted.containerPort && $0.proto == wanted.proto
                    && (wanted.hostIP.isEmpty || $0.hostIP == wanted.hostIP)
            }
            if !found { throw broken("port \(wanted.hostPort)/\(wanted.proto.rawValue) -> \(wanted.containerPort) is not published") }
        }
    }

    /// Removes the attachment; succeeds when it is already gone.
    func del() throws {
        do {
            try manager.detach([endpointName])
        } catch NetctlError.endpointNotFound {
            return
        }
    }

    /// Removes this network's attachments that are not in the runtime's list of valid ones,
    /// then reconciles netctl's state with the kernel.
    func gc() throws {
        let keep = Set(config.validAttachments.map {
            CNIPlugin.endpointName(network: config.name, containerID: $0.containerID, ifname: $0.ifname)
        })
        let endpoints: [Endpoint]
        do {
            endpoints = try manager.endpoints(network: config.name)
        } catch NetctlError.networkNotFound {
            return
        }
        // Only settled attachments: one still being made is an ADD in flight (the runtime's
        // list predates it); one whose maker died is netctl gc's to clear, below.
        let stale = endpoints.filter { $0.state == .active && $0.name.hasPrefix("cni-") && !keep.contains($0.name) }.map(\.name)
        if !stale.isEmpty { try manager.detach(stale) }
        _ = try manager.gc()
    }

    /// Ready when netctl's state opened and answers (the caller opened it, with its netlink
    /// socket); a bridge that went missing is no reason to refuse: the next ADD makes it again.
    func status() throws {
        do {
            _ = try manager.networks()
        } catch {
            throw CNIError(.notAvailable, "netctl-cni is not ready: its state does not answer", details: "\(error)")
        }
    }
}
