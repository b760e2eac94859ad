import Foundation
import CNI
import NetCore
import Primitives
import Testing

/// The plugin's protocol side, without root: JSON, configuration, results, error codes.
/// `run` is given a manager opener that fails the test if called: everything here must be
/// refused (or answered) before state or the kernel is touched.
private func run(_ env: [String: String], _ stdin: String) -> CNIPlugin.Output {
    CNIPlugin.run(environment: env, stdin: Array(stdin.utf8)) { dir in
        Issue.record("state in \(dir) was opened for a request that should not get that far")
        throw CNIError(.internalFailure, "not in unit tests")
    }
}

private func parsed(_ output: CNIPlugin.Output) -> JSON { (try? JSON.parse(output.stdout)) ?? .null }

private let addEnv = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1", "CNI_IFNAME": "eth0"]

private func config(_ version: String = "1.0.0", _ extra: String = "") -> String {
    """
    {"cniVersion": "\(version)", "name": "net1", "type": "netctl-cni", "bridge": "br9", "isGateway": true,
     "ipMasq": true, "hairpinMode": true, "isDefaultGateway": true, "mtu": 1400\(extra),
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}], [{"subnet": "fd00:9::/64"}]],
              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.50.0/24", "gw": "10.9.0.254"}]},
     "dns": {"nameservers": ["10.9.0.1"], "domain": "example", "search": ["a", "b"], "options": ["ndots:2"]}}
    """
}

@Suite("CNI configuration")
struct CNIConfigTests {
    @Test("Reads the bridge plugin's keys and a host-local ipam section, IPv4 and IPv6 ranges, routes, dns")
    func bridgeKeys() throws {
        let (json, version) = try BridgeConfig.decodeVersion(Array(config().utf8))
        let c = try BridgeConfig(json, version: version, environment: nil, full: true)
        #expect(c.name == "net1" && c.bridge == "br9" && c.mtu == 1400)
        #expect(c.isGateway && c.ipMasq && c.hairpinMode && c.isDefaultGateway)
        #expect(c.subnet == "10.9.0.0/24" && c.gateway == "10.9.0.1")
        #expect(c.subnet6 == "fd00:9::/64" && c.gateway6 == nil)
        #expect(c.routes == [StaticRoute(destination: "0.0.0.0/0"), StaticRoute(destination: "192.168.50.0/24", gateway: "10.9.0.254")])
        #expect(c.dns?["search"]?.array?.count == 2)
    }

    @Test("Defaults: bridge cni0, the legacy ipam subnet/gateway form, no ipam at all")
    func defaults() throws {
        let legacy = #"{"cniVersion":"0.4.0","name":"n","type":"netctl-cni","ipam":{"type":"host-local","subnet":"10.3.0.0/16","gateway":"10.3.0.9"}}"#
        let c = try BridgeConfig(try JSON.parse(legacy), version: "0.4.0", environment: nil, full: true)
        #expect(c.bridge == "cni0" && c.subnet == "10.3.0.0/16" && c.gateway == "10.3.0.9" && c.mtu == nil)
        let bare = try BridgeConfig(try JSON.parse(#"{"cniVersion":"1.0.0","name":"n"}"#), version: "1.0.0", environment: nil, full: true)
        #expect(bare.subnet == nil && bare.routes.isEmpty && bare.portMappings.isEmpty)
    }

    @Test("portMappings, a requested IP and MAC come from runtimeConfig, args or CNI_ARGS")
    func capabilities() throws {
        let rc = #", "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}], "ips": ["10.9.0.7/24"], "mac": "02:00:00:00:00:07"}"#
        let c = try BridgeConfig(try JSON.parse(config("1.0.0", rc)), version: "1.0.0", environment: nil, full: true)
        #expect(c.portMappings == [PortMapping(hostPort: 8080, containerPort: 80, proto: .tcp),
                                   PortMapping(hostIP: "127.0.0.1", hostPort: 5353, containerPort: 53, proto: .udp)])
        #expect(c.ip == "10.9.0.7" && c.mac == "02:00:00:00:00:07")
        let args = #", "args": {"cni": {"ips": ["10.9.0.8"]}}"#
        #expect(try BridgeConfig(try JSON.parse(config("1.0.0", args)), version: "1.0.0", environment: nil, full: true).ip == "10.9.0.8")
        let env = try CNIEnvironment(addEnv.merging(["CNI_ARGS": "IgnoreUnknown=1;IP=10.9.0.9;MAC=02:00:00:00:00:09"]) { $1 })
        let fromArgs = try BridgeConfig(try JSON.parse(config()), version: "1.0.0", environment: env, full: true)
        #expect(fromArgs.ip == "10.9.0.9" && fromArgs.mac == "02:00:00:00:00:09")
    }

