import Glibc
import Primitives
import NetCore

/// The CNI specification versions this plugin speaks.
public enum CNIVersion {
    public static let supported = ["0.4.0", "1.0.0", "1.1.0"]
    public static let latest = "1.1.0"
}

/// The operation and its arguments, from the `CNI_*` environment variables.
public struct CNIEnvironment: Equatable {
    public enum Command: String, Sendable { case add = "ADD", del = "DEL", check = "CHECK", status = "STATUS", gc = "GC", version = "VERSION" }

    public var command: Command
    public var containerID: String?
    public var netns: String?
    public var ifname: String?
    /// `CNI_ARGS`: KEY=VALUE pairs separated by ';'.
    public var args: [String: String]

    /// Reads the variables a command needs; anything missing or malformed is code 4.
    public init(_ env: [String: String]) throws {
        func invalid(_ msg: String) -> CNIError { CNIError(.invalidEnvironment, msg) }
        guard let raw = env["CNI_COMMAND"], !raw.isEmpty else {
            throw invalid("CNI_COMMAND is not set; set it to ADD, DEL, CHECK, STATUS, GC or VERSION")
        }
        guard let command = Command(rawValue: raw) else {
            throw invalid("unknown CNI_COMMAND \(quoted(raw)); use ADD, DEL, CHECK, STATUS, GC or VERSION")
        }
        self.command = command
        func value(_ name: String) -> String? { env[name].flatMap { $0.isEmpty ? nil : $0 } }
        containerID = value("CNI_CONTAINERID")
        netns = value("CNI_NETNS")
        ifname = value("CNI_IFNAME")
        args = [:]
        for pair in (env["CNI_ARGS"] ?? "").split(separator: ";") where !pair.isEmpty {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                throw invalid("CNI_ARGS entry \(quoted(pair)) is not KEY=VALUE")
            }
            args[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        let required: [String]
        switch command {
        case .add, .check: required = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]
        case .del: required = ["CNI_CONTAINERID", "CNI_IFNAME"]
        case .status, .gc, .version: required = []
        }
        for name in required where value(name) == nil {
            throw invalid("\(name) is not set; \(command.rawValue) needs CNI_CONTAINERID, \(command == .del ? "" : "CNI_NETNS, ")and CNI_IFNAME")
        }
        if let id = containerID, !CNIEnvironment.isValidContainerID(id) {
            throw invalid("CNI_CONTAINERID \(quoted(id)) is invalid; use up to \(CNIEnvironment.maxContainerIDLength) letters, digits, '_', '.' and '-', starting with a letter or digit")
        }
        if let ifname, !CNIEnvironment.isValidInterfaceName(ifname) {
            throw invalid("CNI_IFNAME \(quoted(ifname)) is not a valid interface name; use 1-15 bytes without '/', ':' or spaces")
        }
        if let netns, !netns.hasPrefix("/") {
            throw invalid("CNI_NETNS \(quoted(netns)) is not an absolute path to a network namespace")
        }
        // The plugin's own namespace is the host's: "attaching" it would give the host a
        // container's interface, address and default route.
        if let netns, command == .add || command == .check, CNIEnvironment.isOwnNamespace(netns) {
            throw invalid("CNI_NETNS \(quoted(netns)) is the plugin's own (the host's) network namespace; give the container's")
        }
    }

    /// Longer than any runtime's IDs (64 hex digits for Docker, Podman and containerd).
    static let maxContainerIDLength = 256

    static func isValidContainerID(_ id: String) -> Bool {
        guard id.utf8.count <= maxContainerIDLength, let first = id.first, first.isASCII, first.isLetter || first.isNumber else { return false }
        return id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
    }

    static func isOwnNamespace(_ path: String) -> Bool {
        var target = stat(), own = stat()
        return stat(path, &target) == 0 && stat("/proc/self/ns/net", &own) == 0
            && target.st_dev == own.st_dev && target.st_ino == own.st_ino
    }

