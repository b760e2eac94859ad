import Glibc
import Agent
import NetCore
import Primitives

/// Podman's network backend protocol (netavark's, as Podman 4.x calls it) over NetCore: one
/// call of `run` is one invocation of the helper, from its command and stdin to what goes to
/// stdout and the exit status. Every network of a call is checked before anything is made,
/// and a setup that fails half-way undoes what it made.
///
/// What maps onto what: a Podman bridge network is a netctl network of the same name, made
/// on its first setup with Podman's subnets, gateways, bridge name, MTU, `internal`,
/// `dns_enabled` and `isolate`, compared on later ones, and removed with its last endpoint
/// (owner "podman"). Addresses are Podman's (`static_ips`). A container's endpoint on a
/// network is named CONTAINER.NETWORK and answers to the container's name and aliases.
/// Its ports live on the endpoint that holds its default route (NetCore's rule); names are
/// served by netctl-agent on the gateways of networks with `dns_enabled`.
public enum NetavarkBackend {
    public enum Command: Equatable, Sendable {
        case setup(netns: String)
        case teardown(netns: String)
        case version
        /// `firewall-reload`/`firewalld-reload` (newer netavarks): the table back from state.
        case firewallReload
    }

    public struct Output: Equatable, Sendable {
        public var stdout: String
        public var status: Int32
        /// Warnings for the user (Podman passes the helper's stderr through).
        public var stderr: String = ""
    }

    /// The netavark release whose protocol this speaks, reported by `version`.
    public static let protocolVersion = "1.4.0"
    /// Owner of the networks the front end makes (see `Network.owner`).
    public static let owner = "podman"

    /// `agent`: the netctl-agent binary (names, the firewall watch), started with the first network.
    public static func run(_ command: Command, stdin: [UInt8], stateDirectory: String,
                           agent: String = Agent.defaultBinary(),
                           openManager: (String) throws -> NetworkManager = { try NetworkManager(stateDirectory: $0) }) -> Output {
        do {
            switch command {
            case .version:
                let info = JSON.object([("version", .string(protocolVersion)), ("commit", .string("netctl")),
                                        ("build_time", .string("")), ("target", .string(NetavarkBackend.target))])
                return Output(stdout: info.text + "\n", status: 0)
            case .firewallReload:
                let manager = try openManager(stateDirectory)
                defer { manager.holdSocketsUntilExit() }
                try manager.reload()
                return Output(stdout: "", status: 0)
            case .setup(let netns):
                try checkNamespace(netns)
                let options = try decode(stdin)
                let manager = try openManager(stateDirectory)
                defer { manager.holdSocketsUntilExit() }
                var operation = Operation(manager: manager, options: options, netns: netns)
                let status = try operation.setup()
                return Output(stdout: status.text + "\n", status: 0, stderr: syncAgent(manager, agent))
            case .teardown(let netns):
                let options = try decode(stdin)
                let manager = try openManager(stateDirectory)
                manager.detachesInBackground = true
                defer { manager.holdSocketsUntilExit() }
                let operation = Operation(manager: manager, options: options, netns: netns)
                let (errors, warnings) = operation.teardown()
                let warning = warnings.joined() + syncAgent(manager, agent)
                guard errors.isEmpty else {
                    throw errors.count == 1 ? errors[0] : NetavarkError.several(errors.map { NetavarkError.message($0) })
                }
                return Output(stdout: "", status: 0, stderr: warning)
            }
        } catch {
            return Output(stdout: JSON.object([("error", .string(NetavarkError.message(error)))]).text + "\n", status: 1)
        }
    }

    /// The options are a few KB; past this they are refused unread.
    public static let maxInputBytes = 1 << 20

    #if arch(arm64)
    static let target = "aarch64-unknown-linux-gnu"
    #else
    static let target = "x86_64-unknown-linux-gnu"
    #endif

    static func decode(_ stdin: [UInt8]) throws -> NetavarkOptions {
        guard stdin.count <= maxInputBytes else {
            throw NetavarkError.invalidOptions("the network options are over \(maxInputBytes) bytes; Podman sends a few KB, so check what calls netctl-netavark")
        }
        let json: JSON
        do {
            json = try JSON.parse(stdin)
        } catch {
            throw NetavarkError.invalidOptions("\(error)")
        }
        return try NetavarkOptions(json: json)
    }

    static func checkNamespace(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { throw NetavarkError.invalidNamespace(path: path, reason: String(cString: strerror(errno))) }
    }

    /// The agent as state has it now; a failure is a warning (the network works without).
    static func syncAgent(_ manager: NetworkManager, _ binary: String) -> String {
        do {
            try Agent.sync(manager, binary: binary)
            return ""
        } catch {
            return "netctl-netavark: warning: names are not served and the firewall not watched: \(error)\n"
        }
    }
}

