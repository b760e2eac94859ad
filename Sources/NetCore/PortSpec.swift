import Netlink
import Primitives

/// One port mapping as Docker's `-p` reads it: `[hostIP:][hostPort[-end]:]containerPort[-end][/proto]`.
public struct PortMapping: Codable, Equatable, Hashable, Sendable {
    public enum Proto: String, Codable, Sendable, CaseIterable {
        case tcp, udp, sctp
    }

    /// "" = all addresses; IPv4 or IPv6 text otherwise (no brackets).
    public var hostIP: String
    /// 0 = a free port chosen at publish time. With `hostPortEnd` > `hostPort`, a free port
    /// chosen within that range.
    public var hostPort: UInt16
    public var hostPortEnd: UInt16
    public var containerPort: UInt16
    public var proto: Proto

    public init(hostIP: String = "", hostPort: UInt16 = 0, hostPortEnd: UInt16? = nil, containerPort: UInt16, proto: Proto = .tcp) {
        self.hostIP = hostIP
        self.hostPort = hostPort
        self.hostPortEnd = hostPortEnd ?? hostPort
        self.containerPort = containerPort
        self.proto = proto
    }

    /// Parses one `-p` value into its mappings (a range gives one per port).
    public static func parse(_ spec: String) throws -> [PortMapping] {
        func fail(_ reason: String) -> NetctlError { .invalidPortSpec(spec: spec, reason: reason) }

        // Protocol: after the last '/', default tcp, any case.
        var body = Substring(spec)
        var proto = Proto.tcp
        if let slash = body.lastIndex(of: "/") {
            let name = body[body.index(after: slash)...].lowercased()
            body = body[..<slash]
            if !name.isEmpty {
                guard let p = Proto(rawValue: name) else {
                    throw fail("unknown protocol \(quoted(name)); use tcp, udp or sctp")
                }
                proto = p
            }
        }

        // [hostIP:][hostPort:]containerPort. An IPv6 host IP is bracketed, or (legacy) bare:
        // then everything before the last two fields is the address.
        var hostIP = ""
        var fields: [Substring]
        if body.hasPrefix("[") {
            guard let close = body.firstIndex(of: "]") else { throw fail("unclosed '[' in the host address") }
            hostIP = String(body[body.index(after: body.startIndex)..<close])
            guard !hostIP.isEmpty else { throw fail("empty host address in '[]' (omit it to publish on all addresses)") }
            let rest = body[body.index(after: close)...]
            guard rest.hasPrefix(":") else { throw fail("expected ':' after the bracketed host address") }
            fields = rest.dropFirst().split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count == 2 else { throw fail("expected [HOSTIP]:HOSTPORT:CONTAINERPORT") }
        } else {
            let parts = body.split(separator: ":", omittingEmptySubsequences: false)
            switch parts.count {
            case 1, 2: fields = parts
            default:
                hostIP = parts.dropLast(2).joined(separator: ":")
                fields = Array(parts.suffix(2))
            }
        }
        if !hostIP.isEmpty {
            guard let ip = IPAddress(hostIP) else {
                throw fail("host address \(quoted(hostIP)) is not an IP address (host names are not accepted)")
            }
            // Addresses no host interface can hold: "this network" (0/8 but 0.0.0.0 itself),
            // multicast, broadcast.
            let unassignable: Bool
            switch ip {
            case .v4(let v): unassignable = (v >> 24 == 0 && v != 0) || v >> 28 == 0xE || v == .max
            case .v6(let v): unassignable = v >> 120 == 0xFF
            }
            if unassignable { throw fail("host address \(ip) cannot be a host's own address") }
            hostIP = ip.description
        }

        let containerText = fields.last!
        guard !containerText.isEmpty else { throw fail("no container port") }
        let container = try range(containerText, what: "container port", spec: spec)
        // An empty host port (":80", "127.0.0.1::80") means one chosen at publish time.
        let host = try fields.count == 2 && !fields[0].isEmpty ? range(fields[0], what: "host port", spec: spec) : nil

        let count = Int(container.upperBound - container.lowerBound) + 1
        guard let host else {
            return (0..<count).map { PortMapping(hostIP: hostIP, containerPort: container.lowerBound + UInt16($0), proto: proto) }
        }
        let hostCount = Int(host.upperBound - host.lowerBound) + 1
        if hostCount == count {
            return (0..<count).map {
                PortMapping(hostIP: hostIP, hostPort: host.lowerBound + UInt16($0), containerPort: container.lowerBound + UInt16($0), proto: proto)
            }
        }
        guard count == 1 else {
            throw fail("host range \(host.lowerBound)-\(host.upperBound) and container range \(container.lowerBound)-\(container.upperBound) differ in length")
        }
        // A host range for one container port: any free port in the range.
        return [PortMapping(hostIP: hostIP, hostPort: host.lowerBound, hostPortEnd: host.upperBound,
                            containerPort: container.lowerBound, proto: proto)]
    }

    private static func range(_ text: Substring, what: String, spec: String) throws -> ClosedRange<UInt16> {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        let numbers = parts.map { part -> UInt16? in
            guard !part.isEmpty, part.allSatisfy(\.isASCII), part.allSatisfy(\.isNumber), let n = UInt16(part), n > 0 else { return nil }
            return n
        }
        guard parts.count <= 2, let low = numbers.first!, let high = numbers.last! else {
            throw NetctlError.invalidPortSpec(spec: spec, reason: "\(what) \(quoted(text)) is not a port (1-65535) or a range like 8000-8010")
        }
        guard low <= high else {
            throw NetctlError.invalidPortSpec(spec: spec, reason: "\(what) range \(text) is reversed")
        }
        return low...high
    }
}