    static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return !bytes.isEmpty && bytes.count <= 15 && name != "." && name != ".."
            && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }
    }
}

/// A network configuration in the official `bridge` plugin's format, with a `host-local`
/// style `ipam` section, as this plugin reads it.
public struct BridgeConfig: Equatable {
    /// More mappings than one protocol has ports cannot all be distinct.
    static let maxPortMappings = 65_535
    /// A network configuration is a few KB; stdin past this is refused unread.
    public static let maxInputBytes = 1 << 20

    public var cniVersion: String
    public var name: String
    public var bridge: String
    public var isGateway: Bool
    public var isDefaultGateway: Bool
    public var ipMasq: Bool
    public var hairpinMode: Bool
    public var mtu: Int?
    public var subnet: String?
    public var gateway: String?
    public var subnet6: String?
    public var gateway6: String?
    public var routes: [StaticRoute]
    public var dns: JSON?
    public var portMappings: [PortMapping]
    /// An address asked for by the runtime (`runtimeConfig.ips`, `args.cni.ips`, `CNI_ARGS` IP).
    public var ip: String?
    public var mac: String?
    public var stateDir: String?
    public var prevResult: JSON?
    /// GC: the attachments to keep, as (container ID, interface name).
    public var validAttachments: [(containerID: String, ifname: String)]

    public static func == (a: BridgeConfig, b: BridgeConfig) -> Bool {
        a.cniVersion == b.cniVersion && a.name == b.name && a.bridge == b.bridge && a.subnet == b.subnet
            && a.gateway == b.gateway && a.subnet6 == b.subnet6 && a.routes == b.routes && a.portMappings == b.portMappings
            && a.mtu == b.mtu && a.ip == b.ip && a.mac == b.mac
            && a.validAttachments.map { "\($0.containerID)/\($0.ifname)" } == b.validAttachments.map { "\($0.containerID)/\($0.ifname)" }
    }

    /// Decodes stdin: malformed JSON is code 6, an unsupported `cniVersion` code 1.
    public static func decodeVersion(_ stdin: [UInt8]) throws -> (json: JSON, version: String) {
        let json: JSON
        do {
            json = try JSON.parse(stdin)
        } catch {
            throw CNIError(.decodingFailure, "the network configuration on stdin is not valid JSON", details: "\(error)")
        }
        guard json.object != nil else {
            throw CNIError(.decodingFailure, "the network configuration on stdin is not a JSON object")
        }
        guard let version = json["cniVersion"]?.string else {
            throw CNIError(.invalidNetworkConfig, "the network configuration has no \"cniVersion\" string; add one of \(CNIVersion.supported.joined(separator: ", "))")
        }
        guard CNIVersion.supported.contains(version) else {
            throw CNIError(.incompatibleVersion, "incompatible CNI version \(version)",
                           details: "netctl-cni supports \(CNIVersion.supported.joined(separator: ", "))")
        }
        return (json, version)
    }