/// One setup or teardown.
struct Operation {
    let manager: NetworkManager
    let options: NetavarkOptions
    let netns: String

    init(manager: NetworkManager, options: NetavarkOptions, netns: String) {
        self.manager = manager; self.options = options; self.netns = netns
    }

    // MARK: Setup

    mutating func setup() throws -> JSON {
        let plans = try options.networks.map { name, per in try options.plan(name, per) }
        let mappings = try options.expandedPortMappings()
        // Every network checked before any is attached: a refusal changes nothing.
        let remake = try plans.map(mustRemake)
        var attached: [Endpoint] = []
        do {
            for (plan, remake) in zip(plans, remake) { attached.append(try attach(plan, remakingNetwork: remake)) }
            if let first = attached.first, !mappings.isEmpty {
                // `network connect` sends the container's ports again: they stay where they are.
                let published = try manager.endpoints(sharingNamespaceWith: first.name).contains { try !manager.ports(endpoint: $0.name).isEmpty }
                // Podman reserves the host ports itself (conmon holds them): no bind probe.
                if !published { try manager.publish(namespaceOf: first.name, mappings, backend: .nft, probeHostPorts: false) }
                try manager.settlePorts(namespaceOf: first.name)
            }
        } catch {
            for endpoint in attached.reversed() { undo(endpoint) }
            throw error
        }
        return .object(zip(plans, attached).map { plan, endpoint in (plan.name, status(plan, endpoint)) })
    }

    /// Whether the netctl network of `plan` is to be made again: Podman changed its
    /// definition (the network removed and made again), and a network of ours nobody uses
    /// follows it. Throws if it differs and cannot.
    func mustRemake(_ plan: NetavarkOptions.Plan) throws -> Bool {
        guard let existing = try? manager.network(named: plan.name) else { return false }
        let differences = self.differences(existing, plan)
        guard !differences.isEmpty else { return false }
        guard existing.owner == NetavarkBackend.owner, try manager.endpoints(network: plan.name).isEmpty else {
            throw NetavarkError.settingsDiffer(network: plan.name, differences: differences)
        }
        return true
    }

    func attach(_ plan: NetavarkOptions.Plan, remakingNetwork remake: Bool) throws -> Endpoint {
        if remake { _ = try manager.removeNetwork(named: plan.name) }
        let name = options.endpointName(plan.name)
        let aliases = ([options.containerName] + plan.per.aliases).reduce(into: [String]()) { list, alias in
            if alias != name && !list.contains(alias) { list.append(alias) }
        }
        let endpoint = try manager.attach(AttachRequest(
            network: plan.name, target: .path(netns), ip: plan.ipv4, ip6: plan.ipv6, name: name,
            interface: plan.per.interfaceName, mac: plan.per.staticMAC, aliases: aliases,
            gatewayPriority: 100 - plan.metric, dnsServers: options.dnsServers, createNetwork: plan.spec))
        // A concurrent setup may have made the network first, with other settings.
        let differences = self.differences(try manager.network(named: plan.name), plan)
        if !differences.isEmpty {
            undo(endpoint)
            throw NetavarkError.settingsDiffer(network: plan.name, differences: differences)
        }
        return endpoint
    }

    func differences(_ existing: NetCore.Network, _ plan: NetavarkOptions.Plan) -> [String] {
        let spec = plan.spec
        func sameNetwork(_ a: String?, _ b: String?) -> Bool { a.flatMap { IPNetwork($0, strict: false) } == b.flatMap { IPNetwork($0, strict: false) } }
        func sameAddress(_ a: String?, _ b: String?) -> Bool { a.flatMap(IPAddress.init) == b.flatMap(IPAddress.init) }
        var out: [String] = []
        if let bridge = spec.bridge, existing.bridge != bridge { out.append("bridge \(existing.bridge), not \(bridge)") }
        if !sameNetwork(existing.subnet, spec.subnet) { out.append("subnet \(existing.subnet), not \(spec.subnet ?? "")") }
        if !sameAddress(existing.gateway, spec.gateway) { out.append("gateway \(existing.gateway), not \(spec.gateway ?? "")") }
        if !sameNetwork(existing.subnet6, spec.subnet6) { out.append("IPv6 subnet \(existing.subnet6 ?? "none"), not \(spec.subnet6 ?? "none")") }
        if spec.subnet6 != nil, !sameAddress(existing.gateway6, spec.gateway6) {
            out.append("IPv6 gateway \(existing.gateway6 ?? "none"), not \(spec.gateway6 ?? "none")")
        }
        if let mtu = spec.mtu, existing.mtu != mtu { out.append("MTU \(existing.mtu), not \(mtu)") }
        if existing.internal != spec.internal { out.append(existing.internal ? "internal" : "not internal") }
        if existing.dns != (spec.dns ?? false) { out.append(existing.dns ? "names on" : "names off") }
        if existing.isolated != spec.isolated { out.append(existing.isolated ? "isolated" : "not isolated") }
        return out
    }

