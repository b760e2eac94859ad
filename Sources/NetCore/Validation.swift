import Netlink
import Primitives

/// Input checks shared by every entry point; each throws a NetctlError and changes nothing.
enum Validate {
    /// Kernel rules for interface names (dev_valid_name): 1-15 bytes, not "." or "..",
    /// no '/', ':' or white space.
    static func interfaceName(_ name: String) throws {
        let bytes = Array(name.utf8)
        if bytes.isEmpty { throw NetctlError.invalidInterfaceName(name, reason: "it is empty") }
        if bytes.count > 15 { throw NetctlError.invalidInterfaceName(name, reason: "it is \(bytes.count) bytes long") }
        if name == "." || name == ".." { throw NetctlError.invalidInterfaceName(name, reason: "it is reserved") }
        if let bad = name.first(where: { $0 == "/" || $0 == ":" || $0.isWhitespace || !$0.isASCII || $0.asciiValue! < 0x21 }) {
            throw NetctlError.invalidInterfaceName(name, reason: "it contains \(String(reflecting: String(bad)))")
        }
    }

    /// Names of networks, endpoints and netctl-made namespaces: they end up in paths and
    /// commands, so keep them to a safe alphabet.
    static func objectName(_ name: String, kind: String) throws {
        guard !name.isEmpty, name.utf8.count <= 64 else {
            throw NetctlError.invalidName(kind: kind, value: name, reason: "use 1 to 64 characters")
        }
        let allowed = name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
        guard allowed, name.first!.isLetter || name.first!.isNumber else {
            throw NetctlError.invalidName(kind: kind, value: name,
                                          reason: "use letters, digits, '_', '.' and '-', starting with a letter or digit")
        }
    }

    /// Parses "02:42:ac:11:00:02": six octets, unicast, not all zero.
    static func mac(_ text: String) throws -> MACAddress {
        guard let mac = MACAddress(text), mac.isAssignable else { throw NetctlError.invalidMAC(text) }
        return mac
    }

    static func subnet(_ text: String, ipv6: Bool) throws -> IPNetwork {
        guard let loose = IPNetwork(text, strict: false) else {
            throw NetctlError.invalidSubnet(text, reason: "write it as ADDRESS/PREFIX, e.g. \(ipv6 ? "fd00:1::/64" : "10.10.0.0/24")")
        }
        guard loose.isIPv4 != ipv6 else {
            throw NetctlError.invalidSubnet(text, reason: ipv6 ? "--subnet6 takes an IPv6 subnet" : "--subnet takes an IPv4 subnet; use --subnet6 for IPv6")
        }
        guard IPNetwork(text) != nil else {
            throw NetctlError.invalidSubnet(text, reason: "host bits are set; did you mean \(loose)?")
        }
        let maxPrefix = ipv6 ? 126 : 30
        guard loose.prefixLength <= maxPrefix else {
            throw NetctlError.invalidSubnet(text, reason: "a /\(loose.prefixLength) has no room for a gateway and endpoints; use /\(maxPrefix) or shorter")
        }
        guard loose.prefixLength >= (ipv6 ? 48 : 8) else {
            throw NetctlError.invalidSubnet(text, reason: "a /\(loose.prefixLength) is too large for one bridge; use /\(ipv6 ? 48 : 8) or longer")
        }
        return loose
    }

    /// An endpoint's requested address on a network: a host address of its subnet that is not
    /// its gateway.
    static func requestedAddress(_ text: String, in subnet: IPNetwork, gateway: IPAddress, network: String) throws -> IPAddress {
        let ip = try hostAddress(text, in: subnet, what: "--ip")
        if ip == gateway { throw NetctlError.invalidAddress(text, reason: "--ip is the gateway of network \(network)") }
        return ip
    }

    /// An address that may be given to a host on `subnet`: inside it, and neither the
    /// network nor the broadcast address.
    static func hostAddress(_ text: String, in subnet: IPNetwork, what: String) throws -> IPAddress {
        guard let ip = IPAddress(text), ip.isIPv4 == subnet.isIPv4 else {
            throw NetctlError.invalidAddress(text, reason: "\(what) must be an IPv\(subnet.isIPv4 ? 4 : 6) address")
        }
        guard subnet.contains(ip) else {
            throw NetctlError.invalidAddress(text, reason: "\(what) is outside the subnet \(subnet)")
        }
        if ip == subnet.address {
            throw NetctlError.invalidAddress(text, reason: "\(what) is the network address of \(subnet)")
        }
        if ip == subnet.broadcast {
            throw NetctlError.invalidAddress(text, reason: "\(what) is the broadcast address of \(subnet)")
        }
        return ip
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
