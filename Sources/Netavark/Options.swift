import NetCore
import Primitives

/// What Podman writes on a netavark helper's stdin for `setup` and `teardown` (its
/// `NetworkOptions` with `network_info`): the container, its port mappings, and per network
/// the per-container options and the network's definition. Unknown keys are ignored, as
/// netavark ignores them; a key netavark needs that is missing or of the wrong type is an
/// error naming it.
public struct NetavarkOptions: Sendable {
    public struct Port: Equatable, Sendable {
        public var hostIP: String
        public var containerPort: UInt16
        public var hostPort: UInt16
        public var range: UInt16
        /// One or more of tcp, udp, sctp (newer Podmans join several with commas).
        public var protocols: [String]
    }

    public struct PerNetwork: Equatable, Sendable {
        public var staticIPs: [String]
        public var aliases: [String]
        public var interfaceName: String
        public var staticMAC: String?
    }

    public struct Subnet: Equatable, Sendable {
        public var subnet: String
        public var gateway: String?
    }

    public struct Network: Equatable, Sendable {
        public var name: String
        public var driver: String
        public var networkInterface: String?
        public var subnets: [Subnet]
        public var ipv6Enabled: Bool
        public var `internal`: Bool
        public var dnsEnabled: Bool
        public var options: [String: String]
        public var ipamDriver: String
    }

    public var containerID: String
    public var containerName: String
    public var portMappings: [Port]
    /// Network name -> per-container options, in the order Podman listed them.
    public var networks: [(String, PerNetwork)]
    public var networkInfo: [String: Network]
    public var dnsServers: [String]

    public init(json: JSON) throws {
        guard case .object = json else { throw NetavarkError.invalidOptions("the network options are not a JSON object") }
        containerID = try Self.string(json, "container_id")
        containerName = try Self.string(json, "container_name")
        portMappings = try (Self.optionalArray(json, "port_mappings") ?? []).enumerated().map { index, item in
            let at = "port_mappings[\(index)]"
            let protocols = try Self.string(item, "protocol", at).split(separator: ",").map { String($0).trimmed }
            return Port(hostIP: try Self.optionalString(item, "host_ip", at) ?? "",
                               containerPort: try Self.port(item, "container_port", at), hostPort: try Self.port(item, "host_port", at),
                               range: try Self.port(item, "range", at, allowZero: false, default: 1), protocols: protocols)
        }
        guard let networks = json["networks"]?.object else { throw NetavarkError.invalidOptions("missing field `networks`") }
        self.networks = try networks.map { name, item in
            let at = "networks.\(name)"
            return (name, PerNetwork(staticIPs: try Self.strings(item, "static_ips", at), aliases: try Self.strings(item, "aliases", at),
                                     interfaceName: try Self.string(item, "interface_name", at),
                                     staticMAC: try Self.optionalString(item, "static_mac", at)))
        }
        guard let info = json["network_info"]?.object else { throw NetavarkError.invalidOptions("missing field `network_info`") }
        var networkInfo: [String: Network] = [:]
        for (key, item) in info {
            let at = "network_info.\(key)"
            let subnets = try (Self.optionalArray(item, "subnets", at) ?? []).enumerated().map { index, subnet in
                Subnet(subnet: try Self.string(subnet, "subnet", "\(at).subnets[\(index)]"),
                       gateway: try Self.optionalString(subnet, "gateway", "\(at).subnets[\(index)]"))
            }
            var options: [String: String] = [:]
            for (option, value) in item["options"]?.object ?? [] {
                guard let text = value.string else { throw NetavarkError.invalidOptions("\(at).options.\(option) is not a string") }
                options[option] = text
            }
            networkInfo[key] = Network(
                name: try Self.optionalString(item, "name", at) ?? key, driver: try Self.string(item, "driver", at),
                networkInterface: try Self.optionalString(item, "network_interface", at), subnets: subnets,
                ipv6Enabled: item["ipv6_enabled"]?.bool ?? false, internal: item["internal"]?.bool ?? false,
                dnsEnabled: item["dns_enabled"]?.bool ?? false, options: options,
                ipamDriver: item["ipam_options"]?["driver"]?.string ?? "host-local")
        }
        self.networkInfo = networkInfo
        dnsServers = try Self.strings(json, "dns_servers")
    }

    // MARK: Reading fields

    private static func where_(_ at: String) -> String { at.isEmpty ? "" : " in \(at)" }

    static func string(_ json: JSON, _ key: String, _ at: String = "") throws -> String {
        guard let value = json[key] else { throw NetavarkError.invalidOptions("missing field `\(key)`\(where_(at))") }
        guard let text = value.string else { throw NetavarkError.invalidOptions("field `\(key)`\(where_(at)) is not a string") }
        return text
    }

    static func optionalString(_ json: JSON, _ key: String, _ at: String = "") throws -> String? {
        guard let value = json[key], !value.isNull else { return nil }
        guard let text = value.string else { throw NetavarkError.invalidOptions("field `\(key)`\(where_(at)) is not a string") }
        return text
    }

    static func optionalArray(_ json: JSON, _ key: String, _ at: String = "") throws -> [JSON]? {
        guard let value = json[key], !value.isNull else { return nil }
        guard let array = value.array else { throw NetavarkError.invalidOptions("field `\(key)`\(where_(at)) is not an array") }
        return array
    }

    static func strings(_ json: JSON, _ key: String, _ at: String = "") throws -> [String] {
        try (optionalArray(json, key, at) ?? []).map {
            guard let text = $0.string else { throw NetavarkError.invalidOptions("field `\(key)`\(where_(at)) holds a value that is not a string") }
            return text
        }
    }

    static func port(_ json: JSON, _ key: String, _ at: String, allowZero: Bool = true, default fallback: UInt16? = nil) throws -> UInt16 {
        guard let value = json[key], !value.isNull else {
            if let fallback { return fallback }
            throw NetavarkError.invalidOptions("missing field `\(key)` in \(at)")
        }
        guard let number = value.int, number >= (allowZero ? 0 : 1), number <= 65535 else {
            throw NetavarkError.invalidOptions("field `\(key)` in \(at) is not a port number")
        }
        return UInt16(number)
    }
}
