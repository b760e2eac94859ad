import Foundation
import Primitives
import Glibc
import Netlink
import Proxy
import Testing

@Suite("End to end: `netctl proxy serve` as a port backend", .enabled(if: Sandbox.isRoot, "needs root for namespaces"))
struct ProxyServeTests {
    @Test("auto and proxy backends: [::1], IPv6 to an IPv4-only container, UDP, live changes, stats, metrics, drain on SIGTERM")
    func serve() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1", "--backend", "auto", "-p", "[::1]:8080:80", "-p", "8081:80",
                       "-p", "5300:53/udp")
        let c1 = try world.container("c1")
        let backend = try EchoBackend(in: c1)
        let backendPort = backend.port
        // The echo backend listens on its own port; map the container port through it.
        try s.netctlOK("port", "rm", "c1")
        try s.netctlOK("port", "add", "c1", "--backend", "auto", "[::1]:8080:\(backendPort)", "8081:\(backendPort)", "5300:\(backendPort)/udp")
        let serve = try s.startNetctl(["proxy", "serve", "--metrics", "127.0.0.1:9464", "--drain", "2"])
        defer { serve.kill(); _ = try? serve.wait(timeout: 10) }

        func echo(_ address: String, _ port: UInt16, from namespace: NetworkNamespace? = nil) -> String? {
            guard let fd = try? Client.connect(in: namespace ?? s.hostNamespace, to: address, port: port, timeout: 2) else { return nil }
            defer { close(fd) }
            guard Client.sendAll(fd, Array("hi \(address)".utf8)) else { return nil }
            shutdown(fd, Int32(SHUT_WR))
            return String(decoding: Client.readAll(fd).bytes, as: UTF8.self)
        }
        // [::1] (the kernel can't DNAT it) and [::] to an IPv4-only container come from the proxy;
        // IPv4 stays on the kernel path.
        #expect(eventually { echo("::1", 8080) == "hi ::1" })
        #expect(echo(World.hostIP6, 8081, from: world.neighbour) == "hi \(World.hostIP6)")
        #expect(echo(World.hostIP, 8081, from: world.neighbour) == "hi \(World.hostIP)")
        let udp = try Traffic.udpSocket(in: world.neighbour, ipv6: true)
        defer { close(udp.fd) }
        try Traffic.sendUDP(udp.fd, to: World.hostIP6, port: 5300, Array("abc".utf8))
        let reply = Traffic.receiveUDP(udp.fd)
        #expect(reply?.payload == Array("cba".utf8) && reply?.from == World.hostIP6)

        // A mapping added and one removed while serve runs: picked up without a restart.
        try s.netctlOK("port", "add", "c1", "--backend", "proxy", "127.0.0.1:9090:\(backendPort)", "5301:\(backendPort)/udp",
                       "127.0.0.1:5302:5353/udp")
        #expect(eventually { echo("127.0.0.1", 9090) == "hi 127.0.0.1" })
        try s.netctlOK("port", "rm", "c1", "[::1]:8080:\(backendPort)")
        #expect(eventually { echo("::1", 8080) == nil })

        // The 127.0.0.1 guard holds on the proxy path too: not from the LAN at the host's
        // address (the host's own 127.0.0.1 reaches it, above), not by packets crafted to
        // 127.0.0.1 from the LAN, while the same port answers the host's own 127.0.0.1.
        #expect(echo(World.hostIP, 9090, from: world.neighbour) == nil)
        let quiet = try Traffic.udpSocket(in: c1, port: 5353)
        defer { close(quiet.fd) }
        try Traffic.craftedUDP(in: world.neighbour, interface: world.neighbourInterface, to: world.uplinkMAC,
                               source: World.neighbourIP, destination: "127.0.0.1", port: 5302, payload: Array("attack".utf8))
        #expect(Traffic.receiveUDP(quiet.fd) == nil)
        let local = try Traffic.udpSocket(in: s.hostNamespace)
        defer { close(local.fd) }
        try Traffic.sendUDP(local.fd, to: "127.0.0.1", port: 5302, Array("control".utf8))
        #expect(Traffic.receiveUDP(quiet.fd)?.payload == Array("control".utf8), "the control datagram must arrive")

        // Counters: `port stats` (from the stats file) and the Prometheus endpoint.
        #expect(try eventually {
            let stats = try s.json("port", "stats", "c1") as! [[String: Any]]
            let proxied = stats.first { ($0["port"] as? [String: Any])?["hostPort"] as? Int == 9090 }
            return ((proxied?["proxy"] as? [String: Any])?["connections"] as? Int ?? 0) >= 1
        })
        let fd = try Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9464)
        defer { close(fd) }
        #expect(Client.sendAll(fd, Array("GET /metrics HTTP/1.0\r\n\r\n".utf8)))
        let page = String(decoding: Client.readAll(fd).bytes, as: UTF8.self)
        #expect(page.hasPrefix("HTTP/1.1 200 OK"))
        #expect(page.contains("netctl_proxy_connections_total{endpoint=\"c1\",proto=\"tcp\",host_ip=\"127.0.0.1\",host_port=\"9090\"}"))

        // Idle, the stats file is left alone (it is written anew, by rename, once a second
        // while counters move); traffic gets it written again.
        func statsFile() -> ino_t? {
            var st = stat()
            return stat(s.stateDirectory + "/proxy-stats.json", &st) == 0 ? st.st_ino : nil
        }
        var before = statsFile()
        #expect(eventually(15) {  // writes still due for the last connections, if any
            Thread.sleep(forTimeInterval: 1.5)
            defer { before = statsFile() }
            return statsFile() == before
        })
        Thread.sleep(forTimeInterval: 2.5)
        #expect(before != nil && statsFile() == before)
        #expect(echo("127.0.0.1", 9090) == "hi 127.0.0.1")
        #expect(eventually(5) { statsFile() != before })

        // SIGTERM with a transfer in flight: no new connections, the open one finishes whole
        // within the drain time, then exit 0 with nothing listening.
        let inFlight = try Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9090, timeout: 2)
        defer { close(inFlight) }
        #expect(Client.sendAll(inFlight, Array("first half, ".utf8)))
        serve.kill(SIGTERM)
        #expect(eventually(2) { echo("127.0.0.1", 9090) == nil })
        #expect(Client.sendAll(inFlight, Array("second half".utf8)))
        shutdown(inFlight, Int32(SHUT_WR))
        #expect(String(decoding: Client.readAll(inFlight).bytes, as: UTF8.self) == "first half, second half")
        #expect(try serve.wait(timeout: 10) == 0)
        #expect(echo("127.0.0.1", 9090) == nil)
    }

    @Test("a port some program holds is refused at publish time, with the proxy backend too")
    func takenPort() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1")
        let holder = try Traffic.listen(in: s.hostNamespace, port: 9095)
        defer { close(holder.fd) }
        let result = try s.netctl("port", "add", "c1", "--backend", "proxy", "9095:80")
        #expect(result.status == 1 && result.stderr.contains("host port 9095/tcp is in use by another program"))
        #expect(try s.netctlOK("port", "ls").stdout.isEmpty)
        let sctp = try s.netctl("port", "add", "c1", "--backend", "proxy", "9096:80/sctp")
        #expect(sctp.status == 1 && sctp.stderr.contains("the proxy relays TCP and UDP only"))
    }
}

