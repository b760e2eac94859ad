import Firewall
import Glibc
import Netlink
import Primitives

/// What carries a published port's traffic.
public enum PortBackend: String, Codable, Sendable, CaseIterable {
    /// Kernel DNAT only (nftables map elements).
    case nft
    /// The userland proxy only (`netctl proxy serve`, or a `ProxyService` in a runtime).
    case proxy
    /// The kernel where it can; the proxy for the rest: `[::1]`, and IPv6 to an endpoint
    /// that has only IPv4.
    case auto
}

/// A port published for an endpoint: hostIP:hostPort/proto on the host reaches
/// containerPort on the endpoint's address(es), through kernel DNAT and/or the proxy.
public struct PublishedPort: Codable, Equatable, Hashable, Sendable {
    public var endpoint: String
    public var proto: PortMapping.Proto
    /// "" = every address of both families; "0.0.0.0" or "::" = every address of one family;
    /// anything else one address.
    public var hostIP: String
    public var hostPort: UInt16
    public var containerPort: UInt16
    /// Whether the endpoint has an IPv6 address, so an all-addresses mapping also serves [::].
    public var servesIPv6: Bool
    public var backend: PortBackend

    public init(endpoint: String, proto: PortMapping.Proto, hostIP: String, hostPort: UInt16, containerPort: UInt16,
                servesIPv6: Bool = true, backend: PortBackend = .nft) {
        self.endpoint = endpoint; self.proto = proto; self.hostIP = hostIP
        self.hostPort = hostPort; self.containerPort = containerPort; self.servesIPv6 = servesIPv6
        self.backend = backend
    }

    /// The host addresses it is served on, as printed: `0.0.0.0`, `[::]`, `127.0.0.1`...
    public var servedAddresses: [String] {
        var scope = HostScope(hostIP)
        if scope == .all && !servesIPv6 && backend == .nft { scope = .allIPv4 }  // the proxy serves [::] to IPv4
        return scope.displayAddresses
    }

    /// As `docker port` prints it: `80/tcp -> 0.0.0.0:8080`, one line per address served.
    public var description: String {
        servedAddresses.map { "\(containerPort)/\(proto.rawValue) -> \($0):\(hostPort)" }.joined(separator: "\n")
    }

    /// Whether a `port rm` spec names this port: same container port and protocol, and the
    /// host address and port when the spec gives them.
    func matches(_ spec: PortMapping) -> Bool {
        spec.proto == proto && spec.containerPort == containerPort
            && (spec.hostIP.isEmpty || spec.hostIP == hostIP)
            && (spec.hostPort == 0 || (spec.hostPort...spec.hostPortEnd).contains(hostPort))
    }
}

/// The host addresses a mapping listens on.
enum HostScope: Equatable {
    case all, allIPv4, allIPv6, address(IPAddress)

    init(_ hostIP: String) {
        switch hostIP {
        case "": self = .all
        case "0.0.0.0": self = .allIPv4
        case "::": self = .allIPv6
        default: self = IPAddress(hostIP).map { .address($0) } ?? .all
        }
    }

    var coversIPv4: Bool {
        switch self {
        case .all, .allIPv4: return true
        case .allIPv6: return false
        case .address(let ip): return ip.isIPv4
        }
    }

    var coversIPv6: Bool {
        switch self {
        case .all, .allIPv6: return true
        case .allIPv4: return false
        case .address(let ip): return !ip.isIPv4
        }
    }

    /// Two mappings clash when some host address is in both scopes.
    func overlaps(_ other: HostScope) -> Bool {
        switch (self, other) {
        case (.address(let a), .address(let b)): return a == b
        default: return (coversIPv4 && other.coversIPv4) || (coversIPv6 && other.coversIPv6)
        }
    }

    var displayAddresses: [String] {
        switch self {
        case .all: return ["0.0.0.0", "[::]"]
        case .allIPv4: return ["0.0.0.0"]
        case .allIPv6: return ["[::]"]
        case .address(let ip): return [ip.isIPv4 ? "\(ip)" : "[\(ip)]"]
        }
    }

    /// The addresses a bind probe tries (port 0, set per probe).
    var probeAddresses: [IPAddress] {
        switch self {
        case .all: return [.v4(0), .v6(0)]
        case .allIPv4: return [.v4(0)]
        case .allIPv6: return [.v6(0)]
        case .address(let ip): return [ip]
        }
    }
}

/// Host port choice and the check that no other program holds a port.
enum HostPorts {
    /// The kernel's ephemeral range, where Docker also picks dynamic host ports.
    static func ephemeralRange() -> ClosedRange<UInt16> {
        let fields = (readFile("/proc/sys/net/ipv4/ip_local_port_range") ?? "")
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt16($0) }
        guard fields.count == 2, fields[0] > 0, fields[0] <= fields[1] else { return 32768...60999 }
        return fields[0]...fields[1]
    }

    /// The first port of `range` that `isFree` accepts, starting at `start` and wrapping.
    static func choose(in range: ClosedRange<UInt16>, start: UInt16, isFree: (UInt16) throws -> Bool) rethrows -> UInt16? {
        let count = Int(range.upperBound) - Int(range.lowerBound) + 1
        let offset = Int(start) - Int(range.lowerBound)
        for i in 0..<count {
            let port = UInt16(Int(range.lowerBound) + (offset + i) % count)
            if try isFree(port) { return port }
        }
        return nil
    }

    enum Probe: Equatable { case free, inUse, notLocal }

    /// Tries to bind hostIP:port for the protocol, which is what the published port would
    /// need if a program served it: EADDRINUSE means some program holds it.
    static func probe(_ scope: HostScope, port: UInt16, proto: PortMapping.Proto) -> Probe {
        for address in scope.probeAddresses {
            let ipv6 = !address.isIPv4
            let (type, number): (Int32, Int32) = switch proto {
            case .tcp: (Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_TCP))
            case .udp: (Int32(SOCK_DGRAM.rawValue), Int32(IPPROTO_UDP))
            case .sctp: (Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_SCTP))
            }
            let fd = socket(ipv6 ? AF_INET6 : AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), number)
            guard fd >= 0 else { continue }  // no IPv6 or no SCTP here: nothing can hold it
            defer { close(fd) }
            var one: Int32 = 1
            // TCP: only listeners (not TIME_WAIT leftovers) should count as holders.
            if proto == .tcp { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
            if ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
            let rc = SocketAddress(address, port).withSockaddr { bind(fd, $0, $1) }
            if rc != 0 {
                switch errno {
                case EADDRINUSE: return .inUse
                case EADDRNOTAVAIL: return .notLocal
                default: continue
                }
            }
        }
        return .free
    }
}
