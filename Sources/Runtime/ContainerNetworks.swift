import FoundationEssentials
import Glibc
import Agent
import NameService
import NetCore
import Primitives

extension ContainerRecord {
    /// The path of its network namespace file.
    public func namespacePath(_ stateDirectory: String) -> String { stateDirectory + "/netns/" + namespaceName }
}

/// What a container's /etc/hostname, /etc/hosts and /etc/resolv.conf say, from `run`'s
/// options: written at run, and again when its networks change.
struct ContainerFiles: Codable, Equatable {
    var extraHosts: [(name: String, address: String)]
    var dns: [String]
    var dnsSearch: [String]
    var dnsOptions: [String]

    init(_ request: RunRequest) throws {
        extraHosts = try request.extraHosts.map { entry in
            // Docker's NAME:IP, the IP possibly IPv6 (so split at the first colon).
            guard let colon = entry.firstIndex(of: ":"), IPAddress(String(entry[entry.index(after: colon)...])) != nil,
                  !entry[..<colon].isEmpty else { throw RuntimeError.invalidExtraHost(entry) }
            return (String(entry[..<colon]), String(entry[entry.index(after: colon)...]))
        }
        for server in request.dns where IPAddress(server) == nil { throw RuntimeError.invalidDNSServer(server) }
        dns = request.dns; dnsSearch = request.dnsSearch; dnsOptions = request.dnsOptions
    }