    /// Undoes one attach of a failed setup, and the network if it made it.
    func undo(_ endpoint: Endpoint) {
        _ = try? manager.detach([endpoint.name])
        removeIfUnused(endpoint.network)
    }

    func removeIfUnused(_ network: String) {
        guard let existing = try? manager.network(named: network), existing.owner == NetavarkBackend.owner,
              (try? manager.endpoints(network: network).isEmpty) == true else { return }
        _ = try? manager.removeNetwork(named: network)  // refused if a setup joined it meanwhile
    }

    /// netavark's status block for one network.
    func status(_ plan: NetavarkOptions.Plan, _ endpoint: Endpoint) -> JSON {
        func cidr(_ address: String, _ subnet: String?) -> String {
            if address.contains("/") { return address }
            return "\(address)/\(subnet.flatMap { IPNetwork($0, strict: false)?.prefixLength } ?? 32)"
        }
        var subnets: [JSON] = []
        for (address, subnet) in [(endpoint.ipv4, plan.spec.subnet), (endpoint.ipv6, plan.spec.subnet6)] {
            guard let address else { continue }
            let given = plan.info.subnets.first { IPNetwork($0.subnet, strict: false) == subnet.flatMap { IPNetwork($0, strict: false) } }
            subnets.append(.object([("gateway", given?.gateway.map { JSON.string($0) } ?? .null), ("ipnet", .string(cidr(address, subnet)))]))
        }
        let dnsServers: [JSON] = plan.info.dnsEnabled ? plan.info.subnets.compactMap { $0.gateway.map { .string($0) } }
            : options.dnsServers.map { .string($0) }
        let interface = JSON.object([("mac_address", .string(endpoint.mac.lowercased())), ("subnets", .array(subnets))])
        return .object([
            ("dns_search_domains", .array(plan.info.dnsEnabled ? [.string("dns.podman")] : [])),
            ("dns_server_ips", .array(dnsServers)),
            ("interfaces", .object([(endpoint.interface, interface)])),
        ])
    }

    // MARK: Teardown

    /// Removes the container's endpoints on the call's networks; what is gone already is
    /// fine (a container set up by another backend, a teardown repeated). Goes on past
    /// failures and returns them, and what went that the caller should hear of.
    func teardown() -> (errors: [Error], warnings: [String]) {
        var errors: [Error] = [], warnings: [String] = []
        let endpoints: [Endpoint]
        do {
            endpoints = try manager.endpoints().filter { $0.netns == netns }
        } catch {
            return ([error], [])
        }
        let leaving = options.networks.compactMap { name, per in
            endpoints.first { $0.network == name && $0.interface == per.interfaceName } ?? endpoints.first { $0.name == options.endpointName(name) }
        }
        guard !leaving.isEmpty else { return ([], []) }
        if leaving.count == endpoints.count {
            // The whole container: one detach, its ports with it.
            do { _ = try manager.detach(leaving.map(\.name)) } catch { errors.append(error) }
        } else {
            // `network disconnect`: its ports first go where its default route goes next.
            for endpoint in leaving {
                do {
                    if try !manager.movePortsBeforeDetach(endpoint.name) {
                        warnings.append("netctl-netavark: the published ports of \(options.containerName) went with network \(endpoint.network): no other network of it can hold them; connect one that is not internal and recreate the container to publish them again\n")
                    }
                    _ = try manager.detach([endpoint.name])
                } catch {
                    errors.append(error)
                }
            }
            if let staying = endpoints.first(where: { e in !leaving.contains { $0.name == e.name } }) {
                do { try manager.settlePorts(namespaceOf: staying.name) } catch { errors.append(error) }
            }
        }
        for network in Set(leaving.map(\.network)) { removeIfUnused(network) }
        return (errors, warnings)
    }
}

/// Each network of a call checked and planned before anything is made.
extension NetavarkOptions {
    /// A network of the call, checked: what the netctl network must be and what the
    /// container asks of it.
    struct Plan {
        var name: String
        var per: PerNetwork
        var info: Network
        var spec: NetworkSpec
        var ipv4: String
        var ipv6: String?
        var metric: Int
    }

    /// CONTAINER.NETWORK, or the short ID when the name would be too long.
    func endpointName(_ network: String) -> String {
        let named = "\(containerName).\(network)"
        return named.utf8.count <= 64 ? named : "\(containerID.prefix(12)).\(network.prefix(51))"
    }

