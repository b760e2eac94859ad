import CNetlink
import Netlink
import Primitives
@testable import NetCore
import TestSupport

/// An active endpoint on network "web" (10.88.0.0/24, gateway .1), as mock tests put in state.
func webEndpoint(id: String, name: String, hostInterface: String, ip: String, netns: String = "/run/netns/x") -> Endpoint {
    Endpoint(id: id, name: name, network: "web", hostInterface: hostInterface, interface: "eth0",
             mac: "02:6e:0a:58:00:02", ipv4: "\(ip)/24", ipv6: nil, gateway: "10.88.0.1", gateway6: nil,
             netns: netns, pid: nil, ownsNetns: false, state: .active, created: .now())
}

/// A NetworkManager over mock host and firewall sockets (their responders play the kernel),
/// in a state directory of its own: `defer { mock.remove() }` (a deinit could run before the
/// test's last use of `manager`: Swift may end a local's lifetime after its last use).
final class MockManager {
    let directory = try! makeTemporaryDirectory("/tmp/netctl-state-")
    let host = MockNetlinkSocket()
    let firewall = MockNetlinkSocket()
    let manager: NetworkManager

    /// `web`: state holds network web (10.88.0.0/24) and its active endpoint web1 (10.88.0.2).
    init(web: Bool = false) throws {
        manager = try NetworkManager(stateDirectory: directory, host: RouteNetlink(socket: host), firewall: firewall)
        guard web else { return }
        try manager.context.store.transaction {
            try manager.context.store.insert(Network(name: "web", bridge: "nc-web", subnet: "10.88.0.0/24", gateway: "10.88.0.1",
                                             subnet6: nil, gateway6: nil, mtu: 1500, created: .now()))
            try manager.context.store.insert(webEndpoint(id: "e1", name: "web1", hostInterface: "nc00000001", ip: "10.88.0.2"))
        }
    }

    func remove() { try? removeTree(directory) }
}

/// The kernel's answer to a link lookup: one link, in `group`, and a veth's peer index in
/// another namespace (id 0) when `peer` is given.
func linkReply(to request: NetlinkMessage, index: Int32, name: String, group: UInt32? = nil, peer: Int32? = nil) -> [NetlinkMessage] {
    var link = MessageBuilder(type: NetlinkMessageType.newLink, flags: 0)
    link.ifinfo(index: index)
    link.attribute(UInt16(IFLA_IFNAME), string: name)
    if let group { link.attribute(UInt16(IFLA_GROUP), group) }
    if let peer {
        link.attribute(UInt16(IFLA_LINK), peer)
        link.attribute(UInt16(IFLA_LINK_NETNSID), Int32(0))
    }
    return try! NetlinkMessage.parse(link.finish(sequence: request.sequence))
}
