import Primitives
/// A CNI result (interfaces, ips, routes, dns), printed in the form of the configuration's
/// `cniVersion`: 0.4.0 results carry `version` in each IP; 1.x results do not, and only 1.1.0
/// has an interface's `mtu`.
public struct CNIResult: Equatable {
    public struct Interface: Equatable {
        public var name: String
        public var mac: String?
        public var mtu: Int?
        public var sandbox: String?
        /// Other fields a previous plugin set (socketPath, pciID...), passed on as they were.
        public var extra: [(String, JSON)] = []

        public init(name: String, mac: String? = nil, mtu: Int? = nil, sandbox: String? = nil) {
            self.name = name; self.mac = mac; self.mtu = mtu; self.sandbox = sandbox
        }

        public static func == (a: Interface, b: Interface) -> Bool {
            a.name == b.name && a.mac == b.mac && a.mtu == b.mtu && a.sandbox == b.sandbox && JSON.object(a.extra) == JSON.object(b.extra)
        }
    }

    public struct IP: Equatable {
        public var address: String
        public var gateway: String?
        public var interface: Int?

        public init(address: String, gateway: String? = nil, interface: Int? = nil) {
            self.address = address; self.gateway = gateway; self.interface = interface
        }
    }

    public struct Route: Equatable {
        public var dst: String
        public var gw: String?
        public var extra: [(String, JSON)] = []

        public init(dst: String, gw: String? = nil) { self.dst = dst; self.gw = gw }

        public static func == (a: Route, b: Route) -> Bool {
            a.dst == b.dst && a.gw == b.gw && JSON.object(a.extra) == JSON.object(b.extra)
        }
    }

    public var interfaces: [Interface] = []
    public var ips: [IP] = []
    public var routes: [Route] = []
    public var dns: JSON?

    public init(interfaces: [Interface] = [], ips: [IP] = [], routes: [Route] = [], dns: JSON? = nil) {
        self.interfaces = interfaces; self.ips = ips; self.routes = routes; self.dns = dns
    }

    /// Reads a result (e.g. a `prevResult`) of any supported version.
    public init(_ json: JSON) throws {
        func bad(_ what: String) -> CNIError { CNIError(.invalidNetworkConfig, "\"prevResult\" is malformed: \(what)") }
        guard json.object != nil else { throw bad("not an object") }
        for item in json["interfaces"]?.array ?? [] {
            guard let pairs = item.object, let name = item["name"]?.string else { throw bad("an interface has no name") }
            var i = Interface(name: name, mac: item["mac"]?.string, mtu: item["mtu"]?.int, sandbox: item["sandbox"]?.string)
            i.extra = pairs.filter { !["name", "mac", "mtu", "sandbox"].contains($0.0) }
            interfaces.append(i)
        }
        for item in json["ips"]?.array ?? [] {
            guard let address = item["address"]?.string else { throw bad("an IP has no address") }
            ips.append(IP(address: address, gateway: item["gateway"]?.string, interface: item["interface"]?.int))
        }
        for item in json["routes"]?.array ?? [] {
            guard let pairs = item.object, let dst = item["dst"]?.string else { throw bad("a route has no dst") }
            var r = Route(dst: dst, gw: item["gw"]?.string)
            r.extra = pairs.filter { !["dst", "gw"].contains($0.0) }
            routes.append(r)
        }
        if let dns = json["dns"], dns.object != nil { self.dns = dns }
    }

    /// This result after `previous`: previous interfaces first (ours' indices shift by
    /// their count), then IPs and routes in the same order; our DNS unless we have none.
    public func appended(to previous: CNIResult) -> CNIResult {
        let shift = previous.interfaces.count
        let ours = ips.map { ip -> IP in
            var ip = ip
            ip.interface = ip.interface.map { $0 + shift }
            return ip
        }
        let dnsEmpty = dns.map { $0.object?.isEmpty ?? true } ?? true
        return CNIResult(interfaces: previous.interfaces + interfaces, ips: previous.ips + ours,
                         routes: previous.routes + routes, dns: dnsEmpty ? previous.dns : dns)
    }

    public func json(cniVersion: String) -> JSON {
        let is04 = cniVersion == "0.4.0", is11 = cniVersion == "1.1.0"
        var out: [(String, JSON)] = [("cniVersion", .string(cniVersion))]
        if !interfaces.isEmpty {
            out.append(("interfaces", .array(interfaces.map { i in
                var pairs: [(String, JSON)] = [("name", .string(i.name))]
                if let mac = i.mac { pairs.append(("mac", .string(mac))) }
                if is11, let mtu = i.mtu { pairs.append(("mtu", .number("\(mtu)"))) }
                if let sandbox = i.sandbox { pairs.append(("sandbox", .string(sandbox))) }
                pairs += i.extra.filter { is11 || !["socketPath", "pciID"].contains($0.0) }
                return .object(pairs)
            })))
        }
        if !ips.isEmpty {
            out.append(("ips", .array(ips.map { ip in
                var pairs: [(String, JSON)] = []
                if is04 { pairs.append(("version", .string(ip.address.contains(":") ? "6" : "4"))) }
                pairs.append(("address", .string(ip.address)))
                if let gateway = ip.gateway { pairs.append(("gateway", .string(gateway))) }
                if let index = ip.interface { pairs.append(("interface", .number("\(index)"))) }
                return .object(pairs)
            })))
        }
        if !routes.isEmpty {
            out.append(("routes", .array(routes.map { r in
                var pairs: [(String, JSON)] = [("dst", .string(r.dst))]
                if let gw = r.gw { pairs.append(("gw", .string(gw))) }
                // mtu, advmss, priority, table, scope exist from 1.1.0 on.
                if is11 { pairs += r.extra }
                return .object(pairs)
            })))
        }
        if let dns, let pairs = dns.object, !pairs.isEmpty { out.append(("dns", dns)) }
        return .object(out)
    }
}
