import Foundation
import NetCore
@testable import Netavark
import Primitives
import Testing

/// What Podman 4.3 wrote on netavark's stdin on this machine (captured with a wrapper).
func captured(_ name: String) throws -> [UInt8] {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("captured/\(name).json").path
    return Array(try String(contentsOfFile: path, encoding: .utf8).utf8)
}

/// The options with `edit` applied to their JSON.
func options(_ name: String, _ edit: (JSON) -> JSON = { $0 }) throws -> NetavarkOptions {
    try NetavarkOptions(json: edit(try JSON.parse(try captured(name))))
}

func run(_ command: NetavarkBackend.Command, _ stdin: [UInt8]) -> NetavarkBackend.Output {
    NetavarkBackend.run(command, stdin: stdin, stateDirectory: "/nonexistent/netctl-state",
                        openManager: { _ in throw NetctlError.stateUnavailable(path: "/nonexistent/netctl-state", reason: "test") })
}

@Suite("netavark protocol: Podman's options, refusals and errors, without root")
struct NetavarkTests {
    @Test("Podman 4.3's setup options decode: two networks, static IP and MAC, aliases, port ranges per protocol")
    func decodesCaptured() throws {
        let o = try options("setup-two-networks-ports")
        #expect(o.containerName == "web1" && o.containerID.count == 64)
        #expect(o.networks.map(\.0).sorted() == ["neta", "netb"])
        let neta = try #require(o.networks.first { $0.0 == "neta" }?.1)
        #expect(neta.staticIPs == ["10.89.10.50"] && neta.aliases == ["web", "www", "0295d77fb951"] && neta.interfaceName == "eth0")
        let netb = try #require(o.networks.first { $0.0 == "netb" }?.1)
        #expect(netb.staticMAC == "02:42:ac:11:00:99" && netb.interfaceName == "eth7" && netb.staticIPs == ["10.89.20.2", "fd00:20::2"])
        let info = try #require(o.networkInfo["neta"])
        #expect(info.driver == "bridge" && info.networkInterface == "podman1" && info.dnsEnabled && !info.internal)
        #expect(info.options == ["isolate": "true", "mtu": "1400"])
        #expect(o.networkInfo["netb"]?.subnets == [.init(subnet: "10.89.20.0/24", gateway: "10.89.20.1"), .init(subnet: "fd00:20::/64", gateway: "fd00:20::1")])
        #expect(o.portMappings.count == 4 && o.portMappings[1] == .init(hostIP: "", containerPort: 80, hostPort: 8080, range: 2, protocols: ["tcp"]))
    }

    @Test("every network is planned as netctl makes it: subnets, gateways, bridge, MTU, isolation, owner")
    func plans() throws {
        let o = try options("setup-two-networks-ports")
        let neta = try o.plan("neta", o.networks.first { $0.0 == "neta" }!.1)
        #expect(neta.spec.subnet == "10.89.10.0/24" && neta.spec.gateway == "10.89.10.1" && neta.spec.bridge == "podman1")
        #expect(neta.spec.mtu == 1400 && neta.spec.isolated && neta.spec.dns == true && neta.spec.owner == "podman")
        #expect(neta.ipv4 == "10.89.10.50" && neta.ipv6 == nil && neta.metric == 100)
        let netb = try o.plan("netb", o.networks.first { $0.0 == "netb" }!.1)
        #expect(netb.spec.subnet6 == "fd00:20::/64" && netb.spec.gateway6 == "fd00:20::1" && !netb.spec.isolated && netb.ipv6 == "fd00:20::2")
        #expect(o.endpointName("neta") == "web1.neta")
        // 8080-8081:80-81 for tcp and udp, 127.0.0.1:9090:90, 5353:53/udp: six ports.
        let ports = try o.expandedPortMappings()
        #expect(ports.count == 6)
        #expect(ports.contains(PortMapping(hostPort: 8081, containerPort: 81, proto: .udp)))
        #expect(ports.contains(PortMapping(hostIP: "127.0.0.1", hostPort: 9090, containerPort: 90, proto: .tcp)))

        // An internal network without names has no gateway from Podman (its IPAM gives .1 to
        // a container): netctl's is the last host address, kept off the bridge.
        let noGateway = try options("setup-internal-and-no-dns") { json in
            let netc = json["network_info"]!["netc"]!
            let edited = netc.setting("dns_enabled", .bool(false)).setting("subnets", .array([.object([("subnet", .string("10.89.30.0/24"))])]))
            return json.setting("network_info", json["network_info"]!.setting("netc", edited))
        }
        let netc = try noGateway.plan("netc", noGateway.networks.first { $0.0 == "netc" }!.1)
        #expect(netc.spec.gateway == "10.89.30.254" && netc.spec.gatewayOnBridge == false && netc.spec.internal)
    }

    @Test("what netctl does not serve is refused, naming the network and what to do",
          arguments: [
            ("driver", JSON.string("macvlan"), "uses driver macvlan"),
            ("ipam_options", JSON.object([("driver", .string("none"))]), "ipam driver none"),
            ("options", JSON.object([("vlan", .string("5"))]), "option vlan"),
            ("options", JSON.object([("mtu", .string("big"))]), "unable to parse option \"mtu\""),
            ("subnets", JSON.array([.object([("subnet", .string("10.1.0.0/24"))]), .object([("subnet", .string("10.2.0.0/24"))])]),
             "2 IPv4 and 0 IPv6 subnets"),
          ])
    func refusals(_ key: String, _ value: JSON, _ message: String) throws {
        let o = try options("setup-default-network") { json in
            json.setting("network_info", json["network_info"]!.setting("podman", json["network_info"]!["podman"]!.setting(key, value)))
        }
        #expect { _ = try o.plan("podman", o.networks[0].1) } throws: { "\($0)".contains(message) && "\($0)".contains("podman") }
    }

    @Test("errors are one JSON object with only `error`, on stdout, status 1; the namespace is checked first")
    func errors() throws {
        let missingNamespace = run(.setup(netns: "/nonexistent/netns"), try captured("setup-default-network"))
        #expect(missingNamespace.status == 1)
        let parsed = try JSON.parse(missingNamespace.stdout)
        #expect(parsed.object?.map(\.0) == ["error"] && parsed["error"]?.string?.contains("/nonexistent/netns") == true)
        #expect(missingNamespace.stdout.hasSuffix("\n") && !missingNamespace.stdout.dropLast().contains("\n"))
        for (stdin, message) in [("", "failed to load network options"), ("{", "failed to load network options"),
                                 (#"{"container_id":"x"}"#, "missing field `container_name`"),
                                 (#"{"container_id":"x","container_name":"y","networks":{},"network_info":{},"port_mappings":[{"host_ip":"","container_port":80,"host_port":99999,"range":1,"protocol":"tcp"}]}"#,
                                  "not a port number")] {
            let output = run(.setup(netns: "/proc/self/ns/net"), Array(stdin.utf8))
            let error = try JSON.parse(output.stdout)["error"]?.string ?? ""
            #expect(output.status == 1 && error.contains(message), "\(output.stdout)")
        }
        // NetCore's refusals in Podman's words.
        let taken = NetavarkError.message(NetctlError.addressTaken(address: "10.88.0.2", network: "podman", endpoint: "web.podman"))
        #expect(taken.contains("10.88.0.2") && taken.contains("netctl endpoints"), "\(taken)")
    }

    @Test("version: netavark's fields")
    func version() throws {
        let output = run(.version, [])
        let json = try JSON.parse(output.stdout)
        #expect(output.status == 0 && json["version"]?.string == "1.4.0" && json["commit"] != nil && json["target"] != nil)
    }
}
