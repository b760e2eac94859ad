import Glibc
@testable import NameService
import Primitives
import Testing

@Suite("resolv.conf: the host's, and what containers get")
struct ResolverConfigurationTests {
    @Test("for containers: loopback servers dropped (resolved's upstream ones instead), search and options kept")
    func forContainers() throws {
        let directory = try makeTemporaryDirectory("/tmp/netctl-resolv-")
        defer { try? removeTree(directory) }
        try writeFile(directory + "/host", "# stub\nnameserver 127.0.0.53\nnameserver\t::1\nsearch corp.example\noptions edns0 trust-ad\n")
        try writeFile(directory + "/resolved", "nameserver 10.1.1.1\nnameserver 127.0.0.1\nsearch other.example\n")
        #expect(ResolverConfiguration.forContainers(file: directory + "/host", resolvedFile: directory + "/resolved").text
                == "nameserver 10.1.1.1\nsearch corp.example\noptions edns0 trust-ad\n")
        try writeFile(directory + "/host", "nameserver 192.0.2.53\nsearch corp.example\n")
        #expect(ResolverConfiguration.forContainers(file: directory + "/host", resolvedFile: directory + "/resolved").text
                == "nameserver 192.0.2.53\nsearch corp.example\n")
    }

    @Test("for the name server: the host's servers, resolved's stub replaced by its upstreams, other loopback servers kept")
    func forTheServer() throws {
        let directory = try makeTemporaryDirectory("/tmp/netctl-resolv-")
        defer { try? removeTree(directory) }
        try writeFile(directory + "/host", "nameserver 127.0.0.53\nnameserver 127.0.0.1\n")
        try writeFile(directory + "/resolved", "nameserver 10.1.1.1\n")
        #expect(ResolverConfiguration.host(file: directory + "/host", resolvedFile: directory + "/resolved").nameservers
                == ["127.0.0.1", "10.1.1.1"])
        #expect(ResolverConfiguration.host(file: directory + "/missing").nameservers.isEmpty)
        #expect(ResolverConfiguration.parse("domain a.example\nsearch b.example c.example\n;comment\noptions ndots:2\n")
                == ResolverConfiguration(search: ["b.example", "c.example"], options: ["ndots:2"]))
    }
}
