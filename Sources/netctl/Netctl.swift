import ArgumentParser
// FoundationEssentials, not Foundation: the full Foundation loads ICU at start-up, which
// costs every netctl invocation more than the attach itself.
import FoundationEssentials
import Glibc
import Logging
import NetCore
import Netlink
import Primitives
import Primitives
import Proxy
import ProxyService
import Images
import Agent
import Runtime

@main
struct Netctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netctl",
        abstract: "Container networking over netlink and nftables (networks, endpoints, published ports, a proxy), and `run` for images under runc.",
        subcommands: [NetworkCommand.self, Attach.self, Detach.self, Endpoints.self, PortCommand.self, ProxyCommand.self,
                      Reload.self, GC.self, Run.self, PS.self, Logs.self, Stop.self, Rm.self, Exec.self,
                      Pull.self, ImagesCommand.self, Rmi.self, Load.self, Login.self, Logout.self, Monitor.self])

    /// As ArgumentParser's, but a command line it refuses is one line on stderr with exit
    /// status 1, like every other failure (help still prints in full, with status 0).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)  // the command reported its failure already, or passes a container's status on
        } catch {
            if exitCode(for: error) == .success {
                print(fullMessage(for: error))
                Glibc.exit(0)
            }
            let message = self.message(for: error).split(whereSeparator: \.isNewline).joined(separator: " ")
            writeStandardError("netctl: error: \(message)\(error is ValidationError ? "" : "; see --help")\n")
            Glibc.exit(1)
        }
    }
}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "State directory (default: $NETCTL_STATE_DIR or /var/lib/netctl).")
    var stateDir: String?

    @Flag(name: .long, help: "Log each step to stderr.")
    var debug = false

    /// Opens the library with these options; everything a command does is a call on it.
    func manager() throws -> NetworkManager {
        setUpLogging()
        let manager = try NetworkManager(stateDirectory: stateDir ?? NetworkManager.defaultStateDirectory)
        // A command's caller waits for it: the kernel's deletion of a veth pair (its RCU
        // barrier, most of a detach) happens after it returns, with the pair out of use.
        manager.detachesInBackground = true
        holdSocketsAtExit(manager)
        ensureNameServer(manager)
        return manager
    }

    /// After a change of networks or names: the agent answers from it once this returns (and
    /// is started, or restarted, if a network exists).
    func syncNames(_ manager: NetworkManager) throws {
        do {
            try Agent.sync(manager)
        } catch {
            // The change itself stands; what it means for names is said, not hidden.
            writeStandardError("netctl: warning: \(errorLine(error))\n")
        }
    }

    /// The agent is started again if it died: the next command does it, whatever it is.
    func ensureNameServer(_ manager: NetworkManager) {
        do {
            try Agent.ensureRunning(manager)
        } catch {
            writeStandardError("netctl: warning: \(errorLine(error))\n")
        }
    }

    /// A command that removed published ports would wait on exit for the kernel to release
    /// them (the nftables socket's last close); a detached process takes that.
    func holdSocketsAtExit(_ manager: NetworkManager) {
        if openedManagers.isEmpty {
            atexit { openedManagers.forEach { $0.holdSocketsUntilExit() } }
        }
        openedManagers.append(manager)
    }
}

nonisolated(unsafe) private var openedManagers: [NetworkManager] = []

nonisolated(unsafe) private var loggingReady = false

extension GlobalOptions {
    /// Logging goes to stderr; the system allows setting it up once per process.
    func setUpLogging() {
        guard !loggingReady else { return }
        loggingReady = true
        let level: Logger.Level = debug ? .debug : .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints rows as aligned columns under a header.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        var line = zip(row, widths).map { $0.0 + String(repeating: " ", count: $0.1 - $0.0.count) }.joined(separator: "  ")
        while line.last == " " { line.removeLast() }
        print(line)
    }
}

// MARK: network

struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network", abstract: "Create, list, inspect and remove networks.",
        subcommands: [Create.self, List.self, Inspect.self, Remove.self, Connect.self, Disconnect.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a bridge network.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Network name.") var name: String
        @Option(help: "IPv4 subnet in CIDR form (default: a free /16 from 172.17-31.0.0).") var subnet: String?
        @Option(help: "IPv4 gateway, the bridge's address (default: the subnet's first address).") var gateway: String?
        @Option(help: "Bridge interface name (default: nc-NAME).") var bridge: String?
        @Option(help: "IPv6 subnet in CIDR form, e.g. fd00:1::/64.") var subnet6: String?
        @Option(help: "IPv6 gateway (default: the subnet's first address).") var gateway6: String?
        @Option(help: "MTU of the bridge and its veth pairs.") var mtu: Int?
        @Flag(help: "No route out: no masquerade, no default route in its containers, nothing forwarded in or out.")
        var `internal` = false
        @Flag(name: .customLong("disable-dns"), help: "Its containers' names do not resolve (they do by default).")
        var disableDNS = false
        @Flag(inversion: .prefixedNo, help: "No traffic with other netctl networks (--no-isolate: with other open ones).")
        var isolate = true
        @Flag(help: "Print the network as JSON.") var json = false

        func run() throws {
            try reportingErrors {
                let manager = try global.manager()
                let network = try manager.createNetwork(NetworkSpec(
                    name: name, subnet: subnet, gateway: gateway, bridge: bridge, subnet6: subnet6,
                    gateway6: gateway6, mtu: mtu, internal: `internal`, dns: disableDNS ? false : nil, isolated: isolate))
                try global.syncNames(manager)  // the agent watches the firewall from the first network on
                if json { try printJSON(network) } else { print(network.name) }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List networks.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try reportingErrors {
                let networks = try global.manager().networks()
                if json { return try printJSON(networks) }
                printTable(["NAME", "BRIDGE", "SUBNET", "GATEWAY", "SUBNET6", "OPTIONS"],
                           networks.map { n in
                               let options = [n.internal ? "internal" : nil, n.dns ? "dns" : nil, n.isolated ? nil : "open"].compactMap { $0 }
                               return [n.name, n.bridge, n.subnet, n.gateway, n.subnet6 ?? "-", options.isEmpty ? "-" : options.joined(separator: ",")]
                           })
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a network and its endpoints as JSON.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Network name.") var name: String

        struct Output: Encodable {
            var network: Network
            var endpoints: [Endpoint]
            func encode(to encoder: Encoder) throws {
                try network.encode(to: encoder)
                var container = encoder.container(keyedBy: Key.self)
                try container.encode(endpoints, forKey: Key(stringValue: "endpoints")!)
            }
            struct Key: CodingKey {
                var stringValue: String
                init?(stringValue: String) { self.stringValue = stringValue }
                var intValue: Int? { nil }
                init?(intValue: Int) { nil }
            }
        }

        func run() throws {
            try reportingErrors {
                let manager = try global.manager()
                try printJSON(Output(network: try manager.network(named: name), endpoints: try manager.endpoints(network: name)))
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove networks and their bridges.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Network names.") var names: [String]
        @Flag(name: .shortAndLong, help: "Detach attached endpoints first.") var force = false

        func run() throws {
            try reportingErrors {
                let manager = try global.manager()
                // As `docker network rm`: each in turn, stopping at the first that fails.
                defer { try? global.syncNames(manager) }
                for name in names {
                    try manager.removeNetwork(named: name, force: force)
                    print(name)
                }
            }
        }
    }

    struct Connect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Connect a running container to another network.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Network name.") var network: String
        @Argument(help: "Container name or ID.") var container: String
        @Option(help: "IPv4 address on the network.") var ip: String?
        @Option(help: "IPv6 address on the network.") var ip6: String?
        @Option(name: .customLong("mac-address"), help: "MAC address on the network.") var macAddress: String?
        @Option(help: "Another name it answers to on this network. Repeatable.") var alias: [String] = []
        @Option(name: .customLong("gateway-priority"), help: "The network with the highest priority holds the default route (ties: the first).")
        var gatewayPriority = 0

        func run() throws {
            try reportingErrors {
                try global.containers().connect(container, network: network, ip: ip, ip6: ip6, mac: macAddress, aliases: alias,
                                                gatewayPriority: gatewayPriority)
            }
        }
    }

    struct Disconnect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disconnect a container from a network.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Network name.") var network: String
        @Argument(help: "Container name or ID.") var container: String
        @Flag(name: .shortAndLong, help: "Also its last network, or ports no other network of it can carry.") var force = false

        func run() throws {
            try reportingErrors {
                try global.containers().disconnect(container, network: network, force: force)
            }
        }
    }
}

// MARK: endpoints

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach a network namespace to a network (veth pair, address, default route).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Network (default: \(NetworkManager.defaultNetworkName), created on first use).") var network: String?
    @Option(help: "Network namespace file, e.g. /run/netns/NAME.") var netns: String?
    @Option(help: "Attach the network namespace of this process.") var pid: Int32?
    @Option(name: .customLong("new"), help: "Create a new namespace NAME under the state directory (removed on detach).")
    var newNamespace: String?
    @Option(help: "IPv4 address to use (default: the next free one).") var ip: String?
    @Option(help: "Endpoint name (default: ep-ID).") var name: String?
    @Option(help: "IPv6 address to use (the network needs an IPv6 subnet).") var ip6: String?
    @Option(help: "Interface name inside the namespace (default: the first free eth0, eth1, ...).") var ifname: String?
    @Option(help: "MAC address inside the namespace (default: derived from the IPv4 address).") var mac: String?
    @Option(help: "Another name the endpoint answers to on its network. Repeatable.") var alias: [String] = []
    @Option(name: .customLong("gateway-priority"), help: "Of a namespace's networks, the highest priority holds the default route (ties: the first attached).")
    var gatewayPriority = 0
    @Flag(name: .customLong("no-default-route"), help: "Never give the namespace its default route through this network.")
    var noDefaultRoute = false
    @Option(name: [.customShort("p"), .customLong("publish")],
            help: "Publish a port, Docker's -p syntax: [hostIP:][hostPort[-end]:]containerPort[-end][/proto]. Repeatable.")
    var publish: [String] = []
    @Option(help: "What carries published ports: nft (kernel DNAT), proxy, or auto (kernel where it can, proxy for [::1] and IPv6 to IPv4).")
    var backend: PortBackend = .nft
    @Flag(help: "Print the endpoint as JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let targets: [AttachRequest.Target] = [netns.map { .path($0) }, pid.map { .pid($0) },
                                                   newNamespace.map { .new($0) }].compactMap { $0 }
            guard targets.count == 1 else {
                throw UsageError("say which network namespace to attach: --netns PATH, --pid PID or --new NAME (exactly one)")
            }
            let ports = try publish.flatMap { try PortMapping.parse($0) }
            let manager = try global.manager()
            let endpoint = try manager.attach(AttachRequest(
                network: network, target: targets[0], ip: ip, ip6: ip6, name: name, interface: ifname, mac: mac, aliases: alias,
                gatewayPriority: gatewayPriority, defaultRoute: !noDefaultRoute, ports: ports, portBackend: backend))
            try global.syncNames(manager)
            if json { return try printJSON(endpoint) }
            print("\(endpoint.name) \(endpoint.ipv4)\(endpoint.ipv6.map { " \($0)" } ?? "") " +
                  "\(endpoint.interface) in \(endpoint.netns) via \(endpoint.gateway) on \(endpoint.network)")
            for port in try manager.ports(endpoint: endpoint.name) { print(port.description) }
        }
    }
}

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Detach endpoints: remove their veth pairs and release their addresses.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Endpoint names.") var endpoints: [String]

    func run() throws {
        try reportingErrors {
            let manager = try global.manager()
            for endpoint in try manager.detach(endpoints) { print(endpoint.name) }
            try global.syncNames(manager)
        }
    }
}

