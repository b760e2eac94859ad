import Testing
@testable import NetCore

@Suite("Docker -p grammar")
struct PortSpecTests {
    typealias M = PortMapping

    @Test("accepted forms", arguments: [
        ("80", [M(containerPort: 80)]),
        ("8080:80", [M(hostPort: 8080, containerPort: 80)]),
        ("8080:80/udp", [M(hostPort: 8080, containerPort: 80, proto: .udp)]),
        ("53/UDP", [M(containerPort: 53, proto: .udp)]),
        ("9/sctp", [M(containerPort: 9, proto: .sctp)]),
        ("80/", [M(containerPort: 80)]),
        ("127.0.0.1:8080:80", [M(hostIP: "127.0.0.1", hostPort: 8080, containerPort: 80)]),
        ("127.0.0.1::80", [M(hostIP: "127.0.0.1", containerPort: 80)]),
        ("[::1]:8080:80", [M(hostIP: "::1", hostPort: 8080, containerPort: 80)]),
        ("[::1]::80", [M(hostIP: "::1", containerPort: 80)]),
        ("::1:8080:80", [M(hostIP: "::1", hostPort: 8080, containerPort: 80)]),
        ("[fd00:0::5]:1:2/udp", [M(hostIP: "fd00::5", hostPort: 1, containerPort: 2, proto: .udp)]),
        ("8000-8001:80-81", [M(hostPort: 8000, containerPort: 80), M(hostPort: 8001, containerPort: 81)]),
        ("8000-8010:80", [M(hostPort: 8000, hostPortEnd: 8010, containerPort: 80)]),
        ("80-81", [M(containerPort: 80), M(containerPort: 81)]),
        ("65535:65535", [M(hostPort: 65535, containerPort: 65535)]),
        (":80", [M(containerPort: 80)]),
        (":8080:80", [M(hostPort: 8080, containerPort: 80)]),
    ] as [(String, [M])])
    func accepted(_ spec: String, _ expected: [M]) throws {
        #expect(try PortMapping.parse(spec) == expected)
    }

    @Test("refused with the reason", arguments: [
        ("", "no container port"),
        ("8080:", "no container port"),
        ("localhost:8080:80", "is not an IP address (host names are not accepted)"),
        ("1.2.3.4.5:80:80", "is not an IP address"),
        ("0:80", "host port \"0\" is not a port"),
        ("8080:65536", "container port \"65536\" is not a port"),
        ("8080:http", "container port \"http\" is not a port"),
        ("8080:-80", "is not a port"),
        ("8080:80/icmp", "unknown protocol \"icmp\""),
        ("90-80:80", "host port range 90-80 is reversed"),
        ("8000-8002:80-81", "differ in length"),
        ("[::1:80:80", "unclosed '['"),
        ("[::1]80:80", "expected ':' after the bracketed host address"),
        ("8080:+80", "is not a port"),
    ] as [(String, String)])
    func refused(_ spec: String, _ reason: String) {
        do {
            _ = try PortMapping.parse(spec)
            Issue.record("\(spec) was accepted")
        } catch {
            #expect("\(error)".contains(reason), "\(error)")
            #expect("\(error)".hasPrefix("invalid port mapping \"\(spec)\""))
        }
    }
}
