import Testing
@testable import NetCore
import TestSupport

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
        ("[]:1:1", "empty host address"),
        ("0.0.80.0:2:1", "cannot be a host's own address"),
        ("224.0.0.1:80:80", "cannot be a host's own address"),
        ("255.255.255.255:80:80", "cannot be a host's own address"),
        ("[ff02::1]:80:80", "cannot be a host's own address"),
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

@Suite("Published ports: clashes, matching, host port choice")
struct PublishedPortTests {
    @Test("host scopes clash when some address is in both")
    func scopes() {
        let v4 = HostScope("192.0.2.1"), v6 = HostScope("2001:db8::1")
        #expect(HostScope("").overlaps(v4) && HostScope("").overlaps(v6) && v4.overlaps(HostScope("")))
        #expect(HostScope("0.0.0.0").overlaps(v4) && !HostScope("0.0.0.0").overlaps(v6))
        #expect(HostScope("::").overlaps(v6) && !HostScope("::").overlaps(HostScope("0.0.0.0")))
        #expect(!v4.overlaps(HostScope("192.0.2.2")) && v4.overlaps(HostScope("192.0.2.1")))
    }

    @Test("port rm specs match by container port and protocol, and host address/port when given")
    func matching() throws {
        let port = PublishedPort(endpoint: "web1", proto: .udp, hostIP: "127.0.0.1", hostPort: 5353, containerPort: 53)
        #expect(port.matches(try PortMapping.parse("53/udp")[0]))
        #expect(port.matches(try PortMapping.parse("127.0.0.1:5353:53/udp")[0]))
        #expect(port.matches(try PortMapping.parse("5300-5400:53/udp")[0]))
        #expect(!port.matches(try PortMapping.parse("53")[0]))
        #expect(!port.matches(try PortMapping.parse("5354:53/udp")[0]))
        #expect(!port.matches(try PortMapping.parse("10.0.0.1:5353:53/udp")[0]))
        #expect(port.description == "53/udp -> 127.0.0.1:5353")
        let all = PublishedPort(endpoint: "web1", proto: .tcp, hostIP: "", hostPort: 8080, containerPort: 80, servesIPv6: false)
        #expect(all.description == "80/tcp -> 0.0.0.0:8080")
    }

    @Test("the first free port from the start, wrapping around the range")
    func choice() {
        #expect(HostPorts.choose(in: 100...104, start: 103, isFree: { $0 != 103 && $0 != 104 }) == 100)
        #expect(HostPorts.choose(in: 100...104, start: 100, isFree: { _ in false }) == nil)
        #expect(HostPorts.choose(in: 65535...65535, start: 65535, isFree: { _ in true }) == 65535)
        let range = HostPorts.ephemeralRange()
        #expect(range.lowerBound >= 1024 && range.lowerBound <= range.upperBound)
    }
}