    /// Reads the configuration. `full` checks everything ADD and CHECK use; DEL, GC and
    /// STATUS only need the identity (name) so they work on whatever a runtime still has.
    public init(_ json: JSON, version: String, environment: CNIEnvironment?, full: Bool) throws {
        func invalid(_ msg: String) -> CNIError { CNIError(.invalidNetworkConfig, msg) }
        func unsupported(_ msg: String) -> CNIError { CNIError(.unsupportedField, msg) }
        func string(_ v: JSON?, _ key: String) throws -> String? {
            guard let v, !v.isNull else { return nil }
            guard let s = v.string else { throw invalid("\"\(key)\" must be a string") }
            return s
        }
        func bool(_ key: String, default value: Bool) throws -> Bool {
            guard let v = json[key], !v.isNull else { return value }
            guard let b = v.bool else { throw invalid("\"\(key)\" must be true or false") }
            return b
        }
        func objectValue(_ v: JSON?, _ key: String) throws -> JSON? {
            guard let v, !v.isNull else { return nil }
            guard v.object != nil else { throw invalid("\"\(key)\" must be an object") }
            return v
        }
        func arrayValue(_ v: JSON?, _ key: String) throws -> [JSON] {
            guard let v, !v.isNull else { return [] }
            guard let a = v.array else { throw invalid("\"\(key)\" must be a list") }
            return a
        }

        cniVersion = version
        guard let name = try string(json["name"], "name"), !name.isEmpty else {
            throw invalid("the network configuration has no \"name\"")
        }
        guard CNIEnvironment.isValidContainerID(name), name.utf8.count <= 64 else {
            throw invalid("network name \(quoted(name)) is invalid; use up to 64 letters, digits, '_', '.' and '-', starting with a letter or digit")
        }
        self.name = name
        stateDir = try string(json["stateDir"], "stateDir")
        let runtimeConfig = try objectValue(json["runtimeConfig"], "runtimeConfig")
        prevResult = try objectValue(json["prevResult"], "prevResult")

        // GC's list of attachments to keep (libcni also sends the earlier name, "cni.dev/attachments").
        validAttachments = []
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            for item in try arrayValue(json[key], key) {
                guard let id = item["containerID"]?.string, let ifname = item["ifname"]?.string else {
                    throw invalid("each \"\(key)\" entry needs \"containerID\" and \"ifname\" strings")
                }
                validAttachments.append((id, ifname))
            }
        }

        bridge = "cni0"
        isGateway = false; isDefaultGateway = false; ipMasq = false; hairpinMode = false
        mtu = nil
        subnet = nil; gateway = nil; subnet6 = nil; gateway6 = nil
        routes = []
        dns = nil
        portMappings = []
        ip = nil; mac = nil
        // DEL, GC and STATUS go no further: a key they don't use must not stop a clean-up.
        guard full else { return }

        bridge = try string(json["bridge"], "bridge") ?? "cni0"
        guard CNIEnvironment.isValidInterfaceName(bridge) else {
            throw invalid("\"bridge\": \(quoted(bridge)) is not a valid interface name (1-15 bytes, no '/', ':' or spaces)")
        }
        isGateway = try bool("isGateway", default: false)
        isDefaultGateway = try bool("isDefaultGateway", default: false)
        ipMasq = try bool("ipMasq", default: false)
        hairpinMode = try bool("hairpinMode", default: false)

        if let v = json["mtu"], !v.isNull {
            guard let m = v.int, (68...65535).contains(m) else { throw invalid("\"mtu\" must be a number from 68 to 65535") }
            mtu = m
        }
        if let v = json["vlan"], let n = v.int, n != 0 {
            throw unsupported("\"vlan\" is not supported by netctl-cni; remove it or use the bridge plugin")
        }
        dns = try objectValue(json["dns"], "dns")

        if let ipam = try objectValue(json["ipam"], "ipam") {
            if let type = try string(ipam["type"], "ipam.type"), type != "host-local", type != "netctl" {
                throw unsupported("ipam type \(quoted(type)) is not supported; netctl-cni serves addresses itself from a host-local style \"ipam\" (ranges, subnet, gateway, routes)")
            }
            var ranges: [(subnet: String, gateway: String?)] = []
            if let s = try string(ipam["subnet"], "ipam.subnet") {
                ranges.append((s, try string(ipam["gateway"], "ipam.gateway")))
            }
            for set in try arrayValue(ipam["ranges"], "ipam.ranges") {
                guard let items = set.array else { throw invalid("\"ipam.ranges\" must be a list of lists of ranges") }
                guard items.count == 1 else {
                    throw unsupported("netctl-cni serves one subnet per range set; give each \"ipam.ranges\" entry exactly one range")
                }
                let range = items[0]
                guard range.object != nil, let s = try string(range["subnet"], "subnet") else {
                    throw invalid("each range in \"ipam.ranges\" needs a \"subnet\"")
                }
                for key in ["rangeStart", "rangeEnd"] where range[key] != nil && range[key] != .null {
                    throw unsupported("\"\(key)\" is not supported; netctl-cni leases from the whole subnet")
                }
                ranges.append((s, try string(range["gateway"], "gateway")))
            }
            for (s, g) in ranges {
                let isIPv6 = s.contains(":")
                if isIPv6 {
                    guard subnet6 == nil else { throw unsupported("only one IPv6 subnet per network is supported") }
                    subnet6 = s; gateway6 = g
                } else {
                    guard subnet == nil else { throw unsupported("only one IPv4 subnet per network is supported") }
                    subnet = s; gateway = g
                }
            }
            if subnet == nil && subnet6 != nil {
                throw unsupported("an IPv6-only network is not supported; add an IPv4 range")
            }
            for r in try arrayValue(ipam["routes"], "ipam.routes") {
                guard let dst = try string(r["dst"], "routes.dst") else { throw invalid("each route in \"ipam.routes\" needs \"dst\"") }
                routes.append(StaticRoute(destination: dst, gateway: try string(r["gw"], "routes.gw")))
            }
        }

