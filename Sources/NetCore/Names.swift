import Netlink
import Primitives

/// What netctl's name server answers, read from state in one go: for every network with
/// names that has endpoints, its addresses on the bridge (where the server listens), its
/// subnets (whose clients it answers), and its names; and for every endpoint address on such
/// a network, which networks its namespace is on (a client is answered the names of all of
/// them, and of no other) and the upstream servers it asked for.
public struct NameTable: Equatable, Sendable {
    public struct Zone: Equatable, Sendable {
        public var network: String
        /// The host's addresses on the bridge: where queries arrive.
        public var gateways: [IPAddress]
        public var subnets: [IPNetwork]
        /// Lower-case name -> addresses (an endpoint's name and its aliases).
        public var names: [String: [IPAddress]]
        /// Address -> the name a reverse lookup gives (the endpoint's name).
        public var reverse: [IPAddress: String]

        public init(network: String, gateways: [IPAddress], subnets: [IPNetwork], names: [String: [IPAddress]],
                    reverse: [IPAddress: String]) {
            self.network = network; self.gateways = gateways; self.subnets = subnets; self.names = names; self.reverse = reverse
        }
    }

    public struct Client: Equatable, Sendable {
        /// The networks with names its namespace is on.
        public var networks: [String]
        /// Upstream servers of its own (`--dns`); empty: the host's.
        public var dnsServers: [IPAddress]

        public init(networks: [String], dnsServers: [IPAddress]) {
            self.networks = networks; self.dnsServers = dnsServers
        }
    }

    public var zones: [String: Zone] = [:]
    public var clients: [IPAddress: Client] = [:]

    public init() {}

    /// Whether a name server is needed at all.
    public var isEmpty: Bool { zones.isEmpty }
}

extension NetworkManager {
    /// The name server's view of state (see `NameTable`).
    public func nameTable() throws -> NameTable {
        try context.store.transactionRead {
            let networks = try context.store.networks().filter(\.dns)
            guard !networks.isEmpty else { return NameTable() }
            let endpoints = try context.store.endpoints().filter { $0.state == .active }
            var table = NameTable()
            let named = Set(networks.map(\.name))
            for network in networks {
                let members = endpoints.filter { $0.network == network.name }
                guard !members.isEmpty else { continue }
                var zone = NameTable.Zone(network: network.name,
                                          gateways: [network.ipv4Gateway] + [network.ipv6Gateway].compactMap { $0 },
                                          subnets: [network.ipv4Subnet] + [network.ipv6Subnet].compactMap { $0 }, names: [:], reverse: [:])
                for e in members {
                    let addresses = [e.ipv4Interface.address] + [e.ipv6Interface?.address].compactMap { $0 }
                    for name in [e.name] + e.aliases { zone.names[name.lowercased(), default: []].append(contentsOf: addresses) }
                    for address in addresses { zone.reverse[address] = e.name }
                }
                table.zones[network.name] = zone
            }
            // Each endpoint address on a named network: the named networks of its namespace.
            var byNamespace: [String: [Endpoint]] = [:]
            for e in endpoints { byNamespace[e.namespaceIdentity.map { "\($0.device):\($0.inode)" } ?? e.netns, default: []].append(e) }
            for group in byNamespace.values {
                let networksOfGroup = group.map(\.network).filter { named.contains($0) && table.zones[$0] != nil }
                guard !networksOfGroup.isEmpty else { continue }
                let servers = group.flatMap(\.dnsServers).compactMap(IPAddress.init)
                for e in group where named.contains(e.network) {
                    let client = NameTable.Client(networks: networksOfGroup, dnsServers: servers)
                    table.clients[e.ipv4Interface.address] = client
                    if let v6 = e.ipv6Interface?.address { table.clients[v6] = client }
                }
            }
            return table
        }
    }
}
