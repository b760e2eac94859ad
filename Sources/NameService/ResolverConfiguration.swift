import Primitives

/// A resolv.conf: name servers, search domains and options. Read from the host's, and
/// written for containers.
public struct ResolverConfiguration: Equatable, Sendable {
    public var nameservers: [String]
    public var search: [String]
    public var options: [String]

    public init(nameservers: [String] = [], search: [String] = [], options: [String] = []) {
        self.nameservers = nameservers; self.search = search; self.options = options
    }

    public static func parse(_ text: String) -> ResolverConfiguration {
        var configuration = ResolverConfiguration()
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let keyword = fields.first, !keyword.hasPrefix("#"), !keyword.hasPrefix(";") else { continue }
            switch keyword {
            case "nameserver" where fields.count > 1: configuration.nameservers.append(fields[1])
            case "search", "domain": configuration.search = Array(fields.dropFirst())  // the last one wins, as in glibc
            case "options": configuration.options += fields.dropFirst()
            default: break
            }
        }
        return configuration
    }

    public var text: String {
        var lines = nameservers.map { "nameserver \($0)" }
        if !search.isEmpty { lines.append("search " + search.joined(separator: " ")) }
        if !options.isEmpty { lines.append("options " + options.joined(separator: " ")) }
        return lines.joined(separator: "\n") + "\n"
    }

    static let resolvedStub = "127.0.0.53"

    /// The host's configuration. When it points at systemd-resolved's stub (127.0.0.53),
    /// the servers come from resolved's own list of upstreams instead, which other network
    /// namespaces can reach; search and options stay the host's.
    public static func host(file: String = "/etc/resolv.conf",
                            resolvedFile: String = "/run/systemd/resolve/resolv.conf") -> ResolverConfiguration {
        var host = parse(readFile(file) ?? "")
        if host.nameservers.contains(resolvedStub) {
            let upstream = parse(readFile(resolvedFile) ?? "").nameservers
            host.nameservers = host.nameservers.filter { $0 != resolvedStub } + upstream
        }
        return host
    }

    /// The host's servers a container can reach itself: those not on loopback (which is
    /// the container's own inside it).
    public static func forContainers(file: String = "/etc/resolv.conf",
                                     resolvedFile: String = "/run/systemd/resolve/resolv.conf") -> ResolverConfiguration {
        var host = parse(readFile(file) ?? "")
        let reachable = host.nameservers.filter { !isLoopback($0) }
        host.nameservers = reachable.isEmpty ? parse(readFile(resolvedFile) ?? "").nameservers.filter { !isLoopback($0) } : reachable
        return host
    }

    static func isLoopback(_ server: String) -> Bool {
        guard let address = IPAddress(server) else { return false }
        return address.isIPv4 ? address.bytes[0] == 127 : address == IPAddress("::1")
    }
}
