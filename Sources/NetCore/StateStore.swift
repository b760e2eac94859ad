import Glibc
import Netlink
import Primitives

/// netctl's state: networks and endpoints in SQLite (WAL mode), shared safely by every
/// netctl process and library user on the machine. Address leases are the endpoints'
/// address columns, unique per network, so the database itself refuses a double lease.
final class StateStore {
    let db: SQLiteDatabase
    /// True when this open found state from before a reboot and discarded its endpoints.
    private(set) var discardedPreviousBoot = false
    /// Why this state must not be trusted to reconcile the kernel by, if it must not.
    private(set) var integrityProblem: StateProblem?

    /// The state's identity and write count, kept outside the database too (`state.db.generation`),
    /// so a database emptied, replaced or rolled back under netctl is noticed: every write
    /// transaction counts one up in both, and the database must never be behind the file.
    private let mirrorPath: String
    private var stateID = ""
    let path: String
    /// The database file this connection opened (device, inode): a long-lived process must
    /// not write into a file that was since replaced, nor stamp the new one's mirror.
    private let opened: (dev_t, ino_t)?

    /// Refuses what would make the kernel match state (gc, rebuilding the table) while state
    /// cannot be trusted.
    func requireTrusted() throws {
        if let problem = integrityProblem { throw NetctlError.stateSuspect(path: path, problem: problem) }
    }

    /// Bumped with every schema change below; kept in SQLite's `user_version`.
    static let schemaVersion: Int64 = 5

    init(path: String, bootID: String = currentBootID()) throws {
        self.path = path
        mirrorPath = path + ".generation"
        db = try SQLiteDatabase(path: path)
        opened = StateStore.identity(of: path)
        // Only root reads the state: it names every container's namespace and address.
        for file in [path, path + "-wal", path + "-shm"] { chmod(file, 0o600) }
        // Processes opening a new database together (parallel CNI ADDs on a fresh machine)
        // can get "database is locked" at once, without the busy timeout; such an open is
        // tried again for up to 15 s.
        let deadline = monotonicNanoseconds() + 15_000_000_000
        while true {
            do {
                try prepare(bootID: bootID)
                try checkIntegrity()
                return
            } catch where db.lastErrorWasBusy && monotonicNanoseconds() < deadline {
                usleep(UInt32.random(in: 2_000...20_000))
            }
        }
    }

    /// Connection settings, and the schema and boot check when they are due.
    private func prepare(bootID: String) throws {
        // Setting the journal mode takes an exclusive lock; it is persistent, so only once.
        if try db.query("PRAGMA journal_mode").first?.first?.string != "wal" {
            try db.execute("PRAGMA journal_mode=WAL")
        }
        // A short WAL: each process that opens the database alone (every CLI command, every
        // CNI call) rebuilds the WAL index by reading the whole WAL, so its length is paid on
        // every open. SQLite's default (checkpoint at 1000 pages) let that reach 4 MB; at 64
        // pages a writer checkpoints every few operations (two fsyncs) and an open reads
        // at most 256 KB.
        try db.execute("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=64;")
        // The common open (schema current, same boot) only reads: no write transaction and
        // no DDL to parse, which every short-lived process (CLI, CNI plugin) would pay.
        if try db.query("PRAGMA user_version").first?.first?.int == StateStore.schemaVersion,
           try db.query("SELECT value FROM meta WHERE key = 'boot_id'").first?.first?.string == bootID {
            return
        }
        try db.transaction {
            try db.execute(StateStore.schema)
            // Columns added since the first schema, with what older state meant: every port was
            // kernel DNAT; every network masqueraded, had no names and was isolated; every
            // endpoint was its namespace's only one, with its default route.
            try addColumn("ports", "backend TEXT NOT NULL DEFAULT 'nft'")
            try addColumn("networks", "internal INTEGER NOT NULL DEFAULT 0")
            try addColumn("networks", "dns INTEGER NOT NULL DEFAULT 0")
            try addColumn("networks", "isolated INTEGER NOT NULL DEFAULT 1")
            try addColumn("networks", "gateway_on_bridge INTEGER NOT NULL DEFAULT 1")
            try addColumn("networks", "owner TEXT NOT NULL DEFAULT ''")
            try addColumn("endpoints", "aliases TEXT NOT NULL DEFAULT ''")
            try addColumn("endpoints", "gateway_priority INTEGER NOT NULL DEFAULT 0")
            try addColumn("endpoints", "default_route INTEGER NOT NULL DEFAULT 1")
            try addColumn("endpoints", "dns_servers TEXT NOT NULL DEFAULT ''")
            let recorded = try db.query("SELECT value FROM meta WHERE key = 'boot_id'").first?.first?.string
            if recorded != bootID {
                // Every veth, address and namespace mount died with the previous boot;
                // networks stay and their bridges are made again on demand.
                if recorded != nil {
                    try db.run("DELETE FROM endpoints")
                    discardedPreviousBoot = true
                }
                try db.run("INSERT OR REPLACE INTO meta(key, value) VALUES ('boot_id', ?)", [.text(bootID)])
            }
            try db.execute("PRAGMA user_version = \(StateStore.schemaVersion)")
        }
    }

