import Foundation
import Glibc
import Netlink
import Primitives
import Testing

/// Runs a resolver inside a namespace of the sandbox.
extension Sandbox {
    /// `dig` in the namespace at `netns` (a path inside the sandbox): its answer lines.
    func dig(_ netns: String, _ arguments: [String]) throws -> Result {
        try run("/usr/bin/nsenter", ["--net=" + netns, "/usr/bin/dig", "+tries=1", "+timeout=3"] + arguments, timeout: 20)
    }

    func digShort(_ netns: String, _ server: String, _ arguments: String...) throws -> [String] {
        try dig(netns, ["+short", "@" + server] + arguments).stdout.split(separator: "\n").map(String.init)
    }

    func digStatus(_ netns: String, _ server: String, _ arguments: String...) throws -> String? {
        let lines = try dig(netns, ["@" + server] + arguments).stdout.split(separator: "\n")
        return lines.first { $0.contains("status:") }.map { String($0.split(separator: "status: ")[1].prefix { $0 != "," }) }
    }

    /// A resolver that is not dig, with `nameserver` in its own resolv.conf: glibc's
    /// `getent ahosts NAME` or busybox's `nslookup NAME`.
    func resolve(_ netns: String, nameserver: String, _ command: [String]) throws -> Result {
        let conf = stateDirectory + "/.resolv-\(UInt32.random(in: 0...UInt32.max))"
        try "nameserver \(nameserver)\n".write(toFile: conf, atomically: true, encoding: .utf8)
        defer { unlink(conf) }
        return try run("/usr/bin/nsenter", ["--net=" + netns, "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                                            "mount --bind \(conf) /etc/resolv.conf && exec \"$@\"", "resolve"] + command, timeout: 20)
    }

    /// `curl URL` as container `pid` would resolve it: in its network namespace, with copies
    /// of its /etc/resolv.conf and /etc/hosts (the kernel does not bind a file across mount
    /// namespaces). The example image's busybox is static glibc, whose wget crashes without
    /// the NSS libraries it loads, so the host's curl asks instead. Retried while the
    /// server comes up.
    func containerGet(_ pid: Int, _ url: String) throws -> Result {
        var copies: [String] = []
        defer { copies.forEach { unlink($0) } }
        for file in ["resolv.conf", "hosts"] {
            let copy = stateDirectory + "/.\(file)-\(pid)"
            try String(contentsOfFile: "/proc/\(pid)/root/etc/\(file)", encoding: .utf8).write(toFile: copy, atomically: true, encoding: .utf8)
            copies.append(copy)
        }
        let script = "mount --bind \(copies[0]) /etc/resolv.conf && mount --bind \(copies[1]) /etc/hosts && "
            + "for i in 1 2 3 4 5 6 7 8 9 10; do curl -sS -m 5 \"$1\" && exit 0; sleep 0.3; done; exit 1"
        return try run("/usr/bin/nsenter", ["--target", "\(pid)", "--net", "/usr/bin/unshare", "--mount", "--propagation", "private",
                                            "/bin/sh", "-c", script, "get", url], timeout: 60)
    }
}

