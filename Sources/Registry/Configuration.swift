import Glibc
import Primitives

/// Where images come from, read from the files Podman, skopeo, buildah and CRI-O share:
/// `registries.conf` (TOML, version 2: `[[registry]]` with mirrors, `insecure` and `blocked`,
/// and `[aliases]` for short names), its drop-ins in `registries.conf.d/`, and per-host
/// certificates in `certs.d/HOST/`. A host whose Docker Hub traffic goes through a mirror
/// needs no setting of netctl's own.
public struct RegistryConfiguration: Sendable {
    public struct Mirror: Sendable, Equatable {
        public var location: String
        public var insecure: Bool
    }

    public struct Entry: Sendable, Equatable {
        /// Which references this entry covers: `docker.io`, `example.com/team`, `*.example.com`.
        public var prefix: String
        /// Where they are fetched from; the prefix itself when not set.
        public var location: String
        public var insecure = false
        public var blocked = false
        public var mirrors: [Mirror] = []
        /// Mirrors serve pulls by digest only (tags could differ there).
        public var mirrorByDigestOnly = false
    }

    /// One place to try, in order: mirrors first, then the registry itself.
    public struct Endpoint: Sendable, Equatable {
        /// `host[:port]` as the TLS certificate and credentials know it.
        public var host: String
        public var repository: String
        public var insecure: Bool
        public var isMirror: Bool
    }

    public var entries: [Entry] = []
    public var aliases: [String: String] = [:]
    /// Directories holding `HOST[:PORT]/*.crt` trust anchors, searched in order.
    public var certificateDirectories: [String] = []
    public var files: [String] = []

    public init() {}

    /// `$CONTAINERS_REGISTRIES_CONF` if set, else `/etc/containers/registries.conf`; then the
    /// drop-ins of `registries.conf.d` beside it, in name order. A missing file is no error.
    public static func load(environment: [String: String] = currentEnvironment()) throws(RegistryError) -> RegistryConfiguration {
        var configuration = RegistryConfiguration()
        let main = environment["CONTAINERS_REGISTRIES_CONF"] ?? "/etc/containers/registries.conf"
        if let text = readFile(main) { try configuration.merge(text, from: main) }
        if environment["CONTAINERS_REGISTRIES_CONF"] == nil {
            let dropins = main + ".d"
            for name in listDirectory(dropins).sorted() where name.hasSuffix(".conf") {
                let path = dropins + "/" + name
                if let text = readFile(path) { try configuration.merge(text, from: path) }
            }
        }
        configuration.certificateDirectories = [environment["NETCTL_CERTS_D"], "/etc/containers/certs.d", "/etc/docker/certs.d"].compactMap { $0 }
        return configuration
    }

    /// Adds one file: an entry with a prefix already known replaces it, aliases add up.
    public mutating func merge(_ text: String, from file: String) throws(RegistryError) {
        let root: [String: TOMLValue]
        do { root = try TOMLParser.parse(text) } catch { throw .configuration(file: file, reason: "line \(error.line): \(error.reason)") }
        files.append(file)
        if let version = root["version"], version != .integer(2) && version != .string("2") {
            throw .configuration(file: file, reason: "only version 2 of registries.conf is read")
        }
        if root["registries"] != nil {
            throw .configuration(file: file, reason: "[registries.search]-style (version 1) tables are not read; write [[registry]] entries (version 2)")
        }
        for value in root["registry"]?.array ?? [] {
            guard let table = value.table else { throw .configuration(file: file, reason: "[[registry]] is not a table") }
            let entry = try Self.entry(table, file: file)
            entries.removeAll { $0.prefix == entry.prefix }
            entries.append(entry)
        }
        for (name, value) in root["aliases"]?.table ?? [:] {
            guard let target = value.string else { throw .configuration(file: file, reason: "alias \(name) is not a string") }
            do { _ = try Reference(parsing: target) } catch {
                throw .configuration(file: file, reason: "alias \(name) = \(quoted(target)) is not a full image name")
            }
            aliases[name] = target
        }
    }