    enum CodingKeys: CodingKey { case extraHosts, dns, dnsSearch, dnsOptions }
    struct Host: Codable { var name: String; var address: String }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        extraHosts = try c.decode([Host].self, forKey: .extraHosts).map { ($0.name, $0.address) }
        dns = try c.decode([String].self, forKey: .dns)
        dnsSearch = try c.decode([String].self, forKey: .dnsSearch)
        dnsOptions = try c.decode([String].self, forKey: .dnsOptions)
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(extraHosts.map { Host(name: $0.name, address: $0.address) }, forKey: .extraHosts)
        try c.encode(dns, forKey: .dns)
        try c.encode(dnsSearch, forKey: .dnsSearch)
        try c.encode(dnsOptions, forKey: .dnsOptions)
    }

    static func == (a: ContainerFiles, b: ContainerFiles) -> Bool {
        a.extraHosts.map { $0.name + " " + $0.address } == b.extraHosts.map { $0.name + " " + $0.address }
            && a.dns == b.dns && a.dnsSearch == b.dnsSearch && a.dnsOptions == b.dnsOptions
    }

    /// resolv.conf: the name server of each of its networks that has names (it answers the
    /// names of all of them and forwards the rest, to `--dns` servers if given); with none,
    /// the `--dns` servers or the host's reachable ones. Search and options: given, else the host's.
    func resolvConf(_ endpoints: [Endpoint], _ networks: [String: Network]) -> String {
        var configuration = ResolverConfiguration.forContainers()
        let named = endpoints.compactMap { e in networks[e.network].flatMap { $0.dns ? $0.gateway : nil } }
        if !named.isEmpty {
            configuration.nameservers = Array(named.prefix(3))  // glibc reads three
        } else if !dns.isEmpty {
            configuration.nameservers = dns
        }
        if !dnsSearch.isEmpty { configuration.search = dnsSearch }
        if !dnsOptions.isEmpty { configuration.options = dnsOptions }
        return configuration.text
    }

    /// /etc/hosts: localhost, the container's own addresses with its hostname and name, and
    /// `--add-host` entries.
    func hosts(_ endpoints: [Endpoint], hostname: String, name: String) -> String {
        var lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for e in endpoints {
            for address in [e.ipv4] + [e.ipv6].compactMap({ $0 }) {
                lines.append("\(address.split(separator: "/")[0])\t\(hostname == name ? name : "\(hostname) \(name)")")
            }
        }
        lines += extraHosts.map { "\($0.address)\t\($0.name)" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes the three files (in place, so a running container, which has them bind-mounted,
    /// sees the change), and remembers the options for later rewrites.
    func write(for record: ContainerRecord, hostname: String, endpoints: [Endpoint], manager: NetworkManager, in dir: String) throws {
        let networks = try Dictionary(uniqueKeysWithValues: manager.networks().map { ($0.name, $0) })
        try writeFile(dir + "/hostname", hostname + "\n")
        try writeFile(dir + "/hosts", hosts(endpoints, hostname: hostname, name: record.name))
        try writeFile(dir + "/resolv.conf", resolvConf(endpoints, networks))
        let encoder = JSONEncoder()
        try writeFile(dir + "/files.json", Array(try encoder.encode(self)), mode: 0o600, atomically: true)
    }

    static func load(_ dir: String) -> ContainerFiles? {
        readBytes(dir + "/files.json").flatMap { try? JSONDecoder().decode(ContainerFiles.self, from: Data($0)) }
    }
}

extension ContainerManager {
    /// The container's endpoints (one per network), in the order they were attached.
    public func endpoints(of record: ContainerRecord) -> [Endpoint] {
        let path = record.namespacePath(stateDirectory)
        return ((try? network.endpoints()) ?? []).filter { $0.netns == path }.sorted { a, b in
            (record.networks.firstIndex(of: a.network) ?? .max) < (record.networks.firstIndex(of: b.network) ?? .max)
        }
    }

    /// Names as state has them, served from now on (see `Agent.sync`).
    func syncNames() throws {
        try Agent.sync(network, binary: agent)
    }

    /// `run`'s networks: the first makes the namespace, the others join it; then the ports,
    /// on the network holding the default route (or the one whose gateway a mapping names).
    func connectNetworks(of record: inout ContainerRecord, _ request: RunRequest, mappings: [PortMapping]) throws -> [Endpoint] {
        let names: [String?] = request.networks.isEmpty ? [nil] : request.networks.map { $0 }
        var endpoints: [Endpoint] = []
        for (index, name) in names.enumerated() {
            let first = index == 0
            let endpoint = try network.attach(AttachRequest(
                network: name, target: first ? .new(record.namespaceName) : .path(record.namespacePath(stateDirectory)),
                ip: first ? request.ip : nil, ip6: first ? request.ip6 : nil,
                name: record.endpointName(on: name ?? NetworkManager.defaultNetworkName, first: first),
                mac: first ? request.mac : nil, aliases: aliases(of: record, first: first, request.aliases),
                dnsServers: request.dns))
            record.networks.append(endpoint.network)
            endpoints.append(endpoint)
        }
        try publish(mappings, for: record, backend: request.portBackend)
        return endpoints
    }

    /// A container's names on a network besides its endpoint's: its name (when the endpoint
    /// is NAME.NETWORK), its short ID, and its network aliases, as Docker gives them.
    private func aliases(of record: ContainerRecord, first: Bool, _ extra: [String]) -> [String] {
        (first ? [] : [record.name]) + [record.shortID] + extra
    }

    private func publish(_ mappings: [PortMapping], for record: ContainerRecord, backend: PortBackend) throws {
        guard let first = endpoints(of: record).first else { return }
        try network.publish(namespaceOf: first.name, mappings, backend: backend)
    }

    /// Connects a running container to another network (`network connect`): an endpoint
    /// in its namespace, its names there, its ports moved if the new network now holds its
    /// default route, its /etc/hosts and resolv.conf rewritten.
    @discardableResult
    public func connect(_ reference: String, network name: String, ip: String? = nil, ip6: String? = nil, mac: String? = nil,
                        aliases extra: [String] = [], gatewayPriority: Int = 0) throws -> Endpoint {
        let record = try runningRecord(reference)
        if record.networks.contains(name) { throw RuntimeError.alreadyConnected(container: record.name, network: name) }
        let endpoint = try network.attach(AttachRequest(
            network: name, target: .path(record.namespacePath(stateDirectory)), ip: ip, ip6: ip6,
            name: record.endpointName(on: name, first: false), mac: mac, aliases: aliases(of: record, first: false, extra),
            gatewayPriority: gatewayPriority, dnsServers: ContainerFiles.load(directory(record))?.dns ?? []))
        let updated = try store.update(record.id) { $0.networks.append(name) } ?? record
        try placePorts(updated)
        try rewriteFiles(updated)
        try syncNames()
        return endpoint
    }

    /// Disconnects a running container from a network (`network disconnect`). Its ports
    /// move to the network that holds its default route next; a container whose ports
    /// would have nowhere to go, or that would be left on no network, is refused unless
    /// `force` (then its ports, or its last network, go).
    public func disconnect(_ reference: String, network name: String, force: Bool = false) throws {
        let record = try force ? store.find(reference) : runningRecord(reference)
        let all = endpoints(of: record)
        guard let endpoint = all.first(where: { $0.network == name }) else {
            throw RuntimeError.notConnected(container: record.name, network: name)
        }
        let others = all.filter { $0.id != endpoint.id }
        if others.isEmpty && !force { throw RuntimeError.lastNetwork(container: record.name, network: name) }
        if try !network.movePortsBeforeDetach(endpoint.name) && !force {
            throw RuntimeError.portsNeedNetwork(container: record.name, network: name)
        }
        try network.detach([endpoint.name])
        let updated = try store.update(record.id) { $0.networks.removeAll { $0 == name } } ?? record
        try placePorts(updated)
        try rewriteFiles(updated)
        try syncNames()
    }

    private func runningRecord(_ reference: String) throws -> ContainerRecord {
        let record = try store.find(reference)
        guard isRunning(record) else { throw RuntimeError.notRunning(record.name) }
        return record
    }

    /// Ports not pinned to a network live on the endpoint holding the default route.
    private func placePorts(_ record: ContainerRecord) throws {
        guard let first = endpoints(of: record).first else { return }
        try network.settlePorts(namespaceOf: first.name)
    }

    /// Rewrites /etc/hosts and resolv.conf for the container's networks now.
    private func rewriteFiles(_ record: ContainerRecord) throws {
        let dir = directory(record)
        guard let files = ContainerFiles.load(dir) else { return }
        let hostname = readFile(dir + "/hostname")?.trimmed ?? record.shortID
        try files.write(for: record, hostname: hostname, endpoints: endpoints(of: record), manager: network, in: dir)
    }
}
