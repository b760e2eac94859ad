import Foundation
import Glibc
import Netlink
import Testing
import TestSupport
import Images

/// The example image tools/build-example-image writes (tools/test builds it first).
let exampleImage: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("examples/101-tutorial/image").path
}()

private let pageTitle = "netctl 101 tutorial"

/// The example image's one layer, uncompressed: a base for images built in tests.
func exampleLayer() throws -> [UInt8] {
    let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: exampleImage + "/index.json"))) as! [String: Any]
    func blob(_ digest: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: exampleImage + "/blobs/sha256/" + digest.dropFirst(7)))
    }
    let manifestDigest = ((index["manifests"] as! [[String: Any]])[0]["digest"] as! String)
    let manifest = try JSONSerialization.jsonObject(with: try blob(manifestDigest)) as! [String: Any]
    let layerDigest = (manifest["layers"] as! [[String: Any]])[0]["digest"] as! String
    let path = exampleImage + "/blobs/sha256/" + layerDigest.dropFirst(7)
    return try GzipSource(try FileRegion(path: path, what: "example layer"), what: "example layer").readAll(limit: 64 << 20, what: "example layer")
}

extension World {
    @discardableResult
    func netctlOK(_ arguments: String...) throws -> Sandbox.Result { try sandbox.netctlOK(arguments) }

    /// `ps --json`, by container name.
    func containers() throws -> [String: [String: Any]] {
        guard let records = try sandbox.json("ps", "-a") as? [[String: Any]] else { throw SandboxError("ps -a --json is not a list") }
        return Dictionary(uniqueKeysWithValues: records.map { ($0["name"] as! String, $0) })
    }

    /// The host port a container's port is published on, from `port ls` (`80/tcp -> 0.0.0.0:NNNNN`).
    func hostPort(_ container: String) throws -> UInt16 {
        let line = try netctlOK("port", "ls", container).stdout.split(separator: "\n").first { $0.contains("0.0.0.0:") }
        guard let line, let port = UInt16(line.split(separator: ":").last!) else { throw SandboxError("no IPv4 port for \(container)") }
        return port
    }

    /// Every kernel object and process a container may hold, for "nothing is left" checks.
    func leftovers(pids: [Int32]) throws -> [String] {
        var found: [String] = []
        for link in try RouteNetlink.open(in: sandbox.hostNamespace).links() where !["lo", "uplink0", "netctl0"].contains(link.name) {
            found.append("link \(link.name)")
        }
        let table = try sandbox.nftList("table", "inet", "netctl")
        // Map elements read "elements = { tcp . 8080 : 172.17.0.2 . 80 }"; the bridges set stays with its network.
        for line in table.split(separator: "\n") where line.contains("elements = ") && line.contains(" : ") {
            found.append("map elements \(line.trimmingCharacters(in: .whitespaces))")
        }
        let mounts = slurp("/proc/\(sandbox.holder.pid)/mountinfo")
        if mounts.contains(sandbox.stateDirectory + "/containers") { found.append("mounts under the containers directory") }
        for pid in pids where kill(pid, 0) == 0 {
            let state = slurp("/proc/\(pid)/stat").split(separator: " ").dropFirst(2).first ?? "?"
            if state != "Z" { found.append("process \(pid)") }
        }
        let runc = try sandbox.run("/usr/sbin/runc", ["--root", sandbox.stateDirectory + "/runc", "list", "-q"])
        // runc lists an absent root as empty; a failure is not "nothing left".
        guard runc.ok else { throw SandboxError("runc list failed: \(runc.stderr)") }
        if !runc.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { found.append("runc containers: \(runc.stdout)") }
        let namespaces = try FileManager.default.contentsOfDirectory(atPath: sandbox.stateDirectory + "/netns")
        if !namespaces.isEmpty { found.append("namespaces \(namespaces)") }
        return found
    }

    /// The page, once the server in the container listens: `run -d` returns when the
    /// container's process has started, as Docker's does, not when its server is ready.
    func page(from namespace: NetworkNamespace, _ address: String, _ port: UInt16) throws -> String {
        for _ in 0..<100 {
            if let body = try? Traffic.httpGet(from: namespace, address, port) { return body }
            usleep(100_000)
        }
        return try Traffic.httpGet(from: namespace, address, port)
    }

