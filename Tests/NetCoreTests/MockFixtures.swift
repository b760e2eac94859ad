import CNetlink
import Netlink
@testable import NetCore

/// An active endpoint on network "web" (10.88.0.0/24, gateway .1), as mock tests put in state.
func webEndpoint(id: String, name: String, hostInterface: String, ip: String, netns: String = "/run/netns/x") -> Endpoint {
    Endpoint(id: id, name: name, network: "web", hostInterface: hostInterface, interface: "eth0",
             mac: "02:6e:0a:58:00:02", ipv4: "\(ip)/24", ipv6: nil, gateway: "10.88.0.1", gateway6: nil,
             netns: netns, pid: nil, ownsNetns: false, state: .active, created: timestamp())
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
