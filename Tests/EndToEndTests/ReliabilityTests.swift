import Firewall
import Foundation
import Glibc
import Netlink
import Primitives
import Testing

@Suite("End to end: the firewall puts itself back; state that refuses to be wrong", .enabled(if: Sandbox.isRoot, "needs root"), .serialized)
struct ReliabilityTests {
    @Test("`nft flush ruleset`, ten times: the table comes back with no command run, and 127.0.0.1 never answers a container")
    func flushHeals() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.94.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80", "-p", "127.0.0.1:8082:80")
        #expect(s.agent() != nil)
        let c1 = try world.container("c1")
        let tcp = try Traffic.listen(in: c1, port: 80)
        defer { close(tcp.fd) }
        // A host service on every address: what a container must not reach as 127.0.0.1.
        let service = try Traffic.udpSocket(in: s.hostNamespace, port: 0)
        defer { close(service.fd) }
        let bridge = try #require(try s.hostLinks()["nc-web"])
        let eth0 = try #require(try RouteNetlink.open(in: c1).link(named: "eth0"))
        func send(_ destination: String, _ payload: String) throws {
            try Traffic.craftedUDP(in: c1, interface: eth0.index, to: bridge.mac, source: "10.94.0.2", destination: destination,
                                   port: service.port, payload: Array(payload.utf8))
        }
        let nft = try s.hostNamespace.run { try NftClient() }
        func whole() throws -> Bool { try nft.ruleCount(chain: "publish") == 4 && nft.mappings()?.count == 2 }
        #expect(try whole())

        var slowest = 0.0, attacks = 0
        for _ in 0..<10 {
            _ = try world.nft("flush", "ruleset")
            let flushed = Date()
            var healed = false
            while Date().timeIntervalSince(flushed) < 2 {  // bounded (how fast: tools/chaos measures it)
                try send("127.0.0.1", "attack")
                if try whole() { healed = true; break }
                usleep(1_000)
                attacks += 1
            }
            #expect(healed, "the table did not come back within 2 s")
            slowest = max(slowest, Date().timeIntervalSince(flushed))
        }
        // The control packet, to the gateway, shows the crafted path reaches the service.
        try send("10.94.0.1", "control")
        var received: [String] = []
        while let packet = Traffic.receiveUDP(service.fd) { received.append(String(decoding: packet.payload, as: UTF8.self)) }
        #expect(received == ["control"], "\(attacks) attack packets sent while the table was away; received \(received)")
        #expect(slowest < 1, "slowest repair \(Int(slowest * 1000)) ms")
        // Everything published works again: from the LAN and the host's own 127.0.0.1.
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: tcp.fd) == World.neighbourIP)
        #expect(throws: Never.self) { try Traffic.roundTrip(from: s.hostNamespace, to: "127.0.0.1", port: 8082, listener: tcp.fd) }
        // A chain emptied by hand, or one element deleted, comes back too.
        _ = try world.nft("flush", "chain", "inet", "netctl", "publish")
        #expect(eventually(2) { (try? whole()) == true })
        _ = try world.nft("delete", "element", "inet", "netctl", "v4_any", "{ tcp . 8080 }")
        #expect(eventually(2) { (try? whole()) == true })
        #expect(try Traffic.roundTrip(from: world.neighbour, to: World.hostIP, port: 8080, listener: tcp.fd) == World.neighbourIP)
    }
}

extension ReliabilityTests {
    @Test("an emptied, rolled-back or replaced state.db: gc refuses and removes nothing; --accept-state takes it as it is")
    func suspectState() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.95.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "-p", "8080:80")
        let db = s.stateDirectory + "/state.db"
        try s.run("/usr/bin/sqlite3", [db, ".backup \(s.stateDirectory)/.early.db"])
        try s.netctlOK("attach", "web", "--new", "c2", "--name", "c2", "-p", "8081:80")
        func kernel() throws -> (links: [String], table: String) {
            (try RouteNetlink.open(in: s.hostNamespace).links().map(\.name).sorted(), try world.nft("list", "table", "inet", "netctl"))
        }
        let before = try kernel()
        #expect(before.links.count == 5 && before.table.contains("8081"), "\(before.links)")
        func replace(with source: String?) {
            for suffix in ["-wal", "-shm"] { unlink(db + suffix) }
            if source == "garbage" {
                try? Data((0..<8192).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: db))
            } else if let source {
                _ = try? FileManager.default.removeItem(atPath: db); try? FileManager.default.copyItem(atPath: source, toPath: db)
            } else { truncate(db, 0) }
        }
        for (what, source, message) in [("rolled back", s.stateDirectory + "/.early.db", "rolled back"),
                                        ("damaged", "garbage", "damaged"),
                                        ("emptied", nil, "empty or new")] as [(String, String?, String)] {
            replace(with: source)
            let gc = try s.netctl("gc")
            #expect(gc.status == 1 && gc.stderr.contains("cannot be trusted") && gc.stderr.contains(message)
                    && gc.stderr.contains("--accept-state"), "\(what): \(gc.stderr)")
            #expect(gc.stderr.split(separator: "\n").count == 1)
            #expect(try s.netctl("reload").status == 1, "\(what): reload rebuilds the table from state: refused")
            let after = try kernel()
            #expect(after.links == before.links && after.table == before.table, "\(what): the kernel changed")
        }
        // Accepted, it is the truth: gc makes the kernel match the empty state.
        try s.netctlOK("gc", "--accept-state")
        let accepted = try kernel()
        #expect(accepted.links == ["lo", "uplink0"] || accepted.links.count < before.links.count, "\(accepted.links)")
        #expect(try s.netctlOK("gc").ok)
    }
}

extension ReliabilityTests {
    @Test("81 attaches at once on a /26 (61 addresses, 61 unique ports, 20 taken twice): exactly 61 succeed, each refusal is the port's")
    func attachBurst() throws {
        let s = try Sandbox(agent: false)
        try s.netctlOK("network", "create", "n1", "--subnet", "10.50.0.0/26")
        let ports = Array(8000..<8061) + Array(8000..<8020)
        let logs = ports.indices.map { "\(s.stateDirectory)/.burst-\($0).log" }
        let children = try ports.indices.map { i in
            try s.startNetctl(["attach", "n1", "--new", "b\(i)", "--name", "b\(i)", "-p", "\(ports[i]):80"], stderrTo: logs[i])
        }
        let statuses = try children.map { try $0.wait(timeout: 120) }
        let refusals = zip(statuses, logs).filter { $0.0 != 0 }.map { slurp($0.1) }
        #expect(statuses.filter { $0 == 0 }.count == 61, "\(refusals.prefix(5))")
        #expect(refusals.allSatisfy { $0.contains("already published") }, "\(refusals.filter { !$0.contains("already published") }.prefix(3))")
        let endpoints = try s.json("endpoints") as? [[String: Any]] ?? []
        let addresses = Set(endpoints.compactMap { $0["ipv4"] as? String })
        #expect(endpoints.count == 61 && addresses.count == 61, "\(endpoints.count) endpoints, \(addresses.count) addresses")
        let published = try s.netctlOK("port", "ls").stdout
        #expect(Set(ports).allSatisfy { published.contains("\($0)") })
    }
}