    func expectNothingLeft(pids: [Int32], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let left = try leftovers(pids: pids)
        #expect(left == [], "left behind: \(left)", sourceLocation: sourceLocation)
    }

}

@Suite("End to end: netctl run", .enabled(if: Sandbox.isRoot, "needs root for namespaces, mounts and runc"), .serialized)
struct RunTests {
    init() throws {
        guard FileManager.default.fileExists(atPath: exampleImage + "/index.json") else {
            throw SandboxError("the example image is missing at \(exampleImage); run tools/build-example-image")
        }
    }

    @Test("one relay per port: `proxy serve` and a container's monitor never both serve it, whichever starts first")
    func relayOwnership() throws {
        let world = try World()
        let s = world.sandbox
        let firstLog = s.stateDirectory + "/.serve-1.log", thirdLog = s.stateDirectory + "/.serve-3.log"
        let first = try s.startNetctl(["proxy", "serve", "--drain", "0"], stderrTo: firstLog)
        var running = [first]
        defer { for serve in running { serve.kill(); _ = try? serve.wait(timeout: 10) } }
        #expect(eventually { slurp(firstLog).contains("serving") }, "\(slurp(firstLog))")
        // A second `proxy serve` on the same state is refused, naming the first.
        let second = try s.netctl("proxy", "serve")
        #expect(second.status == 1 && second.stderr.contains("already relayed by process \(first.pid)"), "\(second.stderr)")

        // A container started while `proxy serve` runs: its monitor stands aside and says so;
        // [::] to the IPv4-only container is relayed by `proxy serve`.
        let id = try world.netctlOK("run", "-d", "--name", "web", "-p", "8080:80", exampleImage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let monitorLog = s.stateDirectory + "/containers/\(id)/monitor.log"
        #expect(try world.page(from: world.neighbour, World.hostIP6, 8080).contains(pageTitle))
        #expect(slurp(monitorLog).contains("netctl proxy serve (process \(first.pid)) relays them"), "\(slurp(monitorLog))")

        // `proxy serve` stops: the monitor takes the port over.
        first.kill(SIGTERM)
        _ = try first.wait(timeout: 10)
        running = []
        #expect(eventually { (try? Traffic.httpGet(from: world.neighbour, World.hostIP6, 8080))?.contains(pageTitle) == true })

        // `proxy serve` again: it leaves the container's port to the monitor and says so.
        let third = try s.startNetctl(["proxy", "serve", "--drain", "0"], stderrTo: thirdLog)
        running = [third]
        #expect(eventually { slurp(thirdLog).contains("not relaying the proxied ports of endpoint web: its own service") },
                "\(slurp(thirdLog))")
        #expect(try world.page(from: world.neighbour, World.hostIP6, 8080).contains(pageTitle))
        try world.netctlOK("rm", "-f", "web")
    }

    @Test("run -d -p serves the page to the host and the LAN; ps, logs, port ls, stop; nothing is left")
    func detachedRunServesThePage() throws {
        let world = try World()
        let id = try world.netctlOK("run", "-d", "--name", "web", "-p", "8080:80", exampleImage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 64 && id.allSatisfy(\.isHexDigit), "prints the container ID")

        #expect(try world.page(from: world.sandbox.hostNamespace, "127.0.0.1", 8080).contains(pageTitle))
        #expect(try world.page(from: world.sandbox.hostNamespace, World.hostIP, 8080).contains(pageTitle))
        #expect(try world.page(from: world.neighbour, World.hostIP, 8080).contains(pageTitle))
        // IPv6 to an IPv4-only container: the kernel can't DNAT it; the container's monitor
        // relays it (--backend auto, the default).
        #expect(try world.page(from: world.neighbour, World.hostIP6, 8080).contains(pageTitle))

        let ps = try world.netctlOK("ps").stdout
        #expect(ps.contains("CONTAINER ID") && ps.contains(String(id.prefix(12))) && ps.contains("web"))
        #expect(ps.contains("Up ") && ps.contains("0.0.0.0:8080->80/tcp"))
        #expect(try world.netctlOK("port", "ls", "web").stdout.contains("80/tcp -> 0.0.0.0:8080"))
        try eventually { try world.netctlOK("logs", "web").stdout.contains("response:200") }
        let logs = try world.netctlOK("logs", "web").stdout
        #expect(logs.contains("serving /www on port 80"))
        #expect(logs.contains("response:200"), "httpd logs each request: \(logs)")
        let record = try #require(try world.containers()["web"])
        let pids = [record["pid"], record["monitorPID"]].compactMap { ($0 as? NSNumber)?.int32Value }
        #expect(pids.count == 2)

        try world.netctlOK("stop", "web")
        let stopped = try #require(try world.containers()["web"])
        #expect(stopped["state"] as? String == "exited" && (stopped["exitCode"] as? NSNumber)?.int32Value == 0,
                "the image's init exits 0 on SIGTERM")
        #expect(try world.netctlOK("ps").stdout.split(separator: "\n").count == 1, "ps without -a lists running ones only")
        #expect(try world.netctlOK("ps", "-a").stdout.contains("Exited (0)"))
        try eventually { try world.leftovers(pids: pids).isEmpty }
        try world.expectNothingLeft(pids: pids)
        #expect(throws: (any Error).self, "the port is closed") { try Traffic.httpGet(from: world.neighbour, World.hostIP, 8080) }