struct Endpoints: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List endpoints, of one network or all.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Network name.") var network: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let endpoints = try global.manager().endpoints(network: network)
            if json { return try printJSON(endpoints) }
            printTable(["NAME", "NETWORK", "IPV4", "IPV6", "INTERFACE", "HOST-IF", "NETNS", "STATE"],
                       endpoints.map { [$0.name, $0.network, $0.ipv4, $0.ipv6 ?? "-", $0.interface, $0.hostInterface,
                                        $0.netns, $0.state.rawValue] })
        }
    }
}

struct GC: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reconcile state with the kernel: remove leftovers, drop endpoints whose namespace is gone.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(help: "Take state.db as it is for the truth (after restoring or rebuilding it on purpose), then reconcile.")
    var acceptState = false

    func run() throws {
        try reportingErrors {
            let manager = try global.containers()
            if acceptState { try manager.network.acceptState() }
            if let problem = manager.network.stateProblem {
                throw NetctlError.stateSuspect(path: manager.network.stateDirectory + "/state.db", problem: problem)
            }
            // Containers whose monitor died first: their release detaches their endpoints.
            let containers = try manager.gc()
            let report = try manager.network.gc()
            try global.syncNames(manager.network)
            if json { return try printJSON(report) }
            if !containers.isEmpty { print("cleaned up containers: \(containers.joined(separator: ", "))") }
            print("removed endpoints: \(report.removedEndpoints.count), links: \(report.removedLinks.count), " +
                  "namespaces: \(report.removedNamespaces.count), map elements: \(report.removedMappings.count); " +
                  "restored bridges: \(report.restoredBridges.count), map elements: \(report.restoredMappings.count)")
        }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reinstall netctl's nftables table from state in one batch (e.g. after `nft flush ruleset`).")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        try reportingErrors {
            let count = try global.manager().reload()
            print("reloaded table inet netctl with \(count) map elements")
        }
    }
}