    /// Adds a column to a table written by an older schema (the CREATE TABLEs below have it).
    private func addColumn(_ table: String, _ definition: String) throws {
        let name = String(definition.prefix { $0 != " " })
        if try !db.query("PRAGMA table_info(\(table))").contains(where: { $0[1].string == name }) {
            try db.execute("ALTER TABLE \(table) ADD COLUMN \(definition)")
        }
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS networks (
            name TEXT PRIMARY KEY,
            bridge TEXT NOT NULL UNIQUE,
            subnet TEXT NOT NULL,
            gateway TEXT NOT NULL,
            subnet6 TEXT,
            gateway6 TEXT,
            mtu INTEGER NOT NULL,
            last_ipv4 TEXT,
            last_ipv6 TEXT,
            created TEXT NOT NULL,
            internal INTEGER NOT NULL DEFAULT 0,
            dns INTEGER NOT NULL DEFAULT 0,
            isolated INTEGER NOT NULL DEFAULT 1,
            gateway_on_bridge INTEGER NOT NULL DEFAULT 1,
            owner TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE IF NOT EXISTS endpoints (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            network TEXT NOT NULL REFERENCES networks(name),
            host_interface TEXT NOT NULL UNIQUE,
            interface TEXT NOT NULL,
            mac TEXT NOT NULL,
            ipv4 TEXT NOT NULL,
            ipv6 TEXT,
            netns TEXT NOT NULL,
            netns_device INTEGER,
            netns_inode INTEGER,
            pid INTEGER,
            owns_netns INTEGER NOT NULL,
            state TEXT NOT NULL,
            owner TEXT NOT NULL,
            created TEXT NOT NULL,
            aliases TEXT NOT NULL DEFAULT '',
            gateway_priority INTEGER NOT NULL DEFAULT 0,
            default_route INTEGER NOT NULL DEFAULT 1,
            dns_servers TEXT NOT NULL DEFAULT '',
            UNIQUE (network, ipv4),
            UNIQUE (network, ipv6)
        );
        CREATE TABLE IF NOT EXISTS ports (
            endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
            proto TEXT NOT NULL,
            host_ip TEXT NOT NULL,
            host_port INTEGER NOT NULL,
            container_port INTEGER NOT NULL,
            backend TEXT NOT NULL DEFAULT 'nft',
            UNIQUE (proto, host_port, host_ip)
        );
        CREATE INDEX IF NOT EXISTS ports_by_endpoint ON ports(endpoint_id);
        CREATE TABLE IF NOT EXISTS relay_claims (scope TEXT PRIMARY KEY, owner TEXT NOT NULL);
        """

    /// A write transaction; it counts one more write (see `mirrorPath`).
    func transaction<T>(_ body: () throws -> T) throws -> T {
        if let opened, let now = StateStore.identity(of: path), now != opened {
            throw NetctlError.stateSuspect(path: path, problem: .replaced)
        }
        var counted: (id: String, generation: Int64)?
        let result = try db.transaction {
            let value = try body()
            let row = try db.query("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value").first?.first
            // The database's own identity, not one remembered from the open: a long-lived
            // process must not stamp a replaced database's file with its old one.
            if let generation = row?.int ?? row?.string.flatMap({ Int64($0) }), let id = try meta("state_id") {
                counted = (id, generation)
            }
            return value
        }
        if let counted, integrityProblem == nil { writeMirror(counted.generation, id: counted.id) }
        return result
    }

    // MARK: Integrity

    private static func identity(of path: String) -> (dev_t, ino_t)? {
        var st = stat()
        return stat(path, &st) == 0 ? (st.st_dev, st.st_ino) : nil
    }

    private func meta(_ key: String) throws -> String? {
        try db.query("SELECT value FROM meta WHERE key = ?", [.text(key)]).first?.first?.string
    }

    /// Compares the database with the file beside it (see `mirrorPath`).
    private func readMirror() -> (id: String, generation: Int64)? {
        readFile(mirrorPath).flatMap { text in
            let parts = text.split(whereSeparator: \.isWhitespace)
            guard parts.count == 2, let generation = Int64(parts[1]) else { return nil }
            return (String(parts[0]), generation)
        }
    }

    private func checkIntegrity() throws {
        let mirror = readMirror()
        guard let id = try meta("state_id"), let generation = try meta("generation").flatMap({ Int64($0) }) else {
            if let mirror {
                // The file says this directory had state; the database has none of it.
                integrityProblem = .lost(writes: mirror.generation)
                return
            }
            stateID = randomHex(bytes: 8)
            try db.transaction {
                try db.run("INSERT OR REPLACE INTO meta(key, value) VALUES ('state_id', ?), ('generation', '0')", [.text(stateID)])
            }
            writeMirror(0)
            return
        }
        stateID = id
        guard let mirror else { return writeMirror(generation) }  // state from before the file existed
        if mirror.id != id {
            integrityProblem = .replaced
        } else if generation < mirror.generation {
            integrityProblem = .rolledBack(writes: generation, expected: mirror.generation)
        }
    }

    private func writeMirror(_ generation: Int64, id: String? = nil) {
        let fd = open(mirrorPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = writeAll(fd, Array("\(id ?? stateID) \(generation)\n".utf8))
        close(fd)
    }

    /// Takes the database as it is for the truth from now on (`gc --accept-state`).
    func acceptState() throws {
        let mirrored = readMirror()?.generation ?? 0
        stateID = try meta("state_id") ?? randomHex(bytes: 8)
        let generation = max(try meta("generation").flatMap { Int64($0) } ?? 0, mirrored) + 1
        try db.transaction {
            try db.run("INSERT OR REPLACE INTO meta(key, value) VALUES ('state_id', ?), ('generation', ?)",
                       [.text(stateID), .text("\(generation)")])
        }
        integrityProblem = nil
        writeMirror(generation)
    }

    /// Reads under one snapshot, without the write lock.
    func transactionRead<T>(_ body: () throws -> T) throws -> T {
        try db.readTransaction(body)
    }

    // MARK: Networks

    private static let networkColumns = "name, bridge, subnet, gateway, subnet6, gateway6, mtu, created, internal, dns, isolated, gateway_on_bridge, owner"

    func networks() throws -> [Network] {
        try db.query("SELECT \(StateStore.networkColumns) FROM networks ORDER BY name").map(StateStore.network)
    }

    func network(named name: String) throws -> Network? {
        try db.query("SELECT \(StateStore.networkColumns) FROM networks WHERE name = ?", [.text(name)])
            .first.map(StateStore.network)
    }

    func insert(_ n: Network) throws {
        try db.run("INSERT INTO networks (\(StateStore.networkColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [.text(n.name), .text(n.bridge), .text(n.subnet), .text(n.gateway), n.subnet6.sqlite,
                    n.gateway6.sqlite, .integer(Int64(n.mtu)), .text(n.created.description), .bool(n.internal), .bool(n.dns),
                    .bool(n.isolated), .bool(n.gatewayOnBridge), .text(n.owner)])
    }

    func deleteNetwork(named name: String) throws {
        try db.run("DELETE FROM networks WHERE name = ?", [.text(name)])
    }

    func lastAllocated(network: String, ipv6: Bool) throws -> IPAddress? {
        try db.query("SELECT \(ipv6 ? "last_ipv6" : "last_ipv4") FROM networks WHERE name = ?", [.text(network)])
            .first?.first?.string.flatMap { IPAddress($0) }
    }

    func setLastAllocated(network: String, ipv6: Bool, _ ip: IPAddress) throws {
        try db.run("UPDATE networks SET \(ipv6 ? "last_ipv6" : "last_ipv4") = ? WHERE name = ?",
                   [.text(ip.description), .text(network)])
    }

    private static func network(_ row: [SQLiteValue]) -> Network {
        Network(name: row[0].string!, bridge: row[1].string!, subnet: row[2].string!, gateway: row[3].string!,
                subnet6: row[4].string, gateway6: row[5].string, mtu: Int(row[6].int ?? 1500),
                created: Timestamp(iso8601: row[7].string!) ?? Timestamp(secondsSinceEpoch: 0),
                internal: row[8].int == 1, dns: row[9].int == 1, isolated: row[10].int != 0, gatewayOnBridge: row[11].int != 0,
                owner: row[12].string ?? "")
    }

    // MARK: Endpoints

    private static let endpointColumns = """
        e.id, e.name, e.network, e.host_interface, e.interface, e.mac, e.ipv4, e.ipv6, e.netns, e.netns_device,
        e.netns_inode, e.pid, e.owns_netns, e.state, e.owner, e.created, n.subnet, n.gateway, n.subnet6, n.gateway6,
        e.aliases, e.gateway_priority, e.default_route, e.rowid, e.dns_servers
        """

    func endpoints(network: String? = nil) throws -> [Endpoint] {
        let filter = network == nil ? "" : "WHERE e.network = ?"
        return try db.query("""
            SELECT \(StateStore.endpointColumns) FROM endpoints e JOIN networks n ON n.name = e.network
            \(filter) ORDER BY e.network, e.name
            """, network.map { [.text($0)] } ?? []).map(StateStore.endpoint)
    }

    func endpoint(named name: String) throws -> Endpoint? {
        try db.query("""
            SELECT \(StateStore.endpointColumns) FROM endpoints e JOIN networks n ON n.name = e.network
            WHERE e.name = ?
            """, [.text(name)]).first.map(StateStore.endpoint)
    }

    /// Addresses leased on a network, IPv4 and IPv6, with the endpoint holding each.
    func leases(network: String) throws -> [IPAddress: String] {
        var leases: [IPAddress: String] = [:]
        for row in try db.query("SELECT ipv4, ipv6, name FROM endpoints WHERE network = ?", [.text(network)]) {
            for column in row.prefix(2) {
                if let ip = column.string.flatMap(IPAddress.init) { leases[ip] = row[2].string! }
            }
        }
        return leases
    }

    func insert(_ e: Endpoint) throws {
        try db.run("""
            INSERT INTO endpoints (id, name, network, host_interface, interface, mac, ipv4, ipv6, netns,
                netns_device, netns_inode, pid, owns_netns, state, owner, created, aliases, gateway_priority, default_route,
                dns_servers)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [.text(e.id), .text(e.name), .text(e.network), .text(e.hostInterface), .text(e.interface), .text(e.mac),
             .text(StateStore.bareAddress(e.ipv4)), e.ipv6.map { StateStore.bareAddress($0) }.sqlite, .text(e.netns),
             e.namespaceIdentity.map { .integer(Int64(bitPattern: $0.device)) } ?? .null,
             e.namespaceIdentity.map { .integer(Int64(bitPattern: $0.inode)) } ?? .null,
             e.pid.map { .integer(Int64($0)) } ?? .null, .integer(e.ownsNetns ? 1 : 0), .text(e.state.rawValue),
             .text(e.owner.encoded), .text(e.created.description), .text(e.aliases.joined(separator: ",")),
             .integer(Int64(e.gatewayPriority)), .bool(e.mayHoldDefaultRoute), .text(e.dnsServers.joined(separator: ","))])
    }

