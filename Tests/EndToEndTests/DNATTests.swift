import Firewall
import Foundation
import Glibc
import Netlink
import Primitives
import Testing

@Suite("End to end: the nftables DNAT table", .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct DNATTests {

    @Test("the generated table, as nft lists it, matches the golden file; a mapping carries real traffic")
    func goldenAndTraffic() throws {
        // The table is written by hand here: no agent to put state's back.
        let sandbox = try Sandbox(agent: false)
        try sandbox.netctlOK(["network", "create", "web", "--subnet", "10.90.0.0/24"])
        try sandbox.netctlOK(["attach", "web", "--new", "c1", "--name", "c1"])
        let container = try NetworkNamespace(path: sandbox.outsidePath(sandbox.stateDirectory + "/netns/c1"))
        let listener = try Traffic.listen(in: container, port: 80)  // its own namespace: a fixed port is safe
        defer { close(listener.fd) }

        let nft = try sandbox.hostNamespace.run { try NftClient() }
        let mappings = [
            DNATMapping(hostIP: nil, proto: .tcp, hostPort: 18080, containerIP: IPAddress("10.90.0.2")!, containerPort: listener.port),
            DNATMapping(hostIP: IPAddress("10.90.0.1")!, proto: .udp, hostPort: 5353, containerIP: IPAddress("10.90.0.2")!, containerPort: 53),
            DNATMapping(hostIP: IPAddress("fd00::1")!, proto: .tcp, hostPort: 443, containerIP: IPAddress("fd00::2")!, containerPort: 8443),
        ]
        try nft.commit(PublishRuleset.rebuild(networks: [BridgeNetwork(bridge: "nc-web", subnet: IPNetwork("10.90.0.0/24")!)], mappings: mappings), "installing the netctl table")
        // Rebuilding again replaces the table atomically rather than failing or doubling it.
        try nft.commit(PublishRuleset.rebuild(networks: [BridgeNetwork(bridge: "nc-web", subnet: IPNetwork("10.90.0.0/24")!)], mappings: mappings), "reinstalling the netctl table")

        let listed = try sandbox.run("/usr/sbin/nft", ["list", "table", "inet", "netctl"])
        #expect(listed.ok, "\(listed.stderr)")
        try Golden.expect(listed.stdout, matches: "publish-table.nft")

        // Host -> its own address on the published port: the output hook DNATs to the container.
        #expect(try Traffic.roundTrip(from: sandbox.hostNamespace, to: "10.90.0.1", port: 18080, listener: listener.fd) == "10.90.0.1")

        // Removing a mapping touches only its element.
        var batch = NftBatch()
        PublishRuleset.remove([mappings[1]], to: &batch)
        try nft.commit(batch, "unpublishing 5353/udp")
        let after = try sandbox.run("/usr/sbin/nft", ["list", "map", "inet", "netctl", "v4_host"]).stdout
        #expect(!after.contains("5353"))
        #expect(try sandbox.run("/usr/sbin/nft", ["list", "map", "inet", "netctl", "v4_any"]).stdout.contains("tcp . 18080 : 10.90.0.2 . \(listener.port)"))
    }
}