// MARK: proxy

extension PortBackend: ExpressibleByArgument {}

struct ProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy", abstract: "The userland proxy backend.", subcommands: [Serve.self])

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve every mapping whose backend is proxy (or auto's share), following state until SIGTERM or SIGINT, then drain.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Event loops (default: one per CPU the process may use).") var workers: Int?
        @Option(help: "Serve Prometheus metrics at http://IP:PORT/metrics.") var metrics: String?
        @Option(help: "Seconds open connections may take to finish after SIGTERM.") var drain: Double = 10
        @Option(help: "Copy reads up to this many bytes through user space, splice bigger transfers (0: always splice).")
        var copyThreshold: Int = 16384
        @Flag(inversion: .prefixedNo, help: "Bind each event loop to a CPU of its own (when there is one loop per CPU).")
        var pinWorkers = true
        @Option(help: "TCP congestion control for connections to containers, which never leave the host (system: the host's default).")
        var backendCongestionControl = "cubic"
        @Flag(inversion: .prefixedNo, help: "Hand new TCP connections from a worker holding more than others to the least busy one (for local clients that open many long-lived connections from one CPU).")
        var balanceConnections = false

        func validate() throws {
            if let workers, workers < 1 { throw ValidationError("--workers must be 1 or more (default: one per CPU), not \(workers)") }
            if copyThreshold < 0 { throw ValidationError("--copy-threshold must be 0 (always splice) or more, not \(copyThreshold)") }
            let pipe = ProxyServer.Options().pipeSize
            if copyThreshold > pipe {
                throw ValidationError("--copy-threshold must be at most \(pipe) (a pipe's size: what a slow destination leaves of a copied read waits in one), not \(copyThreshold)")
            }
            if !(drain >= 0) { throw ValidationError("--drain must be 0 or more seconds, not \(drain)") }
            if backendCongestionControl.isEmpty || backendCongestionControl.utf8.count > 15 {
                throw ValidationError("--backend-congestion-control needs an algorithm's name (e.g. cubic, reno, bbr) or system, not '\(backendCongestionControl)'")
            }
        }

        func run() throws {
            try reportingErrors {
                // Bad input fails before anything starts.
                let metricsAddress = try metrics.map { text -> SocketAddress in
                    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]),
                          let ip = IPAddress(String(text[..<colon].filter { $0 != "[" && $0 != "]" })) else {
                        throw UsageError("invalid --metrics \"\(text)\": give IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
                    }
                    return SocketAddress(ip, port)
                }
                var options = ProxyServer.Options()
                if let workers { options.workers = workers }
                options.copyThreshold = copyThreshold
                options.pinWorkers = pinWorkers
                options.balanceConnections = balanceConnections
                options.backendCongestionControl = backendCongestionControl == "system" ? nil : backendCongestionControl
                try ProxyService.runUntilSignalled(manager: try global.manager(), options: options, metrics: metricsAddress,
                                                   drainSeconds: drain, logger: Logger(label: "netctl-proxy")) {
                    writeStandardError("netctl proxy: \($0)\n")
                }
            }
        }
    }
}

