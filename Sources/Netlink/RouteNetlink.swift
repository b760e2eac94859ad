import CNetlink
import Glibc
import Primitives

/// One rtnetlink request: the message, the words that name it in an error, and the errors
/// that count as success (ENODEV for an idempotent delete, say).
public struct RouteRequest {
    public var message: MessageBuilder
    public var operation: String
    public var ignoredErrors: Set<Int32> = []
    /// The route a route request adds or removes (for callers that tell a taken default
    /// route from other failures).
    public var route: Route?

    public init(_ message: MessageBuilder, _ operation: String) {
        self.message = message
        self.operation = operation
    }

    public func ignoring(_ codes: Int32...) -> RouteRequest {
        var copy = self
        copy.ignoredErrors.formUnion(codes)
        return copy
    }

    private static let change = NetlinkFlags.request | NetlinkFlags.ack
    private static let create = change | NetlinkFlags.create | NetlinkFlags.exclusive

    // MARK: Links

    /// A bridge. Give it a fixed `mac`, or the kernel makes it follow the lowest port MAC,
    /// which changes as containers come and go and breaks neighbours' ARP caches.
    public static func createBridge(name: String, mtu: UInt32? = nil, mac: [UInt8]? = nil, group: UInt32? = nil,
                                    up: Bool = true) -> RouteRequest {
        RouteRequest(Libnl.createBridge(name: name, mtu: mtu, mac: mac, group: group, up: up, flags: create), "creating bridge \(name)")
    }

    public static func createVeth(_ spec: VethSpec) -> RouteRequest {
        RouteRequest(Libnl.createVeth(spec, flags: create), "creating veth pair \(spec.name)/\(spec.peerName)")
    }

    public static func setLink(index: Int32, _ change: LinkChange) -> RouteRequest {
        RouteRequest(linkChange(index: index, name: nil, change), "changing link #\(index)")
    }

    /// Changes the link with this name: the kernel looks it up by IFLA_IFNAME, so this form
    /// cannot rename (`change.name` must be nil; rename by index).
    public static func setLink(name: String, _ change: LinkChange) -> RouteRequest {
        precondition(change.name == nil, "renaming needs the link's index")
        return RouteRequest(linkChange(index: 0, name: name, change), "changing link \(name)")
    }

    private static func linkChange(index: Int32, name: String?, _ change: LinkChange) -> MessageBuilder {
        var m = Libnl.changeLink(index: index, name: name, change, flags: RouteRequest.change)
        if let hairpin = change.hairpin {
            // Port options travel as the master's "slave data", as `ip link set X type
            // bridge_slave` sends them; libnl-route has no bridge port options, so it is added here.
            m.nested(UInt16(IFLA_LINKINFO)) { info in
                info.attribute(UInt16(IFLA_INFO_SLAVE_KIND), string: "bridge")
                info.nested(UInt16(IFLA_INFO_SLAVE_DATA)) { $0.attribute(UInt16(IFLA_BRPORT_MODE), UInt8(hairpin ? 1 : 0)) }
            }
        }
        return m
    }

    public static func deleteLink(index: Int32) -> RouteRequest {
        RouteRequest(Libnl.deleteLink(index: index, name: nil, flags: change), "deleting link #\(index)")
    }

    public static func deleteLink(name: String) -> RouteRequest {
        RouteRequest(Libnl.deleteLink(index: 0, name: name, flags: change), "deleting link \(name)")
    }

    /// Deletes every link in an interface group with one kernel-side unregister batch (built
    /// here: libnl-route deletes by index or name only).
    public static func deleteLinks(inGroup group: UInt32) -> RouteRequest {
        var m = MessageBuilder(type: NetlinkMessageType.delLink, flags: change)
        m.ifinfo()
        m.attribute(UInt16(IFLA_GROUP), group)
        return RouteRequest(m, "deleting the links of group \(group)")
    }

    // MARK: Addresses and routes

    /// Duplicate address detection (`noDAD` off) would hold a fresh IPv6 address back for
    /// seconds; netctl's IPAM already guarantees uniqueness on the bridge.
    public static func addAddress(_ a: InterfaceAddress, noDAD: Bool = true) -> RouteRequest {
        RouteRequest(Libnl.address(a, noDAD: noDAD, delete: false, flags: create),
                     "adding address \(a.address)/\(a.prefixLength) to link #\(a.index)")
    }