        try world.netctlOK("rm", "web")
        #expect(try world.containers().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: world.sandbox.stateDirectory + "/containers").filter { !$0.hasPrefix(".") } == [])
    }

    @Test("-P, two containers on different ports, a taken port refused, --rm, attached runs with a command")
    func publishAllTwoContainersAndConflicts() throws {
        let world = try World()
        try world.netctlOK("run", "-d", "-P", "--name", "a", exampleImage)
        let port = try world.hostPort("a")
        #expect(port >= 1024)
        #expect(try world.page(from: world.neighbour, World.hostIP, port).contains(pageTitle))

        try world.netctlOK("run", "-d", "--name", "b", "-p", "8081:80", exampleImage)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8081).contains(pageTitle))
        #expect(try world.page(from: world.neighbour, World.hostIP, port).contains(pageTitle))

        // A second container asking for b's port: a clear error; b is unaffected, c never exists.
        let before = try world.sandbox.snapshot()
        let refused = try world.sandbox.run(Sandbox.netctl, ["run", "-d", "--name", "c", "-p", "8081:80", exampleImage])
        #expect(!refused.ok)
        #expect(refused.stderr.contains("8081") && refused.stderr.contains("already published on all addresses by endpoint b"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "one line: \(refused.stderr)")
        #expect(try world.containers()["c"] == nil)
        #expect(try world.sandbox.snapshot() == before)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8081).contains(pageTitle))

        // Names are unique.
        let clash = try world.sandbox.run(Sandbox.netctl, ["run", "-d", "--name", "b", exampleImage])
        #expect(!clash.ok && clash.stderr.contains("already used by container"))

        // --rm: gone once stopped.
        try world.netctlOK("run", "-d", "--rm", "--name", "tmp", "-p", "8082:80", exampleImage)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8082).contains(pageTitle))
        try world.netctlOK("stop", "tmp")
        try eventually { try world.containers()["tmp"] == nil }
        #expect(try world.containers()["tmp"] == nil, "--rm removed it")

        // Attached, with a command and -e: output to our stdout, its exit code is ours.
        let attached = try world.sandbox.run(Sandbox.netctl, ["run", "--rm", "-e", "GREETING=hi there", exampleImage,
                                                              "/bin/sh", "-c", "echo $GREETING from $(hostname) in $(pwd); exit 3"])
        #expect(attached.status == 3, "\(attached.stderr)")
        #expect(attached.stdout.hasPrefix("hi there from ") && attached.stdout.contains(" in /www"), "the image's WorkingDir: \(attached.stdout)")

        // A detached container that ends by itself releases its endpoint and ports too.
        try world.netctlOK("run", "-d", "--name", "brief", "-p", "8083:80", exampleImage,
                           "/bin/sh", "-c", "echo one; sleep 0.5; echo two; exit 7")
        // logs -f follows the output until the container exits, then returns.
        let followed = try world.sandbox.run(Sandbox.netctl, ["logs", "-f", "brief"], timeout: 20)
        #expect(followed.ok && followed.stdout == "one\ntwo\n", "\(followed.stdout)")
        try eventually { try world.containers()["brief"]?["state"] as? String == "exited" }
        #expect((try world.containers()["brief"]?["exitCode"] as? NSNumber)?.int32Value == 7)
        #expect(try world.netctlOK("port", "ls").stdout.contains("8083") == false)
        try world.netctlOK("rm", "brief")

        // A process that ignores SIGTERM (sleep as PID 1) is killed once the timeout passes.
        try world.netctlOK("run", "-d", "--name", "stubborn", exampleImage, "sleep", "600")
        try world.netctlOK("stop", "-t", "1", "stubborn")
        #expect((try world.containers()["stubborn"]?["exitCode"] as? NSNumber)?.int32Value == 128 + SIGKILL)
        try world.netctlOK("rm", "stubborn")

        // The image's StopSignal is what stop sends: this one ends on SIGUSR1 only (as PID 1 it
        // ignores SIGTERM), so exit 0 shows USR1 was sent, 137 that it fell back to SIGKILL.
        let usr1 = world.sandbox.stateDirectory + "/usr1-image"
        try TestImage(layers: [try exampleLayer()], config: .init(
            Cmd: ["/bin/sh", "-c", "trap 'exit 0' USR1; while :; do sleep 0.1; done"], StopSignal: "SIGUSR1")).writeLayout(to: usr1)
        try world.netctlOK("run", "-d", "--name", "usr1", usr1)
        try world.netctlOK("stop", "-t", "5", "usr1")
        #expect((try world.containers()["usr1"]?["exitCode"] as? NSNumber)?.int32Value == 0)
        try world.netctlOK("rm", "usr1")
        #expect(try world.containers().keys.sorted() == ["a", "b"])

        try world.netctlOK("rm", "-f", "a", "b")
        #expect(try world.containers().isEmpty)
        try eventually { try world.leftovers(pids: []).isEmpty }
        try world.expectNothingLeft(pids: [])
    }

    @Test("missing image, corrupted blob, each hostile layer, missing runc: a clear error and nothing left")
    func refusals() throws {
        let world = try World()
        let scratch = world.sandbox.stateDirectory + "/images-under-test"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)

        // A copy of the example with one byte of its layer flipped.
        let corrupt = scratch + "/corrupt"
        try FileManager.default.copyItem(atPath: exampleImage, toPath: corrupt)
        let blobs = corrupt + "/blobs/sha256"
        let layer = try FileManager.default.contentsOfDirectory(atPath: blobs)
            .max { (try! FileManager.default.attributesOfItem(atPath: blobs + "/" + $0)[.size] as! Int) < (try! FileManager.default.attributesOfItem(atPath: blobs + "/" + $1)[.size] as! Int) }!
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: blobs + "/" + layer))
        try handle.seek(toOffset: 4096)
        let byte = try handle.read(upToCount: 1)!
        try handle.seek(toOffset: 4096)
        try handle.write(contentsOf: Data([byte[0] ^ 0xff]))
        try handle.close()

        // One image per way a layer can try to leave its root (or make a device).
        try FileManager.default.createDirectory(atPath: scratch + "/outside", withIntermediateDirectories: true)
        try TestSupport.write(Array("secret".utf8), to: scratch + "/outside/secret")
        for kind in HostileLayer.allCases {
            try TestImage(layers: [kind.layer(outside: scratch + "/outside")]).writeLayout(to: scratch + "/hostile-" + kind.rawValue)
        }

        let cases: [(arguments: [String], environment: [String: String], message: String)] = [
            (["run", "-d", "-p", "8080:80", scratch + "/missing"], [:], "no image at"),
            (["run", "-d", "-p", "8080:80", corrupt], [:], "is corrupt"),
            (["run", "-d", "-p", "8080:80", exampleImage], ["PATH": "/var/empty"], "apt-get install runc"),
            (["run", "-d", "-p", "99999:80", exampleImage], [:], "invalid port mapping"),
        ] + HostileLayer.allCases.map { (["run", "-d", "-p", "8080:80", scratch + "/hostile-" + $0.rawValue], [:], $0.message) }
        let before = try world.sandbox.snapshot()
        for (arguments, environment, message) in cases {
            let result = try world.sandbox.run(Sandbox.netctl, arguments, environment: environment)
            #expect(!result.ok, "\(arguments)")
            #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
            #expect(try world.containers().isEmpty)
            #expect(try world.sandbox.snapshot() == before, "\(arguments) changed nothing")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch + "/outside") == ["secret"], "nothing written outside")
        try world.expectNothingLeft(pids: [])
        let cached = try FileManager.default.contentsOfDirectory(atPath: world.sandbox.stateDirectory + "/images/tmp")
        #expect(cached.isEmpty, "no half-unpacked layer is kept")
    }

    @Test("gc cleans up after a container whose monitor was killed")
    func gcAfterTheMonitorDies() throws {
        let world = try World()
        try world.netctlOK("run", "-d", "--name", "orphan", "-p", "8090:80", exampleImage)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8090).contains(pageTitle))
        let record = try #require(try world.containers()["orphan"])
        let monitor = try #require((record["monitorPID"] as? NSNumber)?.int32Value)
        let pid = try #require((record["pid"] as? NSNumber)?.int32Value)
        kill(monitor, SIGKILL)
        try eventually { try world.leftovers(pids: [monitor]).contains("process \(monitor)") == false }
        // While the container runs, gc leaves it alone.
        #expect(try world.netctlOK("gc").stdout.contains("cleaned up containers") == false)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8090).contains(pageTitle))
        kill(pid, SIGKILL)
        _ = eventually { kill(pid, 0) != 0 }
        #expect(kill(pid, 0) != 0)
        #expect(try world.netctlOK("gc").stdout.contains("cleaned up containers: orphan"))
        #expect(try world.containers()["orphan"]?["state"] as? String == "exited")
        try world.expectNothingLeft(pids: [pid, monitor])
        #expect(try world.netctlOK("gc").stdout.contains("cleaned up containers") == false, "idempotent")
        try world.netctlOK("rm", "orphan")
    }

    @Test("run -it: a real terminal (tty, window size, TERM), input typed at it, the exit status; -i without -t; exec -it")
    func terminals() throws {
        let world = try World()
        let s = world.sandbox
        // `script` gives netctl a terminal of its own (40 rows, 100 columns) and types our stdin at it.
        func typed(_ input: String, _ command: String) throws -> Sandbox.Result {
            try s.run("/bin/sh", ["-c", "printf '\(input)' | script -qec 'stty rows 40 cols 100; \(command)' /dev/null"], timeout: 60)
        }
        let shell = try typed("tty; stty size; echo TERM=$TERM; exit 3\\n", "\(Sandbox.netctl) run -it --rm \(exampleImage) sh")
        #expect(shell.status == 3, "the container's exit status: \(shell.stdout) \(shell.stderr)")
        #expect(shell.stdout.contains("/dev/pts/0") && shell.stdout.contains("40 100") && shell.stdout.contains("TERM=xterm"),
                "\(shell.stdout)")
        #expect(!shell.stdout.contains("not a tty"))

        // -i alone: stdin is a pipe to the process, no terminal.
        let piped = try s.run("/bin/sh", ["-c", "echo from-stdin | \(Sandbox.netctl) run -i --rm \(exampleImage) sh -c 'cat; tty'"])
        #expect(piped.stdout.contains("from-stdin") && piped.stdout.contains("not a tty"), "\(piped.stdout) \(piped.stderr)")
        let noInput = try s.run("/bin/sh", ["-c", "echo lost | \(Sandbox.netctl) run --rm \(exampleImage) sh -c 'cat; echo done'"])
        #expect(noInput.stdout == "done\n", "without -i the process reads nothing: \(noInput.stdout)")

        // Refusals: -t without a terminal, -t with -d.
        let notTTY = try world.sandbox.run(Sandbox.netctl, ["run", "-t", "--rm", exampleImage, "true"])
        #expect(notTTY.status == 125 && notTTY.stderr.contains("not a TTY"), "\(notTTY.stderr)")
        let detached = try world.sandbox.run(Sandbox.netctl, ["run", "-dt", exampleImage])
        #expect(detached.status == 125 && detached.stderr.contains("exec -it"), "\(detached.stderr)")

        // exec -it into a running container.
        try world.netctlOK("run", "-d", "--name", "web", exampleImage)
        let exec = try typed("tty; echo in-$HOSTNAME; exit 4\\n", "\(Sandbox.netctl) exec -it web sh")
        #expect(exec.status == 4 && exec.stdout.contains("/dev/pts/") && exec.stdout.contains("in-"), "\(exec.stdout) \(exec.stderr)")
        try world.netctlOK("rm", "-f", "web")
    }
}
