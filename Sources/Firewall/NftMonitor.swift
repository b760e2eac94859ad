import CNftables
import Glibc
import Netlink

/// nftables' change notifications (the NFNLGRP_NFTABLES multicast group), read for one
/// purpose: noticing that something took from netctl's table (`nft flush ruleset`, a
/// firewall manager's reload, a hand-made `nft delete`), so it can be put back at once.
public final class NftMonitor {
    public let descriptor: Int32

    public enum Event: Equatable, Sendable {
        /// A table, chain, rule, set or set element of `table` (family `family`) was deleted.
        case removal(table: String, family: UInt8)
        /// A transaction ended: what it deleted is all in.
        case generation
        /// The kernel dropped notifications (the socket's buffer overran): anything may have
        /// happened.
        case overrun
    }

    public init() throws {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_NETFILTER)
        guard fd >= 0 else { throw NetlinkError(operation: "opening an nftables monitor", code: errno) }
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        var group = Int32(NFNLGRP_NFTABLES.rawValue)
        var size: Int32 = 4 << 20  // a whole ruleset's deletion at once
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard bound == 0, setsockopt(fd, Int32(SOL_NETLINK), NETLINK_ADD_MEMBERSHIP, &group, 4) == 0 else {
            let code = errno
            close(fd)
            throw NetlinkError(operation: "joining nftables notifications", code: code)
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4)
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// The next notifications, waiting at most `milliseconds` (empty when none came).
    public func next(milliseconds: Int32) -> [Event] {
        var poll = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&poll, 1, milliseconds) > 0 else { return [] }
        var events: [Event] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = recv(descriptor, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n < 0 {
                if errno == ENOBUFS { events.append(.overrun); continue }
                break
            }
            guard n > 0, let messages = try? NetlinkMessage.parse(Array(buffer[0..<n])) else { break }
            events += messages.compactMap(NftMonitor.event)
        }
        return events
    }

    static func event(_ message: NetlinkMessage) -> Event? {
        guard message.type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES), message.payload.count >= 4 else { return nil }
        let kind = UInt32(message.type & 0xff)
        if kind == NFT_MSG_NEWGEN.rawValue { return .generation }
        let removals: Set<UInt32> = [NFT_MSG_DELTABLE.rawValue, NFT_MSG_DELCHAIN.rawValue, NFT_MSG_DELRULE.rawValue,
                                     NFT_MSG_DELSET.rawValue, NFT_MSG_DELSETELEM.rawValue]
        guard removals.contains(kind) else { return nil }
        // Each of these names its table in attribute 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
        // NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE).
        guard let name = message.attributes(after: 4).values[1] else { return nil }
        let table = String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
        return .removal(table: table, family: message.payload[0])
    }
}
