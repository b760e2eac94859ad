import Firewall
import Primitives

/// A relay the proxy serves for a published port: connections (TCP) or datagrams (UDP) to
/// `listen` go to `backend`, the endpoint's address and container port.
public struct Relay: Hashable, Sendable, CustomStringConvertible {
    public enum Proto: String, Sendable { case tcp, udp }

    public var proto: Proto
    public var listen: SocketAddress
    public var backend: SocketAddress

    public init(proto: Proto, listen: SocketAddress, backend: SocketAddress) {
        self.proto = proto; self.listen = listen; self.backend = backend
    }

    public var description: String { "\(proto.rawValue) \(listen) -> \(backend)" }
}

/// How a published port is served: the kernel's share (DNAT map elements) and the proxy's
/// (relays). This is the one place that decides which share is whose; publishing, reload,
/// gc, statistics and the proxy service all read it from here.
public struct PortPlan: Equatable, Sendable {
    public var kernel: [DNATMapping]
    public var relays: [Relay]

    /// The plan for a published port of an endpoint.
    public init(_ port: PublishedPort, on endpoint: Endpoint) {
        let shares = PortPlan.shares(HostScope(port.hostIP), backend: port.backend,
                                     v4: endpoint.ipv4Interface.address, v6: endpoint.ipv6Interface?.address)
        let proto = DNATMapping.Proto(port.proto)
        kernel = shares.kernel.map {
            DNATMapping(hostIP: $0.hostIP, proto: proto, hostPort: port.hostPort, containerIP: $0.container, containerPort: port.containerPort)
        }
        // SCTP is never relayed: publishing refuses a mapping whose plan would need it.
        let relayProto = Relay.Proto(rawValue: port.proto.rawValue)
        relays = relayProto.map { relayProto in
            shares.relays.map {
                Relay(proto: relayProto, listen: SocketAddress($0.listen, port.hostPort), backend: SocketAddress($0.container, port.containerPort))
            }
        } ?? []
    }

    /// Which host addresses each share serves, for a mapping's host scope and backend and an
    /// endpoint's addresses; ports play no part in it.
    static func shares(_ scope: HostScope, backend: PortBackend, v4: IPAddress, v6: IPAddress?)
        -> (kernel: [(hostIP: IPAddress?, container: IPAddress)], relays: [(listen: IPAddress, container: IPAddress)]) {
        let hostIP: IPAddress? = if case .address(let ip) = scope { ip } else { nil }
        // The kernel: one element per family the scope covers and the endpoint has an
        // address in; never from ::1, which the kernel cannot DNAT.
        var kernel: [(hostIP: IPAddress?, container: IPAddress)] = []
        if backend != .proxy && hostIP != PortPlan.ipv6Loopback {
            if scope.coversIPv4 { kernel.append((hostIP, v4)) }
            if scope.coversIPv6, let v6 { kernel.append((hostIP, v6)) }
        }
        // The proxy: all of the mapping with the proxy backend; with auto, what the kernel
        // cannot do: ::1, and IPv6 to an endpoint that has only IPv4.
        let anyV4 = IPAddress.v4(0), anyV6 = IPAddress.v6(0)
        var relays: [(listen: IPAddress, container: IPAddress)] = []
        switch (backend, scope) {
        case (.nft, _):
            break
        case (.proxy, .all): relays = [(anyV4, v4), (anyV6, v6 ?? v4)]
        case (.proxy, .allIPv4): relays = [(anyV4, v4)]
        case (.proxy, .allIPv6): relays = [(anyV6, v6 ?? v4)]
        case (.proxy, .address(let ip)): relays = [(ip, ip.isIPv4 ? v4 : (v6 ?? v4))]
        case (.auto, .all), (.auto, .allIPv6):
            // The kernel serves IPv6 when the endpoint has it, except ::1; else all of IPv6 is ours.
            relays = v6.map { [(PortPlan.ipv6Loopback, $0)] } ?? [(anyV6, v4)]
        case (.auto, .allIPv4):
            break
        case (.auto, .address(let ip)):
            if ip == PortPlan.ipv6Loopback {
                relays = [(ip, v6 ?? v4)]
            } else if !ip.isIPv4 && v6 == nil {
                relays = [(ip, v4)]
            }
        }
        return (kernel, relays)
    }

    static let ipv6Loopback = IPAddress("::1")!
}

extension DNATMapping.Proto {
    init(_ proto: PortMapping.Proto) {
        self = switch proto { case .tcp: .tcp; case .udp: .udp; case .sctp: .sctp }
    }
}