    @Test("DEL reads only what it needs: a bad key ADD would refuse does not block a clean-up")
    func delIsLenient() throws {
        let text = #"{"cniVersion":"1.0.0","name":"n","bridge":"a/b","mtu":"big","ipam":{"type":"dhcp"}}"#
        let c = try BridgeConfig(try JSON.parse(text), version: "1.0.0", environment: nil, full: false)
        #expect(c.name == "n")
        #expect(throws: CNIError.self) { try BridgeConfig(try JSON.parse(text), version: "1.0.0", environment: nil, full: true) }
    }

    @Test("GC's valid attachments (and libcni's older key)")
    func validAttachments() throws {
        let text = #"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}"#
        let c = try BridgeConfig(try JSON.parse(text), version: "1.1.0", environment: nil, full: false)
        #expect(c.validAttachments.map { "\($0.containerID)/\($0.ifname)" } == ["a/eth0", "b/net1"])
    }

    @Test("What the plugin cannot honour is code 2; what is malformed is code 7", arguments: [
        (#", "vlan": 100"#, 2),
        (#", "mtu": 20"#, 7),
        (#", "isGateway": "yes""#, 7),
        (#", "runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}"#, 7),
        (#", "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}"#, 7),
        (#", "runtimeConfig": {"ips": ["fd00:9::5"]}"#, 2),
        (#", "bridge": "a/b""#, 7),
    ])
    func refusals(_ extra: String, _ code: Int) {
        // Later keys win, so these override the base configuration's.
        let text = config("1.0.0", extra).replacingOccurrences(of: #""bridge": "br9", "#, with: "")
        let output = run(addEnv, text)
        #expect(output.status == 1)
        #expect(parsed(output)["code"]?.int == code, "\(output.stdout)")
    }

    @Test("Unsupported ipam: another type, rangeStart, two ranges in a set, IPv6 only")
    func ipamRefusals() {
        for ipam in [#"{"type":"dhcp"}"#,
                     #"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10"}]]}"#,
                     #"{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}]]}"#,
                     #"{"type":"host-local","ranges":[[{"subnet":"fd00::/64"}]]}"#] {
            let output = run(addEnv, #"{"cniVersion":"1.0.0","name":"n","ipam":\#(ipam)}"#)
            #expect(parsed(output)["code"]?.int == 2, "\(ipam): \(output.stdout)")
        }
    }
}

@Suite("CNI protocol")
struct CNIProtocolTests {
    @Test("Malformed JSON is code 6, with the configuration's version unknown so ours is used")
    func malformed() {
        let output = run(addEnv, #"{"cniVersion": "1.0.0", "name""#)
        #expect(output.status == 1)
        #expect(parsed(output)["code"]?.int == 6)
        #expect(parsed(output)["cniVersion"]?.string == "1.1.0")
        #expect(parsed(output)["msg"]?.string?.isEmpty == false)
        #expect(parsed(run(addEnv, "[1]"))["code"]?.int == 6)
    }

    @Test("Unknown or unsupported cniVersion is code 1; a missing one code 7", arguments: ["0.3.1", "0.1.0", "2.0.0", "1.0", "banana"])
    func versions(_ version: String) {
        let output = run(addEnv, config(version))
        #expect(parsed(output)["code"]?.int == 1, "\(output.stdout)")
        #expect(parsed(output)["msg"]?.string?.contains(version) == true)
    }

    @Test("Missing cniVersion")
    func missingVersion() {
        #expect(parsed(run(addEnv, #"{"name":"n"}"#))["code"]?.int == 7)
    }

    @Test("Environment: missing or bad CNI_* variables are code 4 (per command)")
    func environment() {
        var env = addEnv
        env["CNI_NETNS"] = nil
        #expect(parsed(run(env, config()))["code"]?.int == 4)
        #expect(parsed(run(env.merging(["CNI_COMMAND": "CHECK"]) { $1 }, config()))["code"]?.int == 4)
        #expect(parsed(run([:], config()))["code"]?.int == 4)
        #expect(parsed(run(addEnv.merging(["CNI_COMMAND": "FROB"]) { $1 }, config()))["code"]?.int == 4)
        #expect(parsed(run(addEnv.merging(["CNI_IFNAME": "this-name-is-too-long"]) { $1 }, config()))["code"]?.int == 4)
        #expect(parsed(run(addEnv.merging(["CNI_CONTAINERID": "-bad"]) { $1 }, config()))["code"]?.int == 4)
        #expect(parsed(run(addEnv.merging(["CNI_NETNS": "relative/path"]) { $1 }, config()))["code"]?.int == 4)
        #expect(parsed(run(addEnv.merging(["CNI_ARGS": "novalue"]) { $1 }, config()))["code"]?.int == 4)
        // DEL needs no CNI_NETNS: it gets past the environment (to state, which this test refuses).
        #expect(throws: Never.self) { try CNIEnvironment(["CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"]) }
    }

    @Test("Inputs past sane sizes, the plugin's own namespace, clashing mappings: refused before anything is opened, echoed bounded")
    func hostileInput() {
        let own = parsed(run(addEnv.merging(["CNI_NETNS": "/proc/self/ns/net"]) { $1 }, config()))
        #expect(own["code"]?.int == 4 && own["msg"]?.string?.contains("the plugin's own (the host's) network namespace") == true)
        let longID = String(repeating: "a", count: 10_000)
        let id = parsed(run(addEnv.merging(["CNI_CONTAINERID": longID]) { $1 }, config()))
        #expect(id["code"]?.int == 4)
        #expect((id["msg"]?.string?.utf8.count ?? .max) < 300, "the message echoes at most a bounded prefix of the ID")
        let big = parsed(run(addEnv, config("1.0.0", ", \"padding\": \"" + String(repeating: "x", count: 1 << 20) + "\"")))
        #expect(big["code"]?.int == 6 && big["msg"]?.string?.contains("over 1048576 bytes") == true)
        func mappings(_ list: [(Int, Int)]) -> String {
            ", \"runtimeConfig\": {\"portMappings\": [" + list.map { "{\"hostPort\": \($0.0), \"containerPort\": \($0.1)}" }
                .joined(separator: ",") + "]}"
        }
        // (Through stdin, its size bounds them first; the library checks the count too.)
        #expect {
            try BridgeConfig(JSON.parse(Array(config("1.0.0", mappings(Array(repeating: (8080, 80), count: 70_000))).utf8)),
                             version: "1.0.0", environment: nil, full: true)
        } throws: { ($0 as? CNIError)?.code == 7 && "\($0)".contains("more than there are ports") }
        let clash = parsed(run(addEnv, config("1.0.0", mappings([(8080, 80), (8080, 81)]))))
        #expect(clash["code"]?.int == 7 && clash["msg"]?.string?.contains("mapped to both 80 and 81") == true)
        // The same mapping twice is one mapping.
        let twice = try? BridgeConfig(JSON.parse(Array(config("1.0.0", mappings([(8080, 80), (8080, 80)])).utf8)), version: "1.0.0",
                                      environment: nil, full: true)
        #expect(twice?.portMappings.count == 1)
    }

    @Test("VERSION lists 0.4.0, 1.0.0 and 1.1.0 and touches nothing")
    func version() {
        let output = run(["CNI_COMMAND": "VERSION"], #"{"cniVersion":"1.0.0"}"#)
        #expect(output.status == 0)
        #expect(parsed(output)["supportedVersions"] == .array([.string("0.4.0"), .string("1.0.0"), .string("1.1.0")]))
        #expect(parsed(output)["cniVersion"]?.string == "1.0.0")
        #expect(parsed(run(["CNI_COMMAND": "VERSION"], ""))["cniVersion"]?.string == "1.1.0")
    }

    @Test("STATUS and GC exist from 1.1.0 on: code 1 for older configurations")
    func newCommands() {
        for command in ["STATUS", "GC"] {
            #expect(parsed(run(["CNI_COMMAND": command], config("1.0.0")))["code"]?.int == 1)
        }
    }

    @Test("State that cannot be opened: STATUS says 50 (not available), other commands 100")
    func unavailable() {
        let failing: (String) throws -> NetworkManager = { _ in throw CNIError(.internalFailure, "no state") }
        let status = CNIPlugin.run(environment: ["CNI_COMMAND": "STATUS"], stdin: Array(config("1.1.0").utf8), openManager: failing)
        #expect(status.status == 1 && parsed(status)["code"]?.int == 50)
        let add = CNIPlugin.run(environment: addEnv, stdin: Array(config("1.1.0").utf8), openManager: failing)
        #expect(parsed(add)["code"]?.int == 100)
        #expect(parsed(add)["cniVersion"]?.string == "1.1.0")
    }

    @Test("NetCore's errors map to CNI codes")
    func errorCodes() {
        #expect(CNIPlugin.cniError(NetctlError.addressPoolExhausted(network: "n", subnet: "10.0.0.0/30")).code == 11)
        #expect(CNIPlugin.cniError(NetctlError.endpointNotActive("e")).code == 11)
        #expect(CNIPlugin.cniError(NetctlError.portInUse(port: "80/tcp", hostIP: "")).code == 101)
        #expect(CNIPlugin.cniError(NetctlError.subnetOverlapsRoute(subnet: "a", route: "b")).code == 7)
        #expect(CNIPlugin.cniError(NetctlError.bridgeNotOurs("cni0")).code == 7)
        #expect(CNIPlugin.cniError(NetctlError.bridgeNotOurs("cni0")).details.contains("\"bridge\""))
        #expect(CNIPlugin.cniError(NetctlError.endpointBroken("e", reason: "r")).code == 102)
        #expect(CNIPlugin.cniError(NetctlError.state("disk full")).code == 100)
        #expect(CNIPlugin.cniError(NetctlError.addressPoolExhausted(network: "n", subnet: "s")).msg.contains("no free address"))
        // Advice in configuration terms, never the CLI's flags or commands.
        let advice: [NetctlError] = [
            .invalidAddress("10.9.9.9", field: .ip, problem: .outside(subnet: "10.88.0.0/24")),
            .addressTaken(address: "10.88.0.5", network: "n", endpoint: "cni-1"),
            .portAlreadyPublished(port: "8080/tcp", hostIP: "", endpoint: "cni-2"),
            .subnetOverlapsNetwork(subnet: "10.88.0.0/24", network: "m", other: "10.88.0.0/16"),
            .interfaceExistsInNamespace(interface: "eth0", namespace: "/run/netns/c1"),
            .needsProxy(spec: "::1 -> 80/tcp", need: .ipv6Loopback),
            .invalidSubnet("10.0.0.0/24", field: .subnet6, problem: .wrongFamily),
            .invalidAddress("10.0.0.1", field: .gateway6, problem: .needsSubnet),
            .endpointBroken("cni-3", reason: "bridge cni9 is missing"),
            .defaultRouteExists(namespace: "/run/netns/c1", gateway: "10.88.0.1"),
        ]
        for error in advice {
            let text = CNIPlugin.cniError(error).msg + " " + CNIPlugin.cniError(error).details
            #expect(!text.contains("--") && !text.contains("netctl port"), "\(text)")
        }
        #expect(CNIPlugin.cniError(advice[0]).msg.contains("the requested IP is outside the subnet"))
        #expect(CNIPlugin.cniError(advice[4]).code == 4)  // the environment (CNI_IFNAME) names a taken interface
    }

    @Test("Endpoint names are stable per (network, container, interface) and valid netctl names")
    func endpointNames() {
        let a = CNIPlugin.endpointName(network: "n", containerID: String(repeating: "f", count: 64), ifname: "eth0")
        #expect(a == CNIPlugin.endpointName(network: "n", containerID: String(repeating: "f", count: 64), ifname: "eth0"))
        #expect(a != CNIPlugin.endpointName(network: "n", containerID: String(repeating: "f", count: 64), ifname: "net1"))
        #expect(a != CNIPlugin.endpointName(network: "m", containerID: String(repeating: "f", count: 64), ifname: "eth0"))
        #expect(a.hasPrefix("cni-") && a.count == 20)
    }
}

@Suite("CNI results")
struct CNIResultTests {
    let result = CNIResult(
        interfaces: [.init(name: "br9", mac: "aa:aa:aa:aa:aa:aa", mtu: 1400), .init(name: "ncx", mac: "bb:bb:bb:bb:bb:bb", mtu: 1400),
                     .init(name: "eth0", mac: "02:6e:0a:09:00:02", mtu: 1400, sandbox: "/run/netns/c1")],
        ips: [.init(address: "10.9.0.2/24", gateway: "10.9.0.1", interface: 2), .init(address: "fd00:9::2/64", gateway: "fd00:9::1", interface: 2)],
        routes: [.init(dst: "0.0.0.0/0", gw: "10.9.0.1")],
        dns: try! JSON.parse(#"{"nameservers":["10.9.0.1"]}"#))

    @Test("0.4.0 has ips[].version; 1.0.0 does not; 1.1.0 adds interface mtu")
    func perVersion() throws {
        let v04 = result.json(cniVersion: "0.4.0")
        #expect(v04.text.hasPrefix(#"{"cniVersion":"0.4.0","interfaces":"#))
        #expect(v04["ips"]?.array?.map { $0["version"]?.string } == ["4", "6"])
        #expect(v04["interfaces"]?.array?[0]["mtu"] == nil)
        let v10 = result.json(cniVersion: "1.0.0")
        #expect(v10["ips"]?.array?.allSatisfy { $0["version"] == nil } == true)
        #expect(v10["interfaces"]?.array?[2]["mtu"] == nil)
        #expect(v10["interfaces"]?.array?[2]["sandbox"]?.string == "/run/netns/c1")
        let v11 = result.json(cniVersion: "1.1.0")
        #expect(v11["interfaces"]?.array?[2]["mtu"]?.int == 1400)
        #expect(v11["dns"]?["nameservers"]?.array?.first?.string == "10.9.0.1")
        // And each reads back as it was written.
        #expect(try CNIResult(v11) == result)
    }

    @Test("After a prevResult: its interfaces, IPs and routes first, our interface indices shifted; its DNS kept if we have none")
    func chained() throws {
        let previous = try CNIResult(try JSON.parse(#"{"cniVersion":"1.0.0","interfaces":[{"name":"a","socketPath":"/s"},{"name":"b"}],"ips":[{"address":"192.0.2.1/32","interface":1}],"routes":[{"dst":"192.0.2.0/24"}],"dns":{"domain":"prev"}}"#))
        let merged = result.appended(to: previous)
        #expect(merged.interfaces.map(\.name) == ["a", "b", "br9", "ncx", "eth0"])
        #expect(merged.ips.map(\.interface) == [1, 4, 4])
        #expect(merged.routes.map(\.dst) == ["192.0.2.0/24", "0.0.0.0/0"])
        #expect(merged.dns?["nameservers"] != nil)
        var noDNS = result
        noDNS.dns = nil
        #expect(noDNS.appended(to: previous).dns?["domain"]?.string == "prev")
        // socketPath is a 1.1.0 field: passed on there, dropped for 1.0.0.
        #expect(merged.json(cniVersion: "1.1.0")["interfaces"]?.array?[0]["socketPath"]?.string == "/s")
        #expect(merged.json(cniVersion: "1.0.0")["interfaces"]?.array?[0]["socketPath"] == nil)
    }

    @Test("Error JSON: cniVersion, code, msg, details")
    func errorJSON() {
        let e = CNIError(.tryAgainLater, "no free address", details: "delete containers")
        #expect(e.json(cniVersion: "1.0.0").text == #"{"cniVersion":"1.0.0","code":11,"msg":"no free address","details":"delete containers"}"#)
        #expect(CNIError(.unknownContainer, "x").json(cniVersion: "0.4.0").text == #"{"cniVersion":"0.4.0","code":3,"msg":"x"}"#)
    }
}