    public static func deleteAddress(_ a: InterfaceAddress) -> RouteRequest {
        RouteRequest(Libnl.address(a, noDAD: false, delete: true, flags: change),
                     "removing address \(a.address)/\(a.prefixLength) from link #\(a.index)")
    }

    public static func addRoute(_ r: Route) -> RouteRequest {
        var request = RouteRequest(Libnl.route(r, delete: false, flags: create), "adding route \(describe(r))")
        request.route = r
        return request
    }

    /// Adds a route, or replaces the one to the same destination (another default route).
    public static func replaceRoute(_ r: Route) -> RouteRequest {
        var request = RouteRequest(Libnl.route(r, delete: false, replace: true, flags: change | NetlinkFlags.create | NetlinkFlags.replace),
                                   "setting route \(describe(r))")
        request.route = r
        return request
    }

    public static func deleteRoute(_ r: Route) -> RouteRequest {
        var request = RouteRequest(Libnl.route(r, delete: true, flags: change), "removing route \(describe(r))")
        request.route = r
        return request
    }

    private static func describe(_ r: Route) -> String {
        (r.destination.map { "\($0)" } ?? "default") + (r.gateway.map { " via \($0)" } ?? "")
    }
}

/// An rtnetlink client: links, addresses and routes of the namespace its socket lives in.
public final class RouteNetlink {
    private let socket: NetlinkSocket
    private var sequence: UInt32 = 1

    public init(socket: NetlinkSocket) {
        self.socket = socket
    }

    /// A client of the calling thread's network namespace.
    public convenience init() throws {
        self.init(socket: try LibnlSocket())
    }

    /// A client of another network namespace: its socket is opened on a dedicated thread
    /// inside that namespace and stays there, so this client can be used from any thread.
    public static func open(in namespace: NetworkNamespace) throws -> RouteNetlink {
        try namespace.run { try RouteNetlink() }
    }

    // MARK: Sending

    /// Sends all requests in one datagram (the kernel handles them in order) and waits
    /// for every acknowledgement. Throws the first failure that is not ignored.
    public func perform(_ requests: [RouteRequest]) throws {
        let codes = try performEach(requests)
        for (request, code) in zip(requests, codes) where code != 0 && !request.ignoredErrors.contains(code) {
            throw NetlinkError(operation: request.operation, code: code)
        }
    }

    public func perform(_ request: RouteRequest) throws {
        try perform([request])
    }

    /// Like `perform`, but returns each request's errno (0 = success) instead of throwing.
    public func performEach(_ requests: [RouteRequest]) throws -> [Int32] {
        guard !requests.isEmpty else { return [] }
        let first = sequence
        var datagram: [UInt8] = []
        for request in requests {
            datagram.append(contentsOf: request.message.finish(sequence: sequence))
            sequence &+= 1
        }
        return try socket.transact(datagram, sequences: first..<(first &+ UInt32(requests.count)))
    }

    /// Sends a dump request and returns every message up to NLMSG_DONE.
    public func dump(_ message: MessageBuilder, _ operation: String) throws -> [NetlinkMessage] {
        try socket.dump(message.finish(sequence: nextSequence()), operation)
    }

    /// Sends a get request that has one reply; nil when the kernel says the object doesn't exist.
    public func get(_ message: MessageBuilder, _ operation: String, missing: Set<Int32> = [ENODEV]) throws -> NetlinkMessage? {
        let seq = nextSequence()
        try socket.send(message.finish(sequence: seq))
        while true {
            for reply in try NetlinkMessage.parse(socket.receive()) where reply.sequence == seq {
                guard reply.type == NetlinkMessageType.error else { return reply }
                if missing.contains(reply.errorCode) { return nil }
                throw NetlinkError(operation: operation, code: reply.errorCode)
            }
        }
    }

    private func nextSequence() -> UInt32 {
        defer { sequence &+= 1 }
        return sequence
    }

    // MARK: Links