@Suite("End to end: the proxy out of file descriptors", .enabled(if: Sandbox.isRoot, "needs root for namespaces"))
struct ProxyDescriptorTests {
    /// CPU time (user + system, clock ticks) a process has used.
    func cpuTicks(_ pid: Int32) -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)  // fields 14 and 15
    }

    /// `count` connections from each CPU, all CPUs at once; the ones that connected.
    func openClients(_ s: Sandbox, port: UInt16, count: Int, fromCPUs cpus: [Int32]) -> [Int32] {
        let opened = cpus.map { _ in Box<[Int32]>([]) }
        let namespace = s.hostNamespace
        let group = DispatchGroup()
        for (cpu, box) in zip(cpus, opened) {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                _ = try? namespace.run {
                    guard bindThread(toCPU: cpu) else { return }
                    for _ in 0..<count {
                        if let fd = try? Client.connect(in: namespace, to: "127.0.0.1", port: port, timeout: 2) { box.value.append(fd) }
                    }
                }
            }
        }
        group.wait()
        return opened.flatMap(\.value)
    }

    @Test("with no descriptors left the loop neither spins nor hangs clients, and recovers")
    func exhausted() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1")
        let backend = try EchoBackend(in: try world.container("c1"))
        try s.netctlOK("port", "add", "c1", "--backend", "proxy", "127.0.0.1:9200:\(backend.port)")
        // A proxy allowed 64 descriptors: a few dozen connections exhaust it.
        let serve = try Child.spawn(["/usr/bin/nsenter", "--target", "\(s.holder.pid)", "--net", "--mount", "--",
                                     "/usr/bin/prlimit", "--nofile=64:64", Sandbox.netctl, "proxy", "serve", "--drain", "0"],
                                    environment: ["NETCTL_STATE_DIR": s.stateDirectory])
        defer { serve.kill(); _ = try? serve.wait(timeout: 10) }
        var ready = false
        for _ in 0..<50 where !ready {
            if let fd = try? Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9200, timeout: 1) {
                close(fd); ready = true
            } else { usleep(100_000) }
        }
        #expect(ready)

        // Rounds of clients that stay open, connecting from every CPU at once so the workers
        // run out of descriptors together: the first ones are relayed, the rest can't be.
        let cpus = Array(ProxyServer.allowedCPUs.prefix(2))
        for round in 0..<4 {
            let clients = openClients(s, port: 9200, count: 120 / cpus.count, fromCPUs: cpus)
            defer { clients.forEach { close($0) } }
            #expect(clients.count == 120 / cpus.count * cpus.count)  // the kernel accepts them into the backlog either way
            if round == 0 {
                usleep(300_000)
                let before = cpuTicks(serve.pid)
                sleep(1)
                let used = cpuTicks(serve.pid) - before
                #expect(used < 30, "the proxy used \(used) ticks of CPU in one idle second: it is spinning")
            }
            // Each client either gets its echo or a prompt close, never a hang.
            var echoed = 0, closed = 0, hung = 0
            for fd in clients {
                var tv = timeval(tv_sec: 3, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                _ = Client.sendAll(fd, Array("x".utf8))
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, 0)
                if n == 1 { echoed += 1 } else if n == 0 || errno == ECONNRESET { closed += 1 } else { hung += 1 }
            }
            #expect(echoed > 0 && closed > 0 && hung == 0, "round \(round): echoed \(echoed), closed \(closed), no answer \(hung)")
            usleep(200_000)  // the proxy closes the echoed ones' backends
        }
        // Descriptors back: new connections are relayed again.
        usleep(300_000)
        let again = try Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9200)
        defer { close(again) }
        #expect(Client.sendAll(again, Array("back".utf8)))
        shutdown(again, Int32(SHUT_WR))
        #expect(String(decoding: Client.readAll(again).bytes, as: UTF8.self) == "back")
    }
}