        // Capabilities (runtimeConfig) and arguments: ports, a fixed IP, a MAC.
        let mappings = try arrayValue(runtimeConfig?["portMappings"], "runtimeConfig.portMappings")
        guard mappings.count <= BridgeConfig.maxPortMappings else {
            throw invalid("\(mappings.count) port mappings are more than there are ports (\(BridgeConfig.maxPortMappings))")
        }
        var seen: [String: Int] = [:]  // "proto hostIP hostPort" -> container port
        for m in mappings {
            guard let host = m["hostPort"]?.int, let container = m["containerPort"]?.int else {
                throw invalid("each port mapping needs numeric \"hostPort\" and \"containerPort\"")
            }
            guard (1...65535).contains(host), (1...65535).contains(container) else {
                throw invalid("port mapping \(host) -> \(container): ports must be 1 to 65535")
            }
            let protoText = (try string(m["protocol"], "protocol") ?? "tcp").lowercased()
            guard let proto = PortMapping.Proto(rawValue: protoText) else {
                throw invalid("port mapping \(host) -> \(container): protocol \(quoted(protoText)) is not tcp, udp or sctp")
            }
            var hostIP = try string(m["hostIP"], "hostIP") ?? ""
            if hostIP.hasPrefix("[") && hostIP.hasSuffix("]") { hostIP = String(hostIP.dropFirst().dropLast()) }
            let key = "\(proto) \(hostIP) \(host)"
            if let earlier = seen[key] {
                if earlier == container { continue }  // the same mapping twice
                throw invalid("host port \(host)/\(proto.rawValue) is mapped to both \(earlier) and \(container) in runtimeConfig.portMappings")
            }
            seen[key] = container
            portMappings.append(PortMapping(hostIP: hostIP, hostPort: UInt16(host), containerPort: UInt16(container), proto: proto))
        }
        var ips = try arrayValue(runtimeConfig?["ips"], "runtimeConfig.ips")
        if ips.isEmpty, let args = json["args"], let cni = args["cni"] { ips = try arrayValue(cni["ips"], "args.cni.ips") }
        var requested = try ips.map { v -> String in
            guard let s = v.string else { throw invalid("requested IPs must be strings") }
            return s
        }
        if requested.isEmpty, let fromArgs = environment?.args["IP"] { requested = fromArgs.split(separator: ",").map(String.init) }
        let v4 = requested.map { $0.split(separator: "/").first.map(String.init) ?? $0 }.filter { !$0.contains(":") }
        if v4.count > 1 { throw unsupported("only one requested IPv4 address per attachment is supported") }
        if requested.contains(where: { $0.contains(":") }) {
            throw unsupported("requesting a fixed IPv6 address is not supported; netctl-cni leases IPv6 addresses itself")
        }
        ip = v4.first
        mac = try string(runtimeConfig?["mac"], "runtimeConfig.mac") ?? environment?.args["MAC"]
    }
}