    public func links() throws -> [Link] {
        var m = MessageBuilder(type: NetlinkMessageType.getLink, flags: NetlinkFlags.request | NetlinkFlags.dump)
        m.ifinfo()
        return try dump(m, "listing links").compactMap(Link.init)
    }

    public func link(named name: String) throws -> Link? {
        var m = MessageBuilder(type: NetlinkMessageType.getLink, flags: NetlinkFlags.request)
        m.ifinfo()
        m.attribute(UInt16(IFLA_IFNAME), string: name)
        return try get(m, "looking up link \(name)").flatMap(Link.init)
    }

    public func link(index: Int32) throws -> Link? {
        var m = MessageBuilder(type: NetlinkMessageType.getLink, flags: NetlinkFlags.request)
        m.ifinfo(index: index)
        return try get(m, "looking up link #\(index)").flatMap(Link.init)
    }

    /// Deletes links by name in one kernel batch: each is moved into a fresh, private
    /// interface group, and the group is deleted with one request. Deleting links one by one
    /// costs a kernel RCU wait each; the group costs one wait in all. Links that
    /// are already gone are skipped.
    public func deleteLinks(names: [String]) throws {
        switch names.count {
        case 0: return
        case 1: try perform(.deleteLink(name: names[0]).ignoring(ENODEV))
        default:
            let group = LinkGroups.scratch()
            let moved = try performEach(names.map { RouteRequest.setLink(name: $0, LinkChange(group: group)) })
            if moved.contains(0) { try perform(.deleteLinks(inGroup: group)) }
            if let failure = zip(names, moved).first(where: { $0.1 != 0 && $0.1 != ENODEV }) {
                throw NetlinkError(operation: "marking link \(failure.0) for deletion", code: failure.1)
            }
        }
    }

    /// Deletes every link of `group` from a detached process, without waiting: the kernel's
    /// unregister (an RCU barrier) then costs the caller nothing. One such process per
    /// namespace deletes the group every 100 ms until it is empty, so a burst of calls is
    /// one kernel batch per round; links go a round or two after the call.
    /// `lockDirectory` must be root's: the lock file that makes that one process lives there.
    public func deleteLinksDetached(inGroup group: UInt32, lockDirectory: String) throws {
        let message = RouteRequest.deleteLinks(inGroup: group).message.finish(sequence: sequence)
        sequence &+= 1
        try socket.sendDetached(message, lockDirectory: lockDirectory)
    }

    // MARK: Addresses and routes

    public func addresses(family: UInt8 = UInt8(AF_UNSPEC)) throws -> [InterfaceAddress] {
        var m = MessageBuilder(type: NetlinkMessageType.getAddress, flags: NetlinkFlags.request | NetlinkFlags.dump)
        m.ifaddr(family: family, prefixLength: 0, index: 0)
        return try dump(m, "listing addresses").compactMap(InterfaceAddress.init)
    }

    /// Unicast routes of the main table.
    public func routes(family: UInt8) throws -> [Route] {
        var m = MessageBuilder(type: NetlinkMessageType.getRoute, flags: NetlinkFlags.request | NetlinkFlags.dump)
        m.rtmsg(family: family, table: 0, protocol: 0, scope: 0, type: 0)
        return try dump(m, "listing routes").compactMap(Route.init)
    }
}

/// Interface groups (IFLA_GROUP) netctl uses to mark its links and to delete many at once.
public enum LinkGroups {
    /// Host ends of endpoint veth pairs.
    public static let endpoint: UInt32 = 0x6e63_7665  // "ncve"
    /// Bridges of netctl networks.
    public static let bridge: UInt32 = 0x6e63_6272    // "ncbr"
    /// Host ends of detached endpoints' veth pairs, down and waiting for a detached process
    /// to delete them (gc deletes any such process left behind).
    public static let retired: UInt32 = 0x6e63_7274   // "ncrt"

    /// A random group for one batch delete; its top byte (0x6d) keeps it clear of the groups above
    /// and of the kernel's default group 0.
    public static func scratch() -> UInt32 {
        0x6d00_0000 | UInt32.random(in: 1...0x00ff_ffff)
    }
}