    func update(endpoint id: String, state: Endpoint.State, owner: ProcessIdentity? = nil,
                namespaceIdentity: NetworkNamespace.Identity? = nil) throws {
        try db.run("UPDATE endpoints SET state = ?, owner = COALESCE(?, owner), netns_device = COALESCE(?, netns_device), netns_inode = COALESCE(?, netns_inode) WHERE id = ?",
                   [.text(state.rawValue), owner.map { .text($0.encoded) } ?? .null,
                    namespaceIdentity.map { .integer(Int64(bitPattern: $0.device)) } ?? .null,
                    namespaceIdentity.map { .integer(Int64(bitPattern: $0.inode)) } ?? .null, .text(id)])
    }

    func deleteEndpoint(id: String) throws {
        try db.run("DELETE FROM endpoints WHERE id = ?", [.text(id)])
    }

    // MARK: Published ports

    /// Published ports with the endpoint each belongs to; all of them, or one endpoint's.
    func ports(endpoint: String? = nil) throws -> [(port: PublishedPort, endpoint: Endpoint)] {
        try ports(where: endpoint == nil ? "" : "WHERE e.name = ?", endpoint.map { [.text($0)] } ?? [])
    }

    /// The ports already published on one host port and protocol (any host address): an
    /// index lookup, so a publish costs the same with 10,000 mappings as with one.
    func ports(proto: PortMapping.Proto, hostPort: UInt16) throws -> [PublishedPort] {
        try ports(where: "WHERE p.proto = ? AND p.host_port = ?", [.text(proto.rawValue), .integer(Int64(hostPort))]).map(\.port)
    }

