import NetCore
import Primitives

/// The names the server answers, compiled from NetCore's `NameTable` for lookups that
/// allocate nothing: a query's lower-cased wire name is hashed in place and compared with
/// the candidates. Immutable; a reload makes a new one.
final class CompiledNames: Sendable {
    struct Zone: Sendable {
        var network: String
        var subnets: [IPNetwork]
    }

    struct Entry: Sendable {
        var zone: Int
        var name: [UInt8]
        /// Addresses' bytes, 4 (A) or 16 (AAAA) each.
        var v4: [[UInt8]]
        var v6: [[UInt8]]
    }

    struct Client: Sendable {
        var zones: [Int]
        var upstreams: [SocketAddress]
    }

    let zones: [Zone]
    /// Gateway address -> the zone whose queries arrive there.
    let listeners: [IPAddress: Int]
    let entries: [Entry]
    let byHash: [UInt64: [Int]]
    /// Address -> (zone, the name a reverse lookup gives, in wire form).
    let reverse: [IPAddress: [(zone: Int, name: [UInt8])]]
    let clients: [IPAddress: Client]

    /// Suffixes a client's resolver may append from its search list: answered as the bare
    /// name (Podman writes `search dns.podman` for networks with names).
    static let searchDomains: [[UInt8]] = [DNSName.wire("dns.podman")!.dropLast()].map(Array.init)

    init(_ table: NameTable) {
        var zones: [Zone] = [], listeners: [IPAddress: Int] = [:], entries: [Entry] = []
        var byHash: [UInt64: [Int]] = [:], reverse: [IPAddress: [(zone: Int, name: [UInt8])]] = [:]
        var zoneIndex: [String: Int] = [:]
        for (network, zone) in table.zones.sorted(by: { $0.key < $1.key }) {
            let index = zones.count
            zoneIndex[network] = index
            zones.append(Zone(network: network, subnets: zone.subnets))
            for gateway in zone.gateways { listeners[gateway] = index }
            for (name, addresses) in zone.names.sorted(by: { $0.key < $1.key }) {
                guard let wire = DNSName.wire(name) else { continue }
                let entry = Entry(zone: index, name: wire, v4: addresses.filter(\.isIPv4).map(\.bytes),
                                  v6: addresses.filter { !$0.isIPv4 }.map(\.bytes))
                byHash[CompiledNames.hash(wire), default: []].append(entries.count)
                entries.append(entry)
            }
            for (address, name) in zone.reverse {
                if let wire = DNSName.wire(name) { reverse[address, default: []].append((index, wire)) }
            }
        }
        var clients: [IPAddress: Client] = [:]
        for (address, client) in table.clients {
            clients[address] = Client(zones: client.networks.compactMap { zoneIndex[$0] },
                                      upstreams: client.dnsServers.map { SocketAddress($0, 53) })
        }
        self.zones = zones; self.listeners = listeners; self.entries = entries; self.byHash = byHash
        self.reverse = reverse; self.clients = clients
    }

    /// FNV-1a over a wire name.
    static func hash(_ name: [UInt8]) -> UInt64 { name.withUnsafeBytes { hash($0) } }

    static func hash(_ name: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }

    /// The zones a client at `address` is answered from, when it asks at `zone`'s address:
    /// all the named networks of its namespace; a stranger on the zone's subnet gets that
    /// zone; anyone else, none (refused).
    func zones(for address: IPAddress, askingAt zone: Int) -> [Int]? {
        if let client = clients[address], client.zones.contains(zone) { return client.zones }
        return zones[zone].subnets.contains { $0.contains(address) } ? [zone] : nil
    }

    /// The entries for a wire name in one of `zones`, in order, without allocating: the
    /// candidates sharing its hash (nearly always the entry itself), to be checked with
    /// `matches`.
    func candidates(_ name: UnsafeRawBufferPointer) -> [Int] {
        byHash[CompiledNames.hash(name)] ?? []
    }

    func matches(_ index: Int, _ name: UnsafeRawBufferPointer, in zones: [Int]) -> Bool {
        zones.contains(entries[index].zone) && entries[index].name.withUnsafeBytes { $0.elementsEqual(name) }
    }

    /// Cuts a search domain the server knows off the wire name in `name[0..<length]`, in
    /// place; the new length.
    static func stripSearchDomain(_ name: UnsafeMutableRawBufferPointer, length: Int) -> Int {
        for domain in searchDomains where length > domain.count + 1 {
            let tail = length - 1 - domain.count
            // The domain must start at a label boundary: walk the labels to it.
            var offset = 0
            while offset < tail, name[offset] != 0 { offset += 1 + Int(name[offset]) }
            guard offset == tail, domain.withUnsafeBytes({ $0.elementsEqual(name[tail..<(length - 1)]) }) else { continue }
            name[tail] = 0
            return tail + 1
        }
        return length
    }
}
