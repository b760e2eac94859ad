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
        let field: InputField = ipv6 ? .subnet6 : .subnet
        func fail(_ problem: SubnetProblem) -> NetctlError { .invalidSubnet(text, field: field, problem: problem) }
        guard let loose = IPNetwork(text, strict: false) else { throw fail(.notCIDR) }
        guard loose.isIPv4 != ipv6 else { throw fail(.wrongFamily) }
        guard IPNetwork(text) != nil else { throw fail(.hostBitsSet(masked: "\(loose)")) }
        let maxPrefix = ipv6 ? 126 : 30, minPrefix = ipv6 ? 48 : 8
        guard loose.prefixLength <= maxPrefix else { throw fail(.tooSmall(prefix: loose.prefixLength, maxPrefix: maxPrefix)) }
        guard loose.prefixLength >= minPrefix else { throw fail(.tooLarge(prefix: loose.prefixLength, minPrefix: minPrefix)) }
        return loose
    }

    /// An endpoint's requested address on a network: a host address of its subnet that is not
    /// its gateway.
    static func requestedAddress(_ text: String, in subnet: IPNetwork, gateway: IPAddress, network: String) throws -> IPAddress {
        let ip = try hostAddress(text, in: subnet, field: .ip)
        if ip == gateway { throw NetctlError.invalidAddress(text, field: .ip, problem: .isGateway(network: network)) }
        return ip
    }

    /// An address that may be given to a host on `subnet`: inside it, and neither the
    /// network nor the broadcast address.
    static func hostAddress(_ text: String, in subnet: IPNetwork, field: InputField) throws -> IPAddress {
        func fail(_ problem: AddressProblem) -> NetctlError { .invalidAddress(text, field: field, problem: problem) }
        guard let ip = IPAddress(text), ip.isIPv4 == subnet.isIPv4 else { throw fail(.notAnAddress(ipv4: subnet.isIPv4)) }
        guard subnet.contains(ip) else { throw fail(.outside(subnet: "\(subnet)")) }
        if ip == subnet.address { throw fail(.networkAddress(subnet: "\(subnet)")) }
        if ip == subnet.broadcast { throw fail(.broadcastAddress(subnet: "\(subnet)")) }
        return ip
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