    /// Ports with their endpoints in one query: no per-endpoint lookups, whatever the count.
    private func ports(where filter: String, _ values: [SQLiteValue]) throws -> [(port: PublishedPort, endpoint: Endpoint)] {
        try db.query("""
            SELECT \(StateStore.endpointColumns), p.proto, p.host_ip, p.host_port, p.container_port, p.backend FROM ports p
            JOIN endpoints e ON e.id = p.endpoint_id JOIN networks n ON n.name = e.network \(filter)
            ORDER BY e.name, p.container_port, p.proto, p.host_ip, p.host_port
            """, values).compactMap { row in
            let e = StateStore.endpoint(row)
            guard let proto = PortMapping.Proto(rawValue: row[25].string!) else { return nil }
            return (PublishedPort(endpoint: e.name, proto: proto, hostIP: row[26].string!, hostPort: UInt16(row[27].int!),
                                  containerPort: UInt16(row[28].int!), servesIPv6: e.ipv6 != nil,
                                  backend: PortBackend(rawValue: row[29].string ?? "") ?? .nft), e)
        }
    }

    func insert(_ port: PublishedPort, endpointID: String) throws {
        try db.run("INSERT INTO ports (endpoint_id, proto, host_ip, host_port, container_port, backend) VALUES (?, ?, ?, ?, ?, ?)",
                   [.text(endpointID), .text(port.proto.rawValue), .text(port.hostIP), .integer(Int64(port.hostPort)),
                    .integer(Int64(port.containerPort)), .text(port.backend.rawValue)])
    }

