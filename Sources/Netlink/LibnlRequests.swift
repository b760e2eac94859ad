import CNetlink
import Glibc
import Primitives

/// rtnetlink requests that libnl-route-3 builds: links (bridges, veth pairs, changes by
/// index, deletes), addresses and routes. Its objects are filled in and it encodes them;
/// the bytes then travel through the injectable `NetlinkSocket` like every other request, so
/// unit tests see them byte for byte. What libnl-route cannot express (a change addressed
/// by name, bridge port options, deleting an interface group, dumps) is added or built by
/// `MessageBuilder`.
enum Libnl {
    /// Takes the message libnl built (freeing it) with the header flags the kernel is to see.
    /// A build can fail only for want of memory or on a programmer's error: either is fatal.
    static func take(_ rc: Int32, _ message: OpaquePointer?, flags: UInt16, _ what: String) -> MessageBuilder {
        guard rc == 0, let message else {
            preconditionFailure("libnl-route could not build the request for \(what): \(String(cString: nl_geterror(rc)))")
        }
        defer { nlmsg_free(message) }
        let header = nlmsg_hdr(message)!
        let bytes = Array(UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len)))
        return MessageBuilder(encoded: bytes, flags: flags)
    }

    /// A libnl address object for `address` (freed by the caller with nl_addr_put).
    static func address(_ address: IPAddress, prefixLength: Int? = nil) -> OpaquePointer {
        let bytes = address.bytes
        let built = bytes.withUnsafeBytes { nl_addr_build(Int32(address.family), $0.baseAddress, $0.count) }!
        if let prefixLength { nl_addr_set_prefixlen(built, Int32(prefixLength)) }
        return built
    }

    static func linkAddress(_ mac: [UInt8]) -> OpaquePointer {
        mac.withUnsafeBytes { nl_addr_build(Int32(AF_LLC), $0.baseAddress, $0.count) }!
    }

    /// Sets what a link object carries that a new link or a change may give.
    static func configure(_ link: OpaquePointer, name: String? = nil, mtu: UInt32? = nil, mac: [UInt8]? = nil,
                          master: Int32? = nil, group: UInt32? = nil, up: Bool? = nil, alias: String? = nil) {
        if let name { rtnl_link_set_name(link, name) }
        if let mtu { rtnl_link_set_mtu(link, mtu) }
        if let mac {
            let address = linkAddress(mac)
            rtnl_link_set_addr(link, address)
            nl_addr_put(address)
        }
        if let master { rtnl_link_set_master(link, master) }
        if let group { rtnl_link_set_group(link, group) }
        if let alias { rtnl_link_set_ifalias(link, alias) }
        switch up {
        case true?: rtnl_link_set_flags(link, UInt32(IFF_UP))
        case false?: rtnl_link_unset_flags(link, UInt32(IFF_UP))
        case nil: break
        }
    }

    static func createBridge(name: String, mtu: UInt32?, mac: [UInt8]?, group: UInt32?, up: Bool, flags: UInt16) -> MessageBuilder {
        let link = rtnl_link_bridge_alloc()!
        defer { rtnl_link_put(link) }
        configure(link, name: name, mtu: mtu, mac: mac, group: group, up: up ? true : nil)
        var message: OpaquePointer?
        let rc = rtnl_link_build_add_request(link, Int32(NLM_F_CREATE | NLM_F_EXCL), &message)
        return take(rc, message, flags: flags, "bridge \(name)")
    }

    static func createVeth(_ spec: VethSpec, flags: UInt16) -> MessageBuilder {
        let link = rtnl_link_veth_alloc()!
        defer { rtnl_link_put(link) }
        configure(link, name: spec.name, mtu: spec.mtu, master: spec.master, group: spec.group, up: spec.up ? true : nil)
        // One queue each way, as veth uses anyway: left out, the kernel allocates one per
        // CPU and then cuts the pair down to one, which waits for two expedited RCU grace
        // periods under the RTNL lock (seen with perf sched in every CNI ADD).
        rtnl_link_set_num_tx_queues(link, 1)
        rtnl_link_set_num_rx_queues(link, 1)
        let peer = rtnl_link_veth_get_peer(link)!
        defer { rtnl_link_put(peer) }
        configure(peer, name: spec.peerName, mtu: spec.mtu, mac: spec.peerMAC)
        if let fd = spec.peerNamespaceFD { rtnl_link_set_ns_fd(peer, fd) }
        rtnl_link_set_num_tx_queues(peer, 1)
        rtnl_link_set_num_rx_queues(peer, 1)
        var message: OpaquePointer?
        let rc = rtnl_link_build_add_request(link, Int32(NLM_F_CREATE | NLM_F_EXCL), &message)
        return take(rc, message, flags: flags, "veth pair \(spec.name)/\(spec.peerName)")
    }

    /// A change of the link with index `index` (or, at index 0, the one named `name`: libnl
    /// sends a name only to rename, so it is added here), up/down, MTU, MAC, master, group,
    /// alias and, by index, a new name.
    static func changeLink(index: Int32, name: String?, _ change: LinkChange, flags: UInt16) -> MessageBuilder {
        let original = rtnl_link_alloc()!, changed = rtnl_link_alloc()!
        defer { rtnl_link_put(original); rtnl_link_put(changed) }
        rtnl_link_set_ifindex(original, index)
        configure(changed, name: index != 0 ? change.name : nil, mtu: change.mtu, mac: change.mac, master: change.master,
                  group: change.group, up: change.up, alias: change.alias)
        var message: OpaquePointer?
        let rc = rtnl_link_build_change_request(original, changed, 0, &message)
        if rc == 0, index == 0, let name, let message { nla_put_string(message, Int32(IFLA_IFNAME), name) }
        return take(rc, message, flags: flags, "a change of link \(index == 0 ? name ?? "?" : "#\(index)")")
    }

    static func deleteLink(index: Int32, name: String?, flags: UInt16) -> MessageBuilder {
        let link = rtnl_link_alloc()!
        defer { rtnl_link_put(link) }
        rtnl_link_set_ifindex(link, index)
        if let name { rtnl_link_set_name(link, name) }
        var message: OpaquePointer?
        let rc = rtnl_link_build_delete_request(link, &message)
        return take(rc, message, flags: flags, "deleting link \(name ?? "#\(index)")")
    }

    static func address(_ a: InterfaceAddress, noDAD: Bool, delete: Bool, flags: UInt16) -> MessageBuilder {
        let object = rtnl_addr_alloc()!
        defer { rtnl_addr_put(object) }
        rtnl_addr_set_ifindex(object, a.index)
        let local = address(a.address, prefixLength: a.prefixLength)
        rtnl_addr_set_local(object, local)
        nl_addr_put(local)
        if !delete, let broadcast = IPNetwork(address: a.address, prefixLength: a.prefixLength).broadcast {
            let built = address(broadcast)
            rtnl_addr_set_broadcast(object, built)
            nl_addr_put(built)
        }
        if noDAD && !a.address.isIPv4 { rtnl_addr_set_flags(object, UInt32(IFA_F_NODAD)) }
        var message: OpaquePointer?
        let rc = delete ? rtnl_addr_build_delete_request(object, 0, &message)
                        : rtnl_addr_build_add_request(object, Int32(NLM_F_CREATE | NLM_F_EXCL), &message)
        return take(rc, message, flags: flags, "address \(a.address)/\(a.prefixLength)")
    }

    /// A unicast route of the main table: to `destination` (nil: the default route) via a
    /// gateway, or on a link when it names none.
    static func route(_ r: Route, delete: Bool, replace: Bool = false, flags: UInt16) -> MessageBuilder {
        let route = rtnl_route_alloc()!
        defer { rtnl_route_put(route) }
        let family = r.isIPv4 ? AF_INET : AF_INET6
        rtnl_route_set_family(route, UInt8(family))
        rtnl_route_set_table(route, UInt32(RT_TABLE_MAIN.rawValue))
        rtnl_route_set_protocol(route, UInt8(RTPROT_BOOT))
        rtnl_route_set_type(route, UInt8(RTN_UNICAST))
        rtnl_route_set_scope(route, UInt8(r.gateway == nil ? RT_SCOPE_LINK.rawValue : RT_SCOPE_UNIVERSE.rawValue))
        let destination = r.destination ?? IPNetwork(address: r.isIPv4 ? .v4(0) : .v6(0), prefixLength: 0)
        let dst = address(destination.address, prefixLength: destination.prefixLength)
        rtnl_route_set_dst(route, dst)
        nl_addr_put(dst)
        let hop = rtnl_route_nh_alloc()!
        if let gateway = r.gateway {
            let built = address(gateway)
            rtnl_route_nh_set_gateway(hop, built)
            nl_addr_put(built)
        }
        if let output = r.outputIndex { rtnl_route_nh_set_ifindex(hop, output) }
        rtnl_route_add_nexthop(route, hop)  // the route owns it from here
        var message: OpaquePointer?
        let rc = delete ? rtnl_route_build_del_request(route, 0, &message)
                        : rtnl_route_build_add_request(route, Int32(NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL)), &message)
        return take(rc, message, flags: flags, "route \(r.destination.map { "\($0)" } ?? "default")")
    }
}
