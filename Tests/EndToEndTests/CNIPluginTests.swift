import Foundation
import Glibc
import Netlink
import Testing

/// Runs netctl-cni and the libcni client (netctl-cniclient) inside a sandbox.
struct CNIHarness {
    /// The plugin binary: $NETCTL_CNI_BIN, else the debug build beside netctl.
    static let plugin: String = ProcessInfo.processInfo.environment["NETCTL_CNI_BIN"]
        ?? URL(fileURLWithPath: Sandbox.netctl).deletingLastPathComponent().appendingPathComponent("netctl-cni").path
    /// The CNI runtime over libcni, built by tools/setup (tools/lib/cniclient.sh).
    static let client: String = ProcessInfo.processInfo.environment["NETCTL_CNICLIENT"]
        ?? "/var/cache/netctl-peers/bin/netctl-cniclient"
    static let debianPlugins = "/usr/lib/cni"

    let sandbox: Sandbox
    /// CNI_PATH: a directory holding netctl-cni, then Debian's plugins.
    let pluginDirectory: String
    let cacheDirectory: String

    init(_ sandbox: Sandbox) throws {
        // Loud, not skipped: tools/setup installs all of these.
        for (path, what) in [(CNIHarness.plugin, "netctl-cni (swift build)"),
                             (CNIHarness.client, "netctl-cniclient (tools/setup builds it: tools/lib/cniclient.sh)"),
                             ("\(CNIHarness.debianPlugins)/tuning", "Debian's containernetworking-plugins (tools/setup)"),
                             ("\(CNIHarness.debianPlugins)/bandwidth", "Debian's containernetworking-plugins (tools/setup)")] {
            guard FileManager.default.isExecutableFile(atPath: path) else { throw SandboxError("\(what) is missing: \(path)") }
        }
        self.sandbox = sandbox
        pluginDirectory = sandbox.stateDirectory + "/cni-bin"
        cacheDirectory = sandbox.stateDirectory + "/cni-cache"
        try FileManager.default.createDirectory(atPath: pluginDirectory, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: pluginDirectory + "/netctl-cni", withDestinationPath: CNIHarness.plugin)
    }

    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(stdout.utf8))) as? [String: Any] ?? [:]
        }
        var code: Int? { json["code"] as? Int }
    }

    /// Runs an executable inside the sandbox with extra environment and stdin.
    func run(_ argv: [String], environment: [String: String], stdin: String = "", timeout: Double = 60) throws -> Run {
        let base = "\(sandbox.stateDirectory)/.cni-\(UInt32.random(in: 0...UInt32.max))"
        try stdin.write(toFile: base + ".in", atomically: false, encoding: .utf8)
        let inFD = open(base + ".in", O_RDONLY | O_CLOEXEC)
        let outFD = open(base + ".out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let errFD = open(base + ".err", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer {
            close(inFD); close(outFD); close(errFD)
            for suffix in [".in", ".out", ".err"] { unlink(base + suffix) }
        }
        var env = environment
        env["NETCTL_STATE_DIR"] = env["NETCTL_STATE_DIR"] ?? sandbox.stateDirectory
        let child = try Child.spawn(["/usr/bin/nsenter", "--target", "\(sandbox.holder.pid)", "--net", "--mount", "--"] + argv,
                                    stdin: inFD, stdout: outFD, stderr: errFD, environment: env)
        let status = try child.wait(timeout: timeout)
        return Run(status: status, stdout: slurp(base + ".out"), stderr: slurp(base + ".err"))
    }

    /// The plugin by the specification's protocol: CNI_* variables and the configuration on stdin.
    func plugin(_ command: String, containerID: String? = nil, netns: String? = nil, ifname: String? = "eth0",
                config: String, extra: [String: String] = [:]) throws -> Run {
        var env = ["CNI_COMMAND": command, "CNI_PATH": pluginDirectory]
        env["CNI_CONTAINERID"] = containerID
        env["CNI_NETNS"] = netns
        if containerID != nil { env["CNI_IFNAME"] = ifname }
        env.merge(extra) { $1 }
        return try run([CNIHarness.plugin], environment: env, stdin: config)
    }

    /// Starts the plugin without waiting (for concurrency tests); its stdout goes to `output`.
    func startPlugin(_ command: String, containerID: String, netns: String?, config: String, output: String) throws -> Child {
        let input = output + ".in"
        try config.write(toFile: input, atomically: false, encoding: .utf8)
        let inFD = open(input, O_RDONLY | O_CLOEXEC)
        let outFD = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(inFD); close(outFD) }
        var env = ["CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_IFNAME": "eth0",
                   "CNI_PATH": pluginDirectory, "NETCTL_STATE_DIR": sandbox.stateDirectory]
        env["CNI_NETNS"] = netns
        return try Child.spawn(["/usr/bin/nsenter", "--target", "\(sandbox.holder.pid)", "--net", "--mount", "--", CNIHarness.plugin],
                               stdin: inFD, stdout: outFD, environment: env)
    }

    /// The libcni client: add|check|del a conflist for one container.
    func client(_ command: String, conflist: String, netns: String, containerID: String, ifname: String = "eth0",
                capabilities: String? = nil) throws -> Run {
        var env = ["CNI_PATH": "\(pluginDirectory):\(CNIHarness.debianPlugins)", "CNI_CACHE_DIR": cacheDirectory]
        env["CAP_ARGS"] = capabilities
        return try run([CNIHarness.client, command, conflist, netns, containerID, ifname], environment: env)
    }

    func writeConfig(_ name: String, _ text: String) throws -> String {
        let path = "\(sandbox.stateDirectory)/\(name)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A network configuration in the bridge plugin's format, with netctl-cni as its type.
    static func netConf(version: String = "1.1.0", name: String = "cninet", bridge: String = "cnibr0",
                        subnet: String = "10.88.0.0/24", gateway: String = "10.88.0.1", extra: String = "") -> String {
        """
        {"cniVersion": "\(version)", "name": "\(name)", "type": "netctl-cni", "bridge": "\(bridge)",
         "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true, "mtu": 1500\(extra),
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "\(subnet)", "gateway": "\(gateway)"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]},
         "dns": {"nameservers": ["\(gateway)"], "search": ["cluster.local"]}}
        """
    }
}