@Suite("End to end: names that resolve (netctl's name server)", .enabled(if: Sandbox.isRoot, "needs root for namespaces"), .serialized)
struct NamesTests {
    @Test("names, aliases, AAAA and PTR for dig, glibc and busybox; not across networks; the moment attach and detach return")
    func namesResolve() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "app", "--subnet", "10.70.0.0/24", "--subnet6", "fd00:70::/64")
        try s.netctlOK("network", "create", "other", "--subnet", "10.71.0.0/24")
        try s.netctlOK("attach", "app", "--new", "db", "--name", "db", "--alias", "mysql")
        try s.netctlOK("attach", "app", "--new", "web", "--name", "web")
        try s.netctlOK("attach", "other", "--new", "stranger", "--name", "stranger")
        let web = s.stateDirectory + "/netns/web", stranger = s.stateDirectory + "/netns/stranger"
        #expect(try s.digShort(web, "10.70.0.1", "mysql") == ["10.70.0.2"])
        #expect(try s.digShort(web, "10.70.0.1", "DB") == ["10.70.0.2"])
        #expect(try s.digShort(web, "10.70.0.1", "mysql", "AAAA") == ["fd00:70::2"])
        #expect(try s.digShort(web, "10.70.0.1", "-x", "10.70.0.2") == ["db."])
        #expect(try s.digShort(web, "fd00:70::1", "web") == ["10.70.0.3"], "over IPv6 too")
        #expect(try s.digShort(web, "10.70.0.1", "+tcp", "mysql") == ["10.70.0.2"], "over TCP too")
        // glibc and busybox, each with the network's server in its resolv.conf.
        let glibc = try s.resolve(web, nameserver: "10.70.0.1", ["/usr/bin/getent", "ahostsv4", "mysql"])
        #expect(glibc.ok && glibc.stdout.contains("10.70.0.2"), "\(glibc.stdout) \(glibc.stderr)")
        let busybox = try s.resolve(web, nameserver: "10.70.0.1", ["/bin/busybox", "nslookup", "mysql", "10.70.0.1"])
        #expect(busybox.stdout.contains("10.70.0.2"), "\(busybox.stdout) \(busybox.stderr)")
        // A name of another network does not exist here, nor for its own network's server
        // asked from here (isolation also drops the query itself).
        #expect(try s.digStatus(web, "10.70.0.1", "stranger") == "NXDOMAIN")
        #expect(try s.digShort(stranger, "10.71.0.1", "stranger") == ["10.71.0.2"])
        #expect(try s.digStatus(stranger, "10.71.0.1", "mysql") == "NXDOMAIN")
        #expect(try s.digShort(stranger, "10.70.0.1", "mysql").allSatisfy { !$0.hasPrefix("10.") }, "no answer across networks")
        // The moment attach returns, and the moment detach returns.
        try s.netctlOK("attach", "app", "--new", "late", "--name", "late")
        #expect(try s.digShort(web, "10.70.0.1", "late") == ["10.70.0.4"])
        try s.netctlOK("detach", "late")
        #expect(try s.digStatus(web, "10.70.0.1", "late") == "NXDOMAIN")
        // Only the gateway addresses: never the wildcard.
        let sockets = try s.run("/usr/bin/ss", ["-lnH", "sport", "=", ":53"]).stdout
        #expect(!sockets.contains("0.0.0.0:53") && !sockets.contains("*:53") && sockets.contains("10.70.0.1:53"), "\(sockets)")
    }

    @Test("other names go to the host's upstream (UDP and TCP); a silent upstream gets SERVFAIL, not a hang")
    func forwarding() throws {
        let world = try World()
        let s = world.sandbox
        // An upstream of the test's own, in the neighbour namespace, and the sandbox's
        // resolv.conf (the host's, for netctl) pointing at it.
        let neighbour = s.stateDirectory + "/ns-neighbour"
        let upstream = try s.startHelper(["/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                          "--listen-address=\(World.neighbourIP)", "--bind-interfaces", "--port=53",
                                          "--address=/outside.example/192.0.2.10", "--log-facility=-"],
                                         netns: neighbour, log: s.stateDirectory + "/.dnsmasq.log")
        let conf = s.stateDirectory + "/.host-resolv.conf"
        try "nameserver \(World.neighbourIP)\n".write(toFile: conf, atomically: true, encoding: .utf8)
        try s.run("/usr/bin/mount", ["--bind", conf, "/etc/resolv.conf"])
        try s.netctlOK("network", "create", "app", "--subnet", "10.72.0.0/24")
        try s.netctlOK("attach", "app", "--new", "c1", "--name", "c1")
        let c1 = s.stateDirectory + "/netns/c1"
        #expect(eventually { (try? s.digShort(c1, "10.72.0.1", "outside.example")) == ["192.0.2.10"] })
        #expect(try s.digShort(c1, "10.72.0.1", "+tcp", "outside.example") == ["192.0.2.10"])
        // The upstream stops answering: SERVFAIL within the server's three tries.
        upstream.kill()
        _ = try upstream.wait(timeout: 5)
        let started = Date()
        #expect(try s.digStatus(c1, "10.72.0.1", "+timeout=8", "outside.example") == "SERVFAIL")
        #expect(Date().timeIntervalSince(started) < 6)
    }

    @Test("the agent: started with the first network, back after it is killed, gone with the last network or its state")
    func lifecycle() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("endpoints")
        #expect(s.agent() == nil, "not before a network exists")
        try s.netctlOK("network", "create", "app", "--subnet", "10.73.0.0/24")
        let first = try #require(s.agent())
        try s.netctlOK("attach", "app", "--new", "c1", "--name", "c1")
        #expect(s.agent() == first)
        kill(first.pid, SIGKILL)
        #expect(eventually { !first.isAlive })
        // The next command, whatever it is, brings it back.
        try s.netctlOK("endpoints")
        let second = try #require(s.agent())
        #expect(second != first)
        #expect(try s.digShort(s.stateDirectory + "/netns/c1", "10.73.0.1", "c1") == ["10.73.0.2"])
        try s.netctlOK("detach", "c1")
        #expect(s.agent() == second, "the network is still there")
        try s.netctlOK("network", "rm", "app")
        #expect(eventually { s.agent() == nil }, "it stops with the last network")
        try s.netctlOK("network", "create", "app", "--subnet", "10.73.0.0/24")
        // And when its state is deleted under it (the open database would still read).
        try s.netctlOK("attach", "app", "--new", "c2", "--name", "c2")
        let third = try #require(s.agent())
        for suffix in ["", "-wal", "-shm"] { unlink(s.stateDirectory + "/state.db" + suffix) }
        #expect(eventually { !third.isAlive }, "it stops once its state is gone")
    }

    @Test("the tutorial's two-container app: a container reaches another by its alias over HTTP; also on an internal network")
    func twoContainerApp() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "todo-app", "--subnet", "10.74.0.0/24")
        try s.netctlOK("network", "create", "todo-int", "--subnet", "10.75.0.0/24", "--internal")
        for network in ["todo-app", "todo-int"] {
            try s.netctlOK("run", "-d", "--name", "db-\(network)", "--network", network, "--network-alias", "mysql", exampleImage)
            try s.netctlOK("run", "-d", "--name", "app-\(network)", "--network", network, exampleImage)
            let app = try #require(try world.containers()["app-\(network)"]?["pid"] as? Int)
            // Inside the app container (its network, mount and so its resolv.conf), by name.
            let page = try s.containerGet(app, "http://mysql/")
            #expect(page.ok && page.stdout.contains("netctl 101 tutorial"), "\(network): \(page.stderr)")
            let conf = try s.run("/usr/bin/nsenter", ["--target", "\(app)", "--mount", "/bin/busybox", "cat", "/etc/resolv.conf"]).stdout
            #expect(conf.hasPrefix("nameserver \(network == "todo-app" ? "10.74.0.1" : "10.75.0.1")\n"), "\(conf)")
        }
        try s.netctlOK("rm", "-f", "db-todo-app", "app-todo-app", "db-todo-int", "app-todo-int")
    }

    @Test("network connect and disconnect: names on the new network, ports follow the default route, /etc files follow")
    func connectDisconnect() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "front", "--subnet", "10.76.0.0/24")
        try s.netctlOK("network", "create", "back", "--subnet", "10.77.0.0/24")
        try s.netctlOK("run", "-d", "--name", "web", "--network", "front", "-p", "8080:80", exampleImage)
        try s.netctlOK("run", "-d", "--name", "db", "--network", "back", exampleImage)
        try s.netctlOK("network", "connect", "back", "web", "--alias", "www")
        let web = try #require(try world.containers()["web"])
        #expect(web["networks"] as? [String] == ["front", "back"])
        let db = try #require(try world.containers()["db"]?["pid"] as? Int)
        let fromDB = try s.containerGet(db, "http://www/")
        #expect(fromDB.ok && fromDB.stdout.contains("netctl 101 tutorial"), "\(fromDB.stderr)")
        #expect(try world.page(from: world.neighbour, World.hostIP, 8080).contains("netctl 101 tutorial"))
        // Off its first network: the port moves with the default route to back.
        try s.netctlOK("network", "disconnect", "front", "web")
        #expect(try world.page(from: world.neighbour, World.hostIP, 8080).contains("netctl 101 tutorial"))
        let ports = try s.netctlOK("port", "ls").stdout
        #expect(ports.contains("web.back 80/tcp -> 0.0.0.0:8080"), "\(ports)")
        let pid = try #require(web["pid"] as? Int)
        let conf = try s.run("/usr/bin/nsenter", ["--target", "\(pid)", "--mount", "/bin/busybox", "cat", "/etc/resolv.conf"]).stdout
        #expect(conf.hasPrefix("nameserver 10.77.0.1\n"), "\(conf)")
        // Its last network: refused without --force.
        let last = try s.netctl("network", "disconnect", "back", "web")
        #expect(last.status == 1 && last.stderr.contains("network back is the last network of container web"), "\(last.stderr)")
        try s.netctlOK("rm", "-f", "web", "db")
    }
}

extension Sandbox {
    /// The agent serving this sandbox's state, if one runs.
    func agent() -> ProcessIdentity? {
        guard let text = try? String(contentsOfFile: stateDirectory + "/agent.lock", encoding: .utf8),
              let identity = ProcessIdentity(encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), identity.isAlive else { return nil }
        return identity
    }
}