    private static func entry(_ table: [String: TOMLValue], file: String) throws(RegistryError) -> Entry {
        func string(_ key: String, in t: [String: TOMLValue]) throws(RegistryError) -> String? {
            guard let v = t[key] else { return nil }
            guard let s = v.string else { throw .configuration(file: file, reason: "\(key) must be a string") }
            return s
        }
        func flag(_ key: String, in t: [String: TOMLValue]) throws(RegistryError) -> Bool {
            guard let v = t[key] else { return false }
            guard let b = v.bool else { throw .configuration(file: file, reason: "\(key) must be true or false") }
            return b
        }
        let location = try string("location", in: table)
        guard let prefix = try string("prefix", in: table) ?? location, !prefix.isEmpty else {
            throw .configuration(file: file, reason: "a [[registry]] has neither prefix nor location")
        }
        var entry = Entry(prefix: prefix, location: location ?? prefix)
        if prefix.hasPrefix("*.") && location != nil {
            throw .configuration(file: file, reason: "a wildcard prefix (\(prefix)) cannot have a location")
        }
        entry.insecure = try flag("insecure", in: table)
        entry.blocked = try flag("blocked", in: table)
        entry.mirrorByDigestOnly = try flag("mirror-by-digest-only", in: table)
        if let policy = try string("pull-from-mirror", in: table) { entry.mirrorByDigestOnly = policy == "digest-only" }
        for value in table["mirror"]?.array ?? [] {
            guard let mirror = value.table, let location = try string("location", in: mirror) else {
                throw .configuration(file: file, reason: "a [[registry.mirror]] of \(prefix) has no location")
            }
            entry.mirrors.append(Mirror(location: location, insecure: try flag("insecure", in: mirror)))
        }
        return entry
    }

    /// The entry for `reference`: the longest prefix that covers it.
    public func entry(for reference: Reference) -> Entry? {
        let name = reference.name
        func covers(_ prefix: String) -> Bool {
            if prefix.hasPrefix("*.") { return reference.registry.hasSuffix(prefix.dropFirst()) }
            return name == prefix || name.hasPrefix(prefix.hasSuffix("/") ? prefix : prefix + "/")
        }
        return entries.filter { covers($0.prefix) }.max { $0.prefix.count < $1.prefix.count }
    }

    /// Where to fetch `reference` from, in the order to try them.
    public func endpoints(for reference: Reference) throws(RegistryError) -> [Endpoint] {
        guard let entry = entry(for: reference) else { return [Self.endpoint(reference.name, insecure: false, mirror: false)] }
        if entry.blocked { throw .blocked(reference: reference.description, registry: entry.prefix, file: files.last ?? "registries.conf") }
        // The part of the name under the prefix keeps its place under each location.
        let rest = entry.prefix.hasPrefix("*.") ? String(reference.name.dropFirst(reference.registry.count))
                                                : String(reference.name.dropFirst(entry.prefix.count))
        func under(_ location: String) -> String {
            entry.prefix.hasPrefix("*.") ? reference.name : location + rest
        }
        var endpoints: [Endpoint] = []
        if !entry.mirrorByDigestOnly || reference.digest != nil {
            endpoints += entry.mirrors.map { Self.endpoint(under($0.location), insecure: $0.insecure, mirror: true) }
        }
        endpoints.append(Self.endpoint(under(entry.location), insecure: entry.insecure, mirror: false))
        return endpoints
    }

    /// `docker.io` is served at registry-1.docker.io, as every client knows.
    private static func endpoint(_ name: String, insecure: Bool, mirror: Bool) -> Endpoint {
        let slash = name.firstIndex(of: "/") ?? name.endIndex
        var host = String(name[..<slash])
        if host == Reference.defaultRegistry { host = "registry-1.docker.io" }
        let repository = slash < name.endIndex ? String(name[name.index(after: slash)...]) : ""
        return Endpoint(host: host, repository: repository, insecure: insecure, isMirror: mirror)
    }

    /// PEM trust anchors for `host`: every `*.crt` in `certs.d/HOST/`.
    public func certificates(for host: String) -> [UInt8] {
        var pem: [UInt8] = []
        for directory in certificateDirectories {
            let folder = directory + "/" + host
            for name in listDirectory(folder).sorted() where name.hasSuffix(".crt") {
                if let bytes = readBytes(folder + "/" + name, limit: 1 << 20) { pem += bytes + [10] }
            }
        }
        return pem
    }
}
