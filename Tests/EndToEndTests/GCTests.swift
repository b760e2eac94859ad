import Foundation
import Glibc
import Netlink
import Testing

@Suite("End to end: gc reconciles state with the kernel", .enabled(if: Sandbox.isRoot, "needs root for namespaces and netlink"))
struct GCTests {
    @Test("gc drops endpoints whose process died, leftovers of a crash, and restores a lost bridge")
    func reconcile() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK(["network", "create", "web", "--subnet", "10.74.0.0/24"])
        try sandbox.netctlOK(["attach", "web", "--new", "keep", "--name", "keep"])

        // 1. A container process that exits: its namespace and veth die with it.
        let pid = try sandbox.startContainerProcess()
        try sandbox.netctlOK(["attach", "web", "--pid", "\(pid)", "--name", "dies"])
        kill(pid, SIGKILL)
        waitpid(pid, nil, 0)  // reap it: its namespace, and the veth in it, are gone

        // 2. A netctl that crashed mid-attach: a 'creating' record whose owner is gone, with its veth.
        try sandbox.netctlOK(["attach", "web", "--new", "crashed", "--name", "crashed"])
        let db = sandbox.stateDirectory + "/state.db"
        let marked = try sandbox.run("/usr/bin/sqlite3", [db, "UPDATE endpoints SET state = 'creating', owner = '999999:1' WHERE name = 'crashed'"])
        #expect(marked.ok, "\(marked.stderr)")

        // 3. Kernel objects with no record: a veth in netctl's group and a namespace file.
        let host = try RouteNetlink.open(in: sandbox.hostNamespace)
        try host.perform(.createVeth(VethSpec(name: "ncdeadbeef", peerName: "ncdeadpeer", group: LinkGroups.endpoint)))
        let stray = sandbox.stateDirectory + "/netns/stray"
        try sandbox.run("/usr/bin/touch", [stray])
        try sandbox.run("/usr/bin/mount", ["--bind", "/proc/self/ns/net", stray])

        // 4. Someone deleted the bridge.
        let keep = try #require(try sandbox.json("endpoints") as? [[String: Any]]).first { $0["name"] as? String == "keep" }
        try sandbox.run("/usr/sbin/ip", ["link", "del", "nc-web"])

        let report = try #require(try sandbox.json("gc") as? [String: [String]])
        #expect(Set(report["removedEndpoints"] ?? []) == ["dies", "crashed"])
        #expect(report["removedLinks"] == ["ncdeadbeef"])
        #expect(report["removedNamespaces"] == ["stray"])
        #expect(report["restoredBridges"] == ["nc-web"])

        let endpoints = try #require(try sandbox.json("endpoints") as? [[String: Any]])
        #expect(endpoints.map { $0["name"] as? String } == ["keep"])
        let links = try sandbox.hostLinks()
        #expect(links["ncdeadbeef"] == nil && links["ncdeadpeer"] == nil)
        #expect(links.values.filter { $0.group == LinkGroups.endpoint }.map(\.name) == [keep?["hostInterface"] as? String])
        #expect(try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory + "/netns") == ["keep"])
        #expect(links["nc-web"]?.isUp == true)

        // Idempotent: a second run finds nothing to do. The released leases are free again.
        #expect(try sandbox.json("gc") as? [String: [String]] == ["removedEndpoints": [], "removedLinks": [],
                                                                    "removedNamespaces": [], "restoredBridges": [],
                                                                    "removedMappings": [], "restoredMappings": []])
        try sandbox.netctlOK(["attach", "web", "--new", "again", "--ip", "10.74.0.3"])
    }
}
