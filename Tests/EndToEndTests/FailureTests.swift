import Foundation
import Glibc
import Netlink
import Testing

/// Bad input and failures half-way: one clear line on stderr, a non-zero exit, and the
/// kernel and state exactly as they were.
@Suite("End to end: bad input and rollback", .enabled(if: Sandbox.isRoot, "needs root for namespaces and netlink"))
struct FailureTests {
    /// Runs netctl expecting failure; checks the one-line message and that nothing changed.
    func expectRefused(_ sandbox: Sandbox, _ arguments: [String], mentioning needle: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try sandbox.snapshot()
        let result = try sandbox.netctl(arguments)
        #expect(result.status == 1, "netctl \(arguments.joined(separator: " ")) should fail with status 1, not \(result.status)",
                sourceLocation: sourceLocation)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("netctl: error: "), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(needle), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(try sandbox.snapshot() == before, "netctl \(arguments.joined(separator: " ")) changed something",
                sourceLocation: sourceLocation)
    }

    @Test("every kind of failure, from every library and the command line, is one line with status 1 and says what to do")
    func everyKindOfError() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK(["network", "create", "a", "--subnet", "10.74.0.0/24"])
        try sandbox.netctlOK(["network", "create", "b", "--subnet", "10.75.0.0/24"])
        // A namespace with a default route netctl did not make: refused, with what to do, not
        // the kernel's "File exists" half-way.
        let foreign = try sandbox.makeNamespaceFile("foreign")
        try sandbox.run("/usr/bin/nsenter", ["--net=" + foreign, "/usr/sbin/ip", "link", "set", "lo", "up"])
        try sandbox.run("/usr/bin/nsenter", ["--net=" + foreign, "/usr/sbin/ip", "route", "add", "default", "dev", "lo"])
        let cases: [([String], String)] = [
            (["attach", "b", "--netns", foreign, "--name", "f1"],
             "has a default route netctl did not make, so it cannot get one via 10.75.0.1; pass --no-default-route"),
            (["stop", "ghost"], "no container named ghost; list containers with `netctl ps -a`"),       // the runtime's
            (["attach", "a", "--bogus"], "Unknown option '--bogus'; see --help"),                            // ArgumentParser's
            (["proxy", "serve", "--workers", "0"], "--workers must be 1 or more"),                          // a flag's check
            (["proxy", "serve", "--metrics", "nowhere"], "invalid --metrics \"nowhere\": give IP:PORT"),      // the CLI's own
            (["network", "create", "c", "--gateway6", "fd00::1"], "invalid address \"fd00::1\": --gateway6 needs --subnet6"),
            (["network", "create", "-"], "invalid network name \"-\""),
            (["network", "create", "c", "--mtu", "-5"], "see --help"),
            (["network", "create", "a\nb"], #"invalid network name "a\nb""#),                            // escaped: one line, whatever the name holds
            (["attach", "a", "--netns", "/proc/self/ns/net", "--name", "h"], "is this host's own, not a container's; give the namespace of a container"),
            (["port", "parse", "0.0.80.0:2:1"], "cannot be a host's own address"),
            (["port", "parse", "[]:1:1"], "empty host address"),
        ]
        for (arguments, message) in cases {
            try expectRefused(sandbox, arguments, mentioning: message)
        }
    }

    @Test("without CAP_NET_ADMIN: one line naming root, status 1, at once, for every command that needs it")
    func unprivileged() throws {
        let sandbox = try Sandbox()
        for arguments in [["network", "create", "x"], ["attach", "x", "--new", "y"], ["ps"], ["gc"], ["stop", "a"], ["network", "ls"]] {
            let started = Date()
            let result = try sandbox.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Sandbox.netctl] + arguments,
                                         timeout: 10)
            #expect(result.status == 1 && result.stderr == "netctl: error: netctl needs root (CAP_NET_ADMIN), and this process does not have it; run it as root (sudo netctl ...)\n",
                    "\(arguments): \(result.status) \(result.stderr)")
            #expect(Date().timeIntervalSince(started) < 5, "\(arguments) took \(Date().timeIntervalSince(started)) s to refuse")
        }
    }

    @Test("network create: bad subnets, overlaps, bad and foreign bridge names")
    func badNetworks() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK(["network", "create", "web", "--subnet", "10.70.0.0/16"])
        try sandbox.run("/usr/sbin/ip", ["link", "add", "foreign0", "type", "bridge"])
        try sandbox.run("/usr/sbin/ip", ["addr", "add", "10.99.0.1/24", "dev", "foreign0"])
        try sandbox.run("/usr/sbin/ip", ["link", "set", "foreign0", "up"])
        let cases: [([String], String)] = [
            (["--subnet", "10.0.0.0/33"], "invalid subnet \"10.0.0.0/33\""),
            (["--subnet", "banana"], "write it as ADDRESS/PREFIX"),
            (["--subnet", "10.80.0.5/24"], "did you mean 10.80.0.0/24?"),
            (["--subnet", "10.70.128.0/24"], "overlaps network web (10.70.0.0/16)"),
            (["--subnet", "10.99.0.0/16"], "overlaps the host route 10.99.0.0/24"),
            (["--subnet", "10.81.0.0/24", "--gateway", "10.82.0.1"], "outside the subnet"),
            (["--subnet6", "10.0.0.0/24"], "--subnet6 takes an IPv6 subnet"),
            (["--bridge", "abcdefghijklmnop"], "it is 16 bytes long"),
            (["--bridge", "br/0"], "it contains \"/\""),
            (["--bridge", "foreign0"], "interface foreign0 exists and was not created by netctl"),
            (["--bridge", "nc-web"], "bridge nc-web is already used by network web"),
        ]
        for (options, message) in cases {
            try expectRefused(sandbox, ["network", "create", "other"] + options, mentioning: message)
        }
        try expectRefused(sandbox, ["network", "create", "web"], mentioning: "network web already exists")
        try expectRefused(sandbox, ["network", "create", "bad/name"], mentioning: "invalid network name")
        try expectRefused(sandbox, ["network", "rm", "nope"], mentioning: "no network named nope")
    }

    @Test("attach: bad targets, addresses, names; detach of an unknown endpoint")
    func badAttaches() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK(["network", "create", "web", "--subnet", "10.71.0.0/24"])
        try sandbox.netctlOK(["attach", "web", "--new", "first", "--name", "first", "--ip", "10.71.0.9"])
        let cases: [([String], String)] = [
            (["--netns", "/etc/hostname"], "/etc/hostname is not a network namespace"),
            (["--netns", "/nonexistent"], "cannot open network namespace /nonexistent"),
            (["--pid", "999999"], "no process with PID 999999"),
            (["--new", "x", "--ip", "10.72.0.5"], "--ip is outside the subnet 10.71.0.0/24"),
            (["--new", "x", "--ip", "10.71.0.9"], "address 10.71.0.9 on network web is already used by endpoint first"),
            (["--new", "x", "--ip", "10.71.0.1"], "--ip is the gateway"),
            (["--new", "x", "--ip", "10.71.0.255"], "broadcast address"),
            (["--new", "x", "--ifname", "abcdefghijklmnop"], "invalid interface name"),
            (["--new", "x", "--mac", "01:00:5e:00:00:01"], "invalid MAC address"),
            (["--new", "x", "--name", "first"], "endpoint first already exists"),
            (["--new", "first"], "already exists; attach to it with --netns"),
            ([], "say which network namespace to attach"),
            (["--new", "x", "--pid", "1"], "say which network namespace to attach"),
        ]
        for (options, message) in cases {
            try expectRefused(sandbox, ["attach", "web"] + options, mentioning: message)
        }
        try expectRefused(sandbox, ["attach", "nope", "--new", "x"], mentioning: "no network named nope")
        // Without a network the default one would be made: a bad --ip is refused before that.
        try expectRefused(sandbox, ["attach", "--new", "x", "--ip", "10.71.0.300"], mentioning: "--ip must be an IPv4 address")
        // ...and a refusal that needs the default network to be known takes it away again.
        try expectRefused(sandbox, ["attach", "--new", "x", "--ip", "10.71.0.5"], mentioning: "--ip is outside the subnet 172.17.0.0/16")
        try expectRefused(sandbox, ["attach", "--new", "x", "--name", "first"], mentioning: "endpoint first already exists")
        try expectRefused(sandbox, ["detach", "ghost"], mentioning: "no endpoint named ghost")
        // Detaching a known and an unknown endpoint together does nothing at all.
        try expectRefused(sandbox, ["detach", "first", "ghost"], mentioning: "no endpoint named ghost")
    }

    @Test("a failure half-way (the peer can't be made in the namespace) rolls everything back")
    func rollback() throws {
        let sandbox = try Sandbox()
        try sandbox.netctlOK(["network", "create", "web", "--subnet", "10.73.0.0/24"])
        // Its interface name collides inside the new namespace ("lo"), so the veth pair can't be
        // made after the namespace was created and the address leased: all of it must be undone.
        try expectRefused(sandbox, ["attach", "web", "--new", "clash", "--ifname", "lo"],
                          mentioning: "an interface named lo already exists in")
        // Also when the namespace is the caller's: it is left as it was.
        let path = try sandbox.makeNamespaceFile("mine")
        try expectRefused(sandbox, ["attach", "web", "--netns", path, "--ifname", "lo"], mentioning: "an interface named lo")
        #expect(try RouteNetlink.open(in: NetworkNamespace(path: sandbox.outsidePath(path))).links().map(\.name) == ["lo"])
        // Both leases were released: the addresses the failed attaches held can be taken.
        try sandbox.netctlOK(["attach", "web", "--new", "ok2", "--ip", "10.73.0.2"])
        try sandbox.netctlOK(["attach", "web", "--new", "ok3", "--ip", "10.73.0.3"])
    }
}