    func delete(_ port: PublishedPort) throws {
        try db.run("DELETE FROM ports WHERE proto = ? AND host_port = ? AND host_ip = ?",
                   [.text(port.proto.rawValue), .integer(Int64(port.hostPort)), .text(port.hostIP)])
    }

    // MARK: Relay claims

    /// Who claims which relay scope (see `RelayClaims`), by scope key; dead owners included.
    func relayClaims() throws -> [String: ProcessIdentity] {
        var claims: [String: ProcessIdentity] = [:]
        for row in try db.query("SELECT scope, owner FROM relay_claims") {
            if let scope = row[0].string, let owner = row[1].string.flatMap(ProcessIdentity.init(encoded:)) { claims[scope] = owner }
        }
        return claims
    }

    func setRelayClaim(_ scope: String, owner: ProcessIdentity) throws {
        try db.run("INSERT OR REPLACE INTO relay_claims(scope, owner) VALUES (?, ?)", [.text(scope), .text(owner.encoded)])
    }

    func deleteRelayClaim(_ scope: String, owner: ProcessIdentity) throws {
        try db.run("DELETE FROM relay_claims WHERE scope = ? AND owner = ?", [.text(scope), .text(owner.encoded)])
    }

    /// Changes whenever another connection commits: how a long-running proxy notices new
    /// or removed mappings without a restart.
    func dataVersion() throws -> Int64 {
        try db.query("PRAGMA data_version").first?.first?.int ?? 0
    }

    /// Stored addresses carry no prefix; the network's subnet supplies it.
    private static func bareAddress(_ cidr: String) -> String {
        String(cidr.split(separator: "/").first ?? "")
    }

    private static func endpoint(_ r: [SQLiteValue]) -> Endpoint {
        let subnet = IPNetwork(r[16].string!)!
        let subnet6 = r[18].string.flatMap { IPNetwork($0) }
        let identity = r[9].int.flatMap { device in
            r[10].int.map { NetworkNamespace.Identity(device: UInt64(bitPattern: device), inode: UInt64(bitPattern: $0)) }
        }
        let created: Timestamp = Timestamp(iso8601: r[15].string!) ?? Timestamp(secondsSinceEpoch: 0)
        let owner: ProcessIdentity = ProcessIdentity(encoded: r[14].string!) ?? ProcessIdentity(pid: 0, startTime: 0)
        let aliases: [String] = (r[20].string ?? "").split(separator: ",").map(String.init)
        var e = Endpoint(
            id: r[0].string!, name: r[1].string!, network: r[2].string!, hostInterface: r[3].string!,
            interface: r[4].string!, mac: r[5].string!, ipv4: "\(r[6].string!)/\(subnet.prefixLength)",
            ipv6: r[7].string.map { "\($0)/\(subnet6?.prefixLength ?? 64)" },
            gateway: r[17].string!, gateway6: r[19].string, netns: r[8].string!, pid: r[11].int.map { Int32($0) },
            ownsNetns: r[12].int == 1, state: Endpoint.State(rawValue: r[13].string!) ?? .removing, created: created)
        e.aliases = aliases
        e.gatewayPriority = Int(r[21].int ?? 0)
        e.mayHoldDefaultRoute = r[22].int != 0
        e.attachOrder = r[23].int ?? 0
        e.dnsServers = (r[24].string ?? "").split(separator: ",").map(String.init)
        e.namespaceIdentity = identity
        e.owner = owner
        return e
    }
}