    func plan(_ name: String, _ per: PerNetwork) throws -> Plan {
        guard let info = networkInfo[name] else { throw NetavarkError.missingNetworkInfo(network: name) }
        guard info.driver == "bridge" else { throw NetavarkError.unsupportedDriver(network: name, driver: info.driver) }
        guard info.ipamDriver == "host-local" else {
            throw NetavarkError.unsupported(network: name, what: "ipam driver \(info.ipamDriver) (netctl needs Podman's addresses)")
        }
        guard !per.interfaceName.isEmpty else { throw NetavarkError.invalidOptions("network \(name) has no interface_name") }
        let v4 = info.subnets.filter { IPNetwork($0.subnet, strict: false)?.isIPv4 == true }
        let v6 = info.subnets.filter { IPNetwork($0.subnet, strict: false)?.isIPv4 == false }
        guard v4.count + v6.count == info.subnets.count else {
            throw NetavarkError.invalidOptions("network \(name) has a subnet that is not one: \(info.subnets.map(\.subnet))")
        }
        guard v4.count == 1, v6.count <= 1 else {
            throw NetavarkError.unsupported(network: name, what: "\(v4.count) IPv4 and \(v6.count) IPv6 subnets (netctl takes one IPv4 subnet and at most one IPv6)")
        }
        var mtu: Int?, isolate = false, metric = 100
        for (option, value) in info.options {
            switch option {
            case "mtu":
                guard let n = Int(value), n >= 0 else { throw NetavarkError.invalidOption(network: name, option: option, value: value) }
                mtu = n == 0 ? nil : n
            case "isolate":
                guard let b = Bool(value) ?? (value == "strict" ? true : nil) else {
                    throw NetavarkError.invalidOption(network: name, option: option, value: value)
                }
                isolate = b
            case "metric":
                guard let n = Int(value), n >= 0 else { throw NetavarkError.invalidOption(network: name, option: option, value: value) }
                metric = n
            case "vlan":
                throw NetavarkError.unsupported(network: name, what: "option vlan")
            default:
                break  // as netavark: options it does not know change nothing
            }
        }
        // A subnet Podman gave no gateway (an internal network without names) still needs
        // one in netctl; its last address, never on the bridge, where Podman's IPAM hands
        // out the first ones.
        func gateway(_ subnet: Subnet) -> String {
            if let gateway = subnet.gateway { return gateway }
            let last = IPNetwork(subnet.subnet, strict: false)!.last
            if case .v4(let value) = last { return "\(IPAddress.v4(value &- 1))" }  // not the broadcast address
            return "\(last)"
        }
        let noGateway = info.subnets.allSatisfy { $0.gateway == nil }
        let spec = NetworkSpec(name: name, subnet: v4[0].subnet, gateway: gateway(v4[0]), bridge: info.networkInterface,
                               subnet6: v6.first?.subnet, gateway6: v6.first.map(gateway), mtu: mtu, internal: info.internal,
                               dns: info.dnsEnabled, isolated: isolate, gatewayOnBridge: noGateway ? false : nil,
                               owner: NetavarkBackend.owner)
        // One address per subnet, in the subnets' order (Podman's IPAM).
        var ipv4: String?, ipv6: String?
        for ip in per.staticIPs {
            guard let address = IPAddress(ip) else { throw NetavarkError.invalidOptions("network \(name): static ip \(ip) is not an address") }
            if address.isIPv4 { ipv4 = ip } else { ipv6 = ip }
        }
        guard let ipv4 else { throw NetavarkError.noStaticAddress(network: name) }
        return Plan(name: name, per: per, info: info, spec: spec, ipv4: ipv4, ipv6: ipv6, metric: metric)
    }

    /// Podman's mappings as NetCore's, one per port and protocol.
    func expandedPortMappings() throws -> [PortMapping] {
        var mappings: [PortMapping] = []
        for m in portMappings {
            for name in m.protocols {
                guard let proto = PortMapping.Proto(rawValue: name) else {
                    throw NetavarkError.invalidOptions("unknown protocol \"\(name)\" in port_mappings")
                }
                guard Int(m.hostPort) + Int(m.range) - 1 <= 65535, Int(m.containerPort) + Int(m.range) - 1 <= 65535 else {
                    throw NetavarkError.invalidOptions("port range \(m.hostPort)+\(m.range) goes past 65535")
                }
                for offset in 0..<m.range {
                    mappings.append(PortMapping(hostIP: m.hostIP, hostPort: m.hostPort + offset, containerPort: m.containerPort + offset,
                                                proto: proto))
                }
            }
        }
        return mappings
    }
}
