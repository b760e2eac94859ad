import CNetlink
import Glibc
import Primitives

/// A network interface as the kernel reports it.
public struct Link: Sendable, Equatable {
    public var index: Int32
    public var name: String
    /// "bridge", "veth", ...; nil for devices without rtnl link ops (lo, physical NICs).
    public var kind: String?
    public var mtu: UInt32
    public var mac: [UInt8]
    public var isUp: Bool
    public var master: Int32?
    public var group: UInt32
    public var alias: String?
    /// A veth's peer: its index, and the id of its network namespace as this one knows it
    /// (nil when the peer is in this namespace).
    public var peerIndex: Int32?
    public var peerNamespaceID: Int32?

    /// Decodes an RTM_NEWLINK message.
    public init?(_ message: NetlinkMessage) {
        guard message.type == NetlinkMessageType.newLink, message.payload.count >= 16 else { return nil }
        let attrs = message.attributes(after: 16)
        guard let name = attrs.string(UInt16(IFLA_IFNAME)) else { return nil }
        index = message.payload.readInteger(at: 4, as: Int32.self)
        self.name = name
        kind = attrs.nested(UInt16(IFLA_LINKINFO))?.string(UInt16(IFLA_INFO_KIND))
        mtu = attrs.integer(UInt16(IFLA_MTU)) ?? 0
        mac = attrs[UInt16(IFLA_ADDRESS)] ?? []
        isUp = message.payload.readInteger(at: 8, as: UInt32.self) & LinkFlags.up != 0
        master = attrs.integer(UInt16(IFLA_MASTER))
        group = attrs.integer(UInt16(IFLA_GROUP)) ?? 0
        alias = attrs.string(UInt16(IFLA_IFALIAS))
        peerIndex = attrs.integer(UInt16(IFLA_LINK))
        peerNamespaceID = attrs.integer(UInt16(IFLA_LINK_NETNSID))
    }

    public init(index: Int32, name: String, kind: String? = nil, mtu: UInt32 = 1500, mac: [UInt8] = [],
                isUp: Bool = false, master: Int32? = nil, group: UInt32 = 0, alias: String? = nil) {
        self.index = index; self.name = name; self.kind = kind; self.mtu = mtu; self.mac = mac
        self.isUp = isUp; self.master = master; self.group = group; self.alias = alias
    }
}

public enum LinkFlags {
    public static let up: UInt32 = 0x1  // IFF_UP
}

/// Changes to one existing link; nil fields are left alone.
public struct LinkChange: Sendable {
    public var up: Bool?
    public var mtu: UInt32?
    public var mac: [UInt8]?
    public var master: Int32?
    public var group: UInt32?
    public var alias: String?
    public var name: String?
    /// Bridge port hairpin mode: frames may leave by the port they came in on, which a
    /// container reaching its own published port needs when br_netfilter DNATs in the bridge.
    public var hairpin: Bool?

    public init(up: Bool? = nil, mtu: UInt32? = nil, mac: [UInt8]? = nil, master: Int32? = nil,
                group: UInt32? = nil, alias: String? = nil, name: String? = nil, hairpin: Bool? = nil) {
        self.up = up; self.mtu = mtu; self.mac = mac; self.master = master
        self.group = group; self.alias = alias; self.name = name; self.hairpin = hairpin
    }
}

/// A veth pair whose peer is created, and named, directly in another network namespace.
public struct VethSpec: Sendable {
    public var name: String
    public var peerName: String
    /// An open network-namespace file descriptor for the peer; nil keeps it beside `name`.
    public var peerNamespaceFD: Int32?
    public var peerMAC: [UInt8]?
    public var mtu: UInt32?
    public var master: Int32?
    public var group: UInt32?
    public var up: Bool

    public init(name: String, peerName: String, peerNamespaceFD: Int32? = nil, peerMAC: [UInt8]? = nil,
                mtu: UInt32? = nil, master: Int32? = nil, group: UInt32? = nil, up: Bool = true) {
        self.name = name; self.peerName = peerName; self.peerNamespaceFD = peerNamespaceFD
        self.peerMAC = peerMAC; self.mtu = mtu; self.master = master; self.group = group; self.up = up
    }
}

/// An address on an interface, such as 10.88.0.2/16 on eth0.
public struct InterfaceAddress: Sendable, Equatable {
    public var index: Int32
    public var address: IPAddress
    public var prefixLength: Int

    public init(index: Int32, address: IPAddress, prefixLength: Int) {
        self.index = index; self.address = address; self.prefixLength = prefixLength
    }

    init?(_ message: NetlinkMessage) {
        guard message.type == NetlinkMessageType.newAddress, message.payload.count >= 8 else { return nil }
        let attrs = message.attributes(after: 8)
        guard let raw = attrs[UInt16(IFA_LOCAL)] ?? attrs[UInt16(IFA_ADDRESS)], let ip = IPAddress(bytes: raw) else {
            return nil
        }
        index = Int32(bitPattern: message.payload.readInteger(at: 4, as: UInt32.self))
        address = ip
        prefixLength = Int(message.payload[1])
    }
}

/// A route in the main table.
public struct Route: Sendable, Equatable {
    /// nil is the default route.
    public var destination: IPNetwork?
    public var gateway: IPAddress?
    public var outputIndex: Int32?
    public var isIPv4: Bool

    public init(destination: IPNetwork?, gateway: IPAddress? = nil, outputIndex: Int32? = nil, isIPv4: Bool) {
        self.destination = destination; self.gateway = gateway; self.outputIndex = outputIndex; self.isIPv4 = isIPv4
    }

    public static func defaultRoute(via gateway: IPAddress) -> Route {
        Route(destination: nil, gateway: gateway, isIPv4: gateway.isIPv4)
    }

    init?(_ message: NetlinkMessage) {
        guard message.type == NetlinkMessageType.newRoute, message.payload.count >= 12 else { return nil }
        let p = message.payload
        let attrs = message.attributes(after: 12)
        let table = attrs.integer(UInt16(RTA_TABLE.rawValue), as: UInt32.self) ?? UInt32(p[4])
        guard table == UInt32(RT_TABLE_MAIN.rawValue), p[7] == UInt8(RTN_UNICAST) else { return nil }
        isIPv4 = p[0] == UInt8(AF_INET)
        let dstLength = Int(p[1])
        if let raw = attrs[UInt16(RTA_DST.rawValue)], let ip = IPAddress(bytes: raw) {
            destination = IPNetwork(address: ip, prefixLength: dstLength)
        } else {
            destination = nil
        }
        gateway = attrs[UInt16(RTA_GATEWAY.rawValue)].flatMap { IPAddress(bytes: $0) }
        outputIndex = attrs.integer(UInt16(RTA_OIF.rawValue))
    }
}
