import Foundation
import Testing

/// The generated ruleset for a matrix of configurations, as `nft list table` prints it,
/// against checked-in files: every change to the rules shows up in review.
/// Regenerate with `tools/update-golden` after an intended change.
@Suite("End to end: golden rulesets", .enabled(if: Sandbox.isRoot, "needs root for namespaces and nftables"))
struct GoldenTests {
    func check(_ world: World, against name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try Golden.expect(try world.nft("list", "table", "inet", "netctl"), matches: "\(name).nft", sourceLocation: sourceLocation)
    }

    @Test("one IPv4 network: all-address, 127.0.0.1, UDP, range and SCTP mappings")
    func singleNetwork() throws {
        let world = try World()
        try world.sandbox.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try world.sandbox.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "127.0.0.1:8081:80",
                                   "-p", "5353:53/udp", "-p", "9000-9001:90-91", "-p", "7000:7000/sctp")
        try check(world, against: "single-network")
    }

    @Test("two networks, one dual-stack with a /20: per-address and per-family mappings")
    func dualStack() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "a", "--subnet", "10.91.16.0/20")
        try s.netctlOK("network", "create", "six", "--subnet", "10.93.0.0/24", "--subnet6", "fd00:93::/64")
        try s.netctlOK("attach", "a", "--new", "a1", "--name", "a1", "-p", "\(World.hostIP):8080:80")
        try s.netctlOK("attach", "six", "--new", "s1", "--name", "s1", "-p", "8443:443", "-p", "[\(World.hostIP6)]:8444:443",
                       "-p", "0.0.0.0:8445:443", "-p", "[::]:8446:443")
        try check(world, against: "dual-stack")
        // Taking one network away leaves the other's rules and mappings exactly.
        try s.netctlOK("network", "rm", "--force", "six")
        try check(world, against: "after-network-rm")
    }

    @Test("an internal network (no masquerade, nothing in or out) and an open one beside an isolated one")
    func internalAndOpen() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "inner", "--subnet", "10.94.0.0/24", "--internal")
        try s.netctlOK("network", "create", "quiet", "--subnet", "10.96.0.0/24", "--internal", "--disable-dns")
        try s.netctlOK("network", "create", "open", "--subnet", "10.95.0.0/24", "--no-isolate")
        try s.netctlOK("network", "create", "closed", "--subnet", "10.97.0.0/24", "--subnet6", "fd00:97::/64")
        try check(world, against: "internal-and-open")
    }
}