// MARK: port

struct PortCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "port", abstract: "Publish container ports on the host, with Docker's -p syntax.",
        subcommands: [Add.self, Remove.self, List.self, Stats.self, Parse.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Publish ports of an endpoint (kernel DNAT).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var endpoint: String
        @Argument(help: "Port specs, e.g. 8080:80 127.0.0.1::53/udp 8000-8010:80.") var specs: [String]
        @Option(help: "What carries them: nft (kernel DNAT), proxy, or auto (kernel where it can, proxy for [::1] and IPv6 to IPv4).")
        var backend: PortBackend = .nft
        @Flag(help: "Print the published ports as JSON.") var json = false

        func run() throws {
            try reportingErrors {
                let mappings = try specs.flatMap { try PortMapping.parse($0) }
                let published = try global.manager().publish(endpoint: endpoint, mappings, backend: backend)
                if json { return try printJSON(published) }
                for port in published { print(port.description) }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm", abstract: "Unpublish ports of an endpoint: those matching the specs, or all.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var endpoint: String
        @Argument(help: "Port specs to remove, e.g. 80 8080:80/udp (default: all).") var specs: [String] = []

        func run() throws {
            try reportingErrors {
                let parsed = try specs.map { (text: $0, mappings: try PortMapping.parse($0)) }
                for port in try global.manager().unpublish(endpoint: endpoint, parsed) { print(port.description) }
            }
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Traffic per published port: the proxy's bytes and connections, and the kernel path's tracked flows.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var endpoint: String?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try reportingErrors {
                let stats = try PortStatistics.read(try global.manager(), endpoint: endpoint)
                if json { return try printJSON(stats) }
                printTable(["ENDPOINT", "PORT", "BACKEND", "KERNEL-FLOWS", "PROXY-CONN", "PROXY-ACTIVE", "BYTES-IN", "BYTES-OUT"],
                           stats.map { s in
                               [s.port.endpoint, s.port.description.split(separator: "\n").joined(separator: ", "), s.port.backend.rawValue,
                                "\(s.kernelConnections)", s.proxy.map { "\($0.connections)" } ?? "-", s.proxy.map { "\($0.active)" } ?? "-",
                                s.proxy.map { "\($0.bytesIn)" } ?? "-", s.proxy.map { "\($0.bytesOut)" } ?? "-"]
                           })
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls", abstract: "List published ports, like `docker port`: of one endpoint or all.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Endpoint name.") var endpoint: String?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try reportingErrors {
                let ports = try global.manager().ports(endpoint: endpoint)
                if json { return try printJSON(ports) }
                for port in ports {
                    for line in port.description.split(separator: "\n") {
                        print(endpoint == nil ? "\(port.endpoint) \(line)" : String(line))
                    }
                }
            }
        }
    }

    struct Parse: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print what -p specs mean, as one JSON array: [hostIP:][hostPort[-end]:]containerPort[-end][/proto].")
        @Argument(help: "Port specs, e.g. 8080:80 127.0.0.1::53/udp [::1]:8000-8010:80.") var specs: [String]

        func run() throws {
            try reportingErrors {
                let mappings = try specs.flatMap { try PortMapping.parse($0) }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(mappings), as: UTF8.self))
            }
        }
    }
}