extension ProxyDescriptorTests {
    /// Sockets a process holds.
    func sockets(_ pid: Int32) -> Int {
        let directory = "/proc/\(pid)/fd"
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0))?.hasPrefix("socket:") == true
        }.count
    }

    @Test("clients that reset against a backend that never answers, and a backend that dies: the proxy's sockets back to baseline")
    func resetFlood() throws {
        let world = try World()
        let s = world.sandbox
        try s.netctlOK("network", "create", "web", "--subnet", "10.90.0.0/24")
        try s.netctlOK("attach", "web", "--new", "c1", "--name", "c1")
        // A backend that accepts nothing: its kernel completes 17 handshakes (backlog 16), then
        // drops SYNs. The proxy's connects to it hang or complete and hear nothing back.
        var silent = try Traffic.listen(in: try world.container("c1"), port: 7000)
        defer { close(silent.fd) }
        try s.netctlOK("port", "add", "c1", "--backend", "proxy", "127.0.0.1:9400:7000")
        let serve = try s.startNetctl(["proxy", "serve", "--drain", "0"])
        defer { serve.kill(); _ = try? serve.wait(timeout: 10) }
        #expect(eventually(10) { (try? Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9400, timeout: 1)).map { close($0) } != nil })
        // The trial connection's sockets let go (its client closed; its backend stays silent).
        var baseline = sockets(serve.pid)
        _ = eventually(5) { usleep(300_000); defer { baseline = sockets(serve.pid) }; return sockets(serve.pid) == baseline }

        // 2,000 clients, each connect, then close with SO_LINGER 0 (a reset). Bounded in time.
        let started = Date()
        let sent = try s.hostNamespace.run { () -> Int in
            var count = 0
            while count < 2_000 && Date().timeIntervalSince(started) < 30 {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { break }
                let rc = SocketAddress(IPAddress("127.0.0.1")!, 9400).withSockaddr { connect(fd, $0, $1) }
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                close(fd)
                if rc == 0 { count += 1 }
            }
            return count
        }
        #expect(sent == 2_000)
        #expect(eventually(5) { sockets(serve.pid) <= baseline }, "\(sockets(serve.pid)) sockets held 5 s after the flood, \(baseline) before")

        // Clients that stay, relayed to the silent backend; then the backend dies (its kernel
        // resets the connections it never accepted): the clients are reset and let go.
        close(silent.fd)
        silent = try Traffic.listen(in: try world.container("c1"), port: 7000)
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<10 { clients.append(try Client.connect(in: s.hostNamespace, to: "127.0.0.1", port: 9400, timeout: 2)) }
        #expect(eventually(5) { sockets(serve.pid) >= baseline + 10 }, "\(sockets(serve.pid)) sockets for 10 clients, \(baseline) before")
        close(silent.fd)
        #expect(eventually(5) { sockets(serve.pid) <= baseline }, "\(sockets(serve.pid)) sockets held after the backend died, \(baseline) before")
        var byte: UInt8 = 0
        #expect(clients.allSatisfy { recv($0, &byte, 1, 0) <= 0 }, "every client is told (EOF or reset)")
        silent = try Traffic.listen(in: try world.container("c1"), port: 7000)  // for the deferred close
    }
}