/// Host-side leftovers of a CNI attachment: netctl's links, endpoints and map elements.
/// DEL leaves deleting a veth pair to a detached process; this first waits (up to 5 s) for
/// the pairs DEL retired to be gone, so what it returns is what stays.
private func leftovers(_ s: Sandbox) throws -> (links: [String], endpoints: String, elements: String) {
    _ = try waitForRetiredLinks(s)
    let links = try s.hostLinks().keys.filter { $0.hasPrefix("nc") && !$0.hasPrefix("nc-") }.sorted()
    let endpoints = try s.netctlOK("endpoints", "--json").stdout
    let table = try s.nftList("map", "inet", "netctl", "v4_any")
    return (links, endpoints, table)
}

/// Waits (up to 5 s) until no host link is in the `retired` group; returns how long it took.
private func waitForRetiredLinks(_ s: Sandbox) throws -> Double {
    let start = Date()
    while try s.hostLinks().values.contains(where: { $0.group == LinkGroups.retired }) {
        if Date().timeIntervalSince(start) > 5 { break }
        usleep(20_000)
    }
    return Date().timeIntervalSince(start)
}

@Suite("End to end: the CNI plugin", .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct CNIPluginTests {
    static let chain = """
        {"cniVersion": "1.0.0", "name": "chain", "plugins": [
          {"type": "netctl-cni", "bridge": "cnibr0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
           "capabilities": {"portMappings": true},
           "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24", "gateway": "10.88.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]},
           "dns": {"nameservers": ["10.88.0.1"]}},
          {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}, "mac": "02:11:22:33:44:55"},
          {"type": "bandwidth", "ingressRate": 100000000, "ingressBurst": 1000000,
           "egressRate": 100000000, "egressBurst": 1000000}%@
        ]}
        """

    @Test("libcni runs netctl-cni + tuning (sysctl, MAC) + bandwidth: ADD, CHECK, traffic (direct and published), DEL leaves nothing")
    func chainWithTuningAndBandwidth() throws {
        try runChain(extraPlugins: "")
    }

    @Test("firewall and portmap after netctl-cni in the same conflist: ADD, CHECK, traffic, DEL")
    func chainWithFirewallAndPortmap() throws {
        try runChain(extraPlugins: #", {"type": "firewall", "backend": "iptables"}, {"type": "portmap"}"#)
    }

    private func runChain(extraPlugins: String) throws {
        let world = try World()
        let s = world.sandbox
        let cni = try CNIHarness(s)
        let conflist = try cni.writeConfig("chain.conflist", CNIPluginTests.chain.replacingOccurrences(of: "%@", with: extraPlugins))
        let netns = try s.makeNamespaceFile("c1")
        let ports = #"{"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}"#

        let add = try cni.client("add", conflist: conflist, netns: netns, containerID: "c1", capabilities: ports)
        #expect(add.status == 0, "ADD failed: \(add.stdout) \(add.stderr)")
        let result = add.json
        #expect(result["cniVersion"] as? String == "1.0.0")
        let interfaces = result["interfaces"] as? [[String: Any]] ?? []
        #expect(interfaces.count >= 3)
        #expect(interfaces.first?["name"] as? String == "cnibr0")
        let ips = result["ips"] as? [[String: Any]] ?? []
        #expect(ips.count == 1)
        #expect(ips.first?["version"] == nil, "1.x results have no version in ips")
        let index = ips.first?["interface"] as? Int ?? -1
        #expect(index >= 0 && index < interfaces.count && interfaces[index]["name"] as? String == "eth0"
                && interfaces[index]["sandbox"] as? String == netns)
        let address = (ips.first?["address"] as? String ?? "").split(separator: "/").first.map(String.init) ?? ""
        #expect(address.hasPrefix("10.88.0."))
        #expect(ips.first?["gateway"] as? String == "10.88.0.1")
        #expect((result["dns"] as? [String: Any])?["nameservers"] as? [String] == ["10.88.0.1"])

        // tuning ran after us, inside the container.
        let somaxconn = try s.run("/usr/bin/nsenter", ["--net=\(netns)", "cat", "/proc/sys/net/core/somaxconn"])
        #expect(somaxconn.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "512")
        // And set the MAC it was told to; CHECK below must accept that (the chain's result says so).
        let link = try s.run("/usr/bin/nsenter", ["--net=\(netns)", "ip", "-o", "link", "show", "eth0"])
        #expect(link.stdout.contains("link/ether 02:11:22:33:44:55 "), "\(link.stdout)")
        #expect(interfaces[index]["mac"] as? String == "02:11:22:33:44:55")

        let check = try cni.client("check", conflist: conflist, netns: netns, containerID: "c1", capabilities: ports)
        #expect(check.status == 0, "CHECK failed: \(check.stdout) \(check.stderr)")

        // Traffic: host to the container, and a neighbour through the published port.
        let container = try NetworkNamespace(path: s.outsidePath(netns))
        let listener = try Traffic.listen(in: container, port: 80)
        defer { close(listener.fd) }
        #expect(throws: Never.self) { try Traffic.roundTrip(from: s.hostNamespace, to: address, port: 80, listener: listener.fd) }
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: listener.fd) == World.neighbourIP)
        #expect(throws: Never.self) { try Traffic.roundTrip(from: s.hostNamespace, to: "127.0.0.1", port: 8080, listener: listener.fd) }

        let del = try cni.client("del", conflist: conflist, netns: netns, containerID: "c1", capabilities: ports)
        #expect(del.status == 0, "DEL failed: \(del.stdout) \(del.stderr)")
        let after = try leftovers(s)
        #expect(after.links.isEmpty, "host veths left: \(after.links)")
        #expect((try JSONSerialization.jsonObject(with: Data(after.endpoints.utf8)) as? [Any])?.isEmpty == true, "\(after.endpoints)")
        #expect(!after.elements.contains("8080"))
        #expect(try Traffic.tcpBlocked(from: world.neighbour, to: World.hostIP, port: 8080))
        // DEL again: what is gone is gone, and that is success.
        let again = try cni.client("del", conflist: conflist, netns: netns, containerID: "c1", capabilities: ports)
        #expect(again.status == 0, "second DEL failed: \(again.stdout) \(again.stderr)")
    }

    @Test("Results follow the configuration's cniVersion: 0.4.0 has ips[].version, 1.1.0 interface mtu; prevResult is passed on")
    func resultVersions() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].enumerated() {
            let netns = try s.makeNamespaceFile("v\(i)")
            let add = try cni.plugin("ADD", containerID: "v\(i)", netns: netns, config: CNIHarness.netConf(version: version))
            #expect(add.status == 0, "\(version): \(add.stdout) \(add.stderr)")
            let r = add.json
            #expect(r["cniVersion"] as? String == version)
            let ip = (r["ips"] as? [[String: Any]])?.first ?? [:]
            #expect((ip["version"] as? String == "4") == (version == "0.4.0"), "\(version): \(ip)")
            let eth0 = (r["interfaces"] as? [[String: Any]])?.last ?? [:]
            #expect((eth0["mtu"] as? Int == 1500) == (version == "1.1.0"), "\(version): \(eth0)")
            #expect(eth0["sandbox"] as? String == netns)
            #expect((r["dns"] as? [String: Any])?["search"] as? [String] == ["cluster.local"])
            let del = try cni.plugin("DEL", containerID: "v\(i)", netns: netns, config: CNIHarness.netConf(version: version))
            #expect(del.status == 0 && del.stdout.isEmpty, "\(version): \(del.stdout)")
        }

        // After another plugin: its interfaces first, our IP's index shifted past them.
        let netns = try s.makeNamespaceFile("chained")
        let prev = #", "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0", "sandbox": "\#(netns)"}], "ips": [{"address": "192.0.2.9/32", "interface": 0}]}"#
        let add = try cni.plugin("ADD", containerID: "chained", netns: netns, config: CNIHarness.netConf(version: "1.0.0", extra: prev))
        #expect(add.status == 0, "\(add.stdout)")
        let interfaces = add.json["interfaces"] as? [[String: Any]] ?? []
        let ips = add.json["ips"] as? [[String: Any]] ?? []
        #expect(interfaces.first?["name"] as? String == "lo0" && interfaces.count == 4)
        #expect(ips.count == 2 && ips[0]["address"] as? String == "192.0.2.9/32" && ips[1]["interface"] as? Int == 3)

        // Extra routes appear as installed: host bits masked, the next hop filled in.
        let routed = try s.makeNamespaceFile("routed")
        let config = CNIHarness.netConf(version: "1.0.0").replacingOccurrences(
            of: #"[{"dst": "0.0.0.0/0"}]"#, with: #"[{"dst": "0.0.0.0/0"}, {"dst": "10.1.2.3/16"}, {"dst": "10.9.0.0/16", "gw": "10.88.0.7"}]"#)
        let withRoutes = try cni.plugin("ADD", containerID: "routed", netns: routed, config: config)
        #expect(withRoutes.status == 0, "\(withRoutes.stdout)")
        let routes = (withRoutes.json["routes"] as? [[String: Any]] ?? []).map { "\($0["dst"] as? String ?? "") via \($0["gw"] as? String ?? "")" }
        #expect(routes == ["0.0.0.0/0 via 10.88.0.1", "10.1.0.0/16 via 10.88.0.1", "10.9.0.0/16 via 10.88.0.7"], "\(routes)")
        let inside = try s.run("/usr/bin/nsenter", ["--net=\(routed)", "ip", "-4", "route", "show", "10.1.0.0/16"]).stdout
        #expect(inside.contains("10.1.0.0/16 via 10.88.0.1"), "\(inside)")
    }

    @Test("Bad input gets the specification's error JSON and code, and changes nothing")
    func badInput() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        let netns = try s.makeNamespaceFile("bad")
        try s.netctlOK("network", "ls")  // state exists, so snapshots compare like with like
        // A bridge someone else made (as the bridge plugin makes cni0): refused, not taken over.
        #expect(try s.run("/usr/sbin/ip", ["link", "add", "foreignbr", "type", "bridge"]).ok)
        let before = try s.snapshot()
        let forwarding = try s.run("/usr/bin/cat", ["/proc/sys/net/ipv4/ip_forward"]).stdout

        let cases: [(String, CNIHarness.Run, Int)] = [
            ("malformed JSON", try cni.plugin("ADD", containerID: "b1", netns: netns, config: #"{"cniVersion": "1.0.0", "name": "#), 6),
            ("unknown cniVersion", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(version: "9.9.9")), 1),
            ("old cniVersion", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(version: "0.3.1")), 1),
            ("missing CNI_NETNS", try cni.plugin("ADD", containerID: "b1", netns: nil, config: CNIHarness.netConf()), 4),
            ("CNI_NETNS not a namespace", try cni.plugin("ADD", containerID: "b1", netns: "/nonexistent/ns", config: CNIHarness.netConf()), 4),
            ("missing CNI_COMMAND", try cni.run([CNIHarness.plugin], environment: [:], stdin: CNIHarness.netConf()), 4),
            ("rangeStart (unsupported field)", try cni.plugin("ADD", containerID: "b1", netns: netns,
                config: CNIHarness.netConf().replacingOccurrences(of: #""gateway": "10.88.0.1"}"#, with: #""gateway": "10.88.0.1", "rangeStart": "10.88.0.10"}"#)), 2),
            ("a bridge not made by netctl", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(bridge: "foreignbr")), 7),
            ("invalid subnet", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(subnet: "10.88.0.0/33")), 7),
            ("bad port mapping", try cni.plugin("ADD", containerID: "b1", netns: netns,
                config: CNIHarness.netConf(extra: #", "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}"#)), 7),
            // Checked before the configuration's (new) network is made: no bridge, no sysctl.
            ("malformed MAC", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(),
                                             extra: ["CNI_ARGS": "MAC=02:42:zz:00:00:01"]), 7),
            ("IP outside the subnet", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(),
                                                     extra: ["CNI_ARGS": "IP=10.99.0.5"]), 7),
            ("IP is the gateway", try cni.plugin("ADD", containerID: "b1", netns: netns, config: CNIHarness.netConf(),
                                                 extra: ["CNI_ARGS": "IP=10.88.0.1"]), 7),
            ("IPv6 route without next hop on an IPv4 network", try cni.plugin("ADD", containerID: "b1", netns: netns,
                config: CNIHarness.netConf().replacingOccurrences(of: #"[{"dst": "0.0.0.0/0"}]"#, with: #"[{"dst": "0.0.0.0/0"}, {"dst": "fd00:1::/64"}]"#)), 7),
            ("route with a next hop of another family", try cni.plugin("ADD", containerID: "b1", netns: netns,
                config: CNIHarness.netConf().replacingOccurrences(of: #"[{"dst": "0.0.0.0/0"}]"#, with: #"[{"dst": "10.1.0.0/16", "gw": "fd00::1"}]"#)), 7),
        ]
        for (what, run, code) in cases {
            #expect(run.status != 0, "\(what): exit status 0")
            #expect(run.code == code, "\(what): \(run.stdout)")
            #expect(run.json["msg"] is String && !(run.json["msg"] as! String).isEmpty, "\(what): no msg")
            #expect(run.json["cniVersion"] is String, "\(what): no cniVersion")
        }
        #expect(try s.snapshot() == before, "a refused ADD changed something")
        #expect(try s.run("/usr/bin/cat", ["/proc/sys/net/ipv4/ip_forward"]).stdout == forwarding,
                "a refused ADD changed IPv4 forwarding")
    }

    @Test("An exhausted address pool is code 11 (try again later) and leaves nothing behind")
    func poolExhausted() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        // A /30 has one address besides the gateway.
        let config = CNIHarness.netConf(subnet: "10.89.0.0/30", gateway: "10.89.0.1")
        let first = try cni.plugin("ADD", containerID: "p1", netns: try s.makeNamespaceFile("p1"), config: config)
        #expect(first.status == 0, "\(first.stdout)")
        let netns2 = try s.makeNamespaceFile("p2")
        let before = try s.snapshot()
        let second = try cni.plugin("ADD", containerID: "p2", netns: netns2, config: config)
        #expect(second.status != 0 && second.code == 11, "\(second.stdout)")
        #expect((second.json["msg"] as? String ?? "").contains("no free address"))
        #expect(try s.snapshot() == before)
        let inside = try s.run("/usr/bin/nsenter", ["--net=\(netns2)", "ip", "-o", "link"]).stdout
        #expect(!inside.contains("eth0"), "the refused ADD left an interface in the container: \(inside)")
        // Once the first goes, the second fits.
        #expect(try cni.plugin("DEL", containerID: "p1", config: config).status == 0)
        #expect(try cni.plugin("ADD", containerID: "p2", netns: netns2, config: config).status == 0)
    }

    @Test("CHECK: unknown container is code 3, a broken attachment is reported; DEL is idempotent, with or without CNI_NETNS")
    func checkAndDel() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        let config = CNIHarness.netConf()
        let netns = try s.makeNamespaceFile("k1")
        #expect(try cni.plugin("CHECK", containerID: "k1", netns: netns, config: config).code == 3)
        // DEL of what never existed succeeds.
        let never = try cni.plugin("DEL", containerID: "never", netns: netns, config: config)
        #expect(never.status == 0 && never.stdout.isEmpty, "\(never.stdout)")

        let add = try cni.plugin("ADD", containerID: "k1", netns: netns, config: config)
        #expect(add.status == 0)
        let check = try cni.plugin("CHECK", containerID: "k1", netns: netns, config: config)
        #expect(check.status == 0 && check.stdout.isEmpty, "\(check.stdout)")
        // Someone deletes the container's interface: CHECK says so.
        #expect(try s.run("/usr/bin/nsenter", ["--net=\(netns)", "ip", "link", "del", "eth0"]).ok)
        let broken = try cni.plugin("CHECK", containerID: "k1", netns: netns, config: config)
        #expect(broken.status != 0 && broken.code == 102, "\(broken.stdout)")
        // DEL without CNI_NETNS still removes it; then again, nothing to do, success.
        #expect(try cni.plugin("DEL", containerID: "k1", netns: nil, config: config).status == 0)
        #expect(try leftovers(s).links.isEmpty)
        #expect(try cni.plugin("DEL", containerID: "k1", netns: nil, config: config).status == 0)
        // The runtime removed the namespace before DEL (its veth died with it): DEL still succeeds
        // and clears the record and the published port.
        let gone = try s.makeNamespaceFile("k3")
        let ports = #", "runtimeConfig": {"portMappings": [{"hostPort": 9090, "containerPort": 80}]}"#
        #expect(try cni.plugin("ADD", containerID: "k3", netns: gone, config: CNIHarness.netConf(extra: ports)).status == 0)
        #expect(try s.run("/usr/bin/umount", [gone]).ok)
        #expect(try s.run("/usr/bin/rm", [gone]).ok)
        let delGone = try cni.plugin("DEL", containerID: "k3", netns: gone, config: CNIHarness.netConf(extra: ports))
        #expect(delGone.status == 0, "\(delGone.stdout) \(delGone.stderr)")
        #expect(try leftovers(s).links.isEmpty)
        #expect(!(try leftovers(s).elements.contains("9090")))
        // A second ADD of the same container and interface without a DEL is refused.
        #expect(try cni.plugin("ADD", containerID: "k2", netns: try s.makeNamespaceFile("k2"), config: config).status == 0)
        #expect(try cni.plugin("ADD", containerID: "k2", netns: try s.makeNamespaceFile("k2b"), config: config).code == 103)
    }

    @Test("DEL takes the pair out of use and frees the interface name at once; a detached process deletes it; gc deletes what such a process left")
    func delInBackground() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        let config = CNIHarness.netConf()
        let netns = try s.makeNamespaceFile("b1")
        #expect(try cni.plugin("ADD", containerID: "b1", netns: netns, config: config).status == 0)
        let hostEnd = try s.hostLinks().values.first { $0.group == LinkGroups.endpoint }
        #expect(hostEnd != nil)

        #expect(try cni.plugin("DEL", containerID: "b1", netns: netns, config: config).status == 0)
        // At once: the container's eth0 is gone (renamed, down), the host end down and off the bridge.
        let inside = try RouteNetlink.open(in: NetworkNamespace(path: s.outsidePath(netns))).links()
        #expect(!inside.contains { $0.name == "eth0" }, "\(inside.map(\.name))")
        #expect(inside.filter { $0.name != "lo" }.allSatisfy { !$0.isUp && $0.name.hasPrefix("ncrt") }, "\(inside.map(\.name))")
        if let retired = try s.hostLinks()[hostEnd?.name ?? ""] {
            #expect(!retired.isUp && retired.master == nil && retired.group == LinkGroups.retired)
        }
        // So the same container can be added again right away, under the same name.
        let again = try cni.plugin("ADD", containerID: "b1", netns: netns, config: config)
        #expect(again.status == 0, "\(again.stdout)")
        // And the old pair is deleted soon after, by itself.
        let waited = try waitForRetiredLinks(s)
        #expect(waited < 5, "the retired pair was still there after 5 s")
        let names = try RouteNetlink.open(in: NetworkNamespace(path: s.outsidePath(netns))).links().map(\.name)
        #expect(names.sorted() == ["eth0", "lo"], "\(names)")
        #expect(try cni.plugin("DEL", containerID: "b1", netns: netns, config: config).status == 0)
        #expect(try leftovers(s).links.isEmpty)

        // A retired pair whose deleting process never ran (killed, say): gc deletes it.
        let host = try RouteNetlink.open(in: s.hostNamespace)
        try host.perform(.createVeth(VethSpec(name: "ncdeadbeef", peerName: "ncdeadpeer", group: LinkGroups.retired, up: false)))
        #expect(try s.hostLinks()["ncdeadbeef"] != nil)
        try s.netctlOK("gc")  // in the background, as a detach deletes
        #expect(try eventually(5) { try s.hostLinks()["ncdeadbeef"] == nil && s.hostLinks()["ncdeadpeer"] == nil })
    }

    @Test("Parallel ADDs on a network that does not exist yet: one network, distinct addresses; parallel DELs leave nothing")
    func parallel() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        let config = CNIHarness.netConf(name: "par", bridge: "parbr0", subnet: "10.87.0.0/24", gateway: "10.87.0.1")
        let count = 8
        let namespaces = try (0..<count).map { try s.makeNamespaceFile("par\($0)") }
        let outputs = (0..<count).map { "\(s.stateDirectory)/par-\($0).json" }
        let adds = try (0..<count).map { try cni.startPlugin("ADD", containerID: "par\($0)", netns: namespaces[$0], config: config, output: outputs[$0]) }
        let statuses = try adds.map { try $0.wait(timeout: 60) }
        #expect(statuses.allSatisfy { $0 == 0 }, "ADD statuses \(statuses): \(outputs.map(slurp))")
        let addresses = outputs.compactMap { path -> String? in
            let json = (try? JSONSerialization.jsonObject(with: Data(slurp(path).utf8))) as? [String: Any]
            return ((json?["ips"] as? [[String: Any]])?.first?["address"]) as? String
        }
        #expect(addresses.count == count && Set(addresses).count == count, "\(addresses)")
        let networks = try s.netctlOK("network", "ls", "--json").stdout
        #expect(networks.components(separatedBy: "\"par\"").count == 2, "\(networks)")
        let dels = try (0..<count).map { try cni.startPlugin("DEL", containerID: "par\($0)", netns: namespaces[$0], config: config, output: outputs[$0]) }
        let delStatuses = try dels.map { try $0.wait(timeout: 60) }
        #expect(delStatuses.allSatisfy { $0 == 0 }, "DEL statuses \(delStatuses)")
        #expect(try leftovers(s).links.isEmpty)
    }

    @Test("GC removes attachments not in cni.dev/valid-attachments; STATUS reports readiness (and 50 when state cannot open)")
    func gcAndStatus() throws {
        let s = try Sandbox()
        let cni = try CNIHarness(s)
        let config = CNIHarness.netConf()
        for id in ["g1", "g2", "g3"] {
            #expect(try cni.plugin("ADD", containerID: id, netns: try s.makeNamespaceFile(id), config: config).status == 0)
        }
        #expect(try leftovers(s).links.count == 3)
        let keep = #", "cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}, {"containerID": "g3", "ifname": "eth0"}]"#
        let gc = try cni.plugin("GC", config: CNIHarness.netConf(extra: keep))
        #expect(gc.status == 0 && gc.stdout.isEmpty, "\(gc.stdout) \(gc.stderr)")
        #expect(try leftovers(s).links.count == 2)
        #expect(try cni.plugin("CHECK", containerID: "g1", netns: s.stateDirectory + "/ns-g1", config: config).status == 0)
        #expect(try cni.plugin("CHECK", containerID: "g2", netns: s.stateDirectory + "/ns-g2", config: config).code == 3)
        #expect(try cni.plugin("CHECK", containerID: "g3", netns: s.stateDirectory + "/ns-g3", config: config).status == 0)
        // GC needs 1.1.0 (it did not exist before).
        #expect(try cni.plugin("GC", config: CNIHarness.netConf(version: "1.0.0", extra: keep)).code == 1)

        let status = try cni.plugin("STATUS", config: config)
        #expect(status.status == 0 && status.stdout.isEmpty, "\(status.stdout)")
        let down = try cni.plugin("STATUS", config: CNIHarness.netConf(extra: #", "stateDir": "/proc/1/no-such-dir""#))
        #expect(down.status != 0 && down.code == 50, "\(down.stdout)")

        let version = try cni.plugin("VERSION", config: #"{"cniVersion": "1.0.0"}"#)
        #expect(version.json["supportedVersions"] as? [String] == ["0.4.0", "1.0.0", "1.1.0"])
    }
}
