import Foundation
import Glibc
import Images
import Testing
import TestSupport

private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Debian's docker-registry (the reference registry) inside a test's sandbox, with TLS from a
/// CA the test makes and htpasswd auth (tools/lib/registry.sh prepares both), and the
/// environment that points netctl at it: registries.conf making it docker.io's mirror,
/// certs.d trusting its CA, and an auth file of the test's own.
final class TestRegistry {
    let world: World
    let directory: String
    let log: String
    var environment: [String: String]

    /// `tokenPort`: Bearer tokens from tools/lib/token-service.py on that port instead of htpasswd.
    init(_ world: World, tokenPort: Int? = nil) throws {
        self.world = world
        directory = world.sandbox.stateDirectory + "/registry"
        log = directory + "/registry.log"
        let prepared = try world.sandbox.run(repositoryRoot + "/tools/lib/registry.sh",
                                             ["prepare", directory] + (tokenPort.map { ["--token", "\($0)"] } ?? []))
        guard prepared.ok else { throw SandboxError("registry.sh prepare failed: \(prepared.stderr)") }
        try """
        [[registry]]
        prefix = "docker.io"
        location = "docker.io"

        [[registry.mirror]]
        location = "127.0.0.1:5000"
        """.write(toFile: directory + "/registries.conf", atomically: true, encoding: .utf8)
        environment = ["CONTAINERS_REGISTRIES_CONF": directory + "/registries.conf",
                       "NETCTL_CERTS_D": directory + "/certs.d",
                       "REGISTRY_AUTH_FILE": directory + "/auth.json"]
        if let tokenPort {
            let tokenLog = directory + "/token.log"
            try world.sandbox.startHelper(["/bin/bash", "-c", "exec python3 \"$0\" \"$1\" \"$2\" netctl registry-secret >>\"$3\" 2>&1",
                                           repositoryRoot + "/tools/lib/token-service.py", directory, "\(tokenPort)", tokenLog])
            guard eventually(10, { slurp(tokenLog).contains("serving") }) else { throw SandboxError("the token service did not start: \(slurp(tokenLog))") }
        }
        // Its access log goes to stdout: both into the log, which the tests read.
        try world.sandbox.startHelper(["/bin/bash", "-c", "exec /usr/bin/docker-registry serve \"$0\" >>\"$1\" 2>&1",
                                       directory + "/config.yml", log])
        guard eventually(10, { (try? world.sandbox.run("/bin/bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/5000"]).ok) == true }) else {
            throw SandboxError("the registry did not start: \(slurp(log))")
        }
    }

    func push(_ layout: String, as name: String) throws {
        let pushed = try world.sandbox.run(repositoryRoot + "/tools/lib/registry.sh", ["push", directory, layout, name], timeout: 120)
        guard pushed.ok else { throw SandboxError("skopeo push of \(name) failed: \(pushed.stderr) token service: \(slurp(directory + "/token.log"))") }
    }

    @discardableResult
    func netctl(_ arguments: String...) throws -> Sandbox.Result {
        try world.sandbox.run(Sandbox.netctl, arguments, timeout: 120, environment: environment)
    }

    @discardableResult
    func netctlOK(_ arguments: String...) throws -> Sandbox.Result {
        let result = try world.sandbox.run(Sandbox.netctl, arguments, timeout: 120, environment: environment)
        guard result.ok else { throw SandboxError("netctl \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)") }
        return result
    }

    func login() throws {
        try netctlOK("login", "-u", "netctl", "-p", "registry-secret", "127.0.0.1:5000")
    }

    /// Successful GETs of one blob, from the registry's access log.
    func blobGets(_ digest: Digest) -> Int {
        slurp(log).split(separator: "\n").filter { $0.contains("GET /v2/") && $0.contains("/blobs/\(digest)") && $0.contains("\" 200 ") }.count
    }

    /// The file the registry serves a blob from.
    func storedBlob(_ digest: Digest) -> String {
        directory + "/storage/docker/registry/v2/blobs/sha256/\(digest.hex.prefix(2))/\(digest.hex)/data"
    }

    var layerCache: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: world.sandbox.stateDirectory + "/images/layers")) ?? []).sorted()
    }
    var scratch: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: world.sandbox.stateDirectory + "/images/tmp")) ?? [])
            .filter { !$0.hasSuffix(".lock") }.sorted()
    }
}

/// The example image's manifest and layer digests.
private func exampleDigests() throws -> (manifest: Digest, config: Digest, layer: Digest) {
    let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: exampleImage + "/index.json"))) as! [String: Any]
    let manifestDigest = try Digest(parsing: (index["manifests"] as! [[String: Any]])[0]["digest"] as! String)
    let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: exampleImage + "/blobs/sha256/" + manifestDigest.hex))) as! [String: Any]
    let config = try Digest(parsing: (manifest["config"] as! [String: Any])["digest"] as! String)
    let layer = try Digest(parsing: (manifest["layers"] as! [[String: Any]])[0]["digest"] as! String)
    return (manifestDigest, config, layer)
}

@Suite("End to end: images by name from a registry", .enabled(if: Sandbox.isRoot, "needs root for namespaces and runc"), .serialized)
struct PullTests {
    init() throws {
        guard FileManager.default.fileExists(atPath: exampleImage + "/index.json") else {
            throw SandboxError("the example image is missing at \(exampleImage); run tools/build-example-image")
        }
    }

    @Test("the tutorial's command: run -d -p 80:80 dockersamples/101-tutorial pulls through a TLS, htpasswd mirror of docker.io and serves the page")
    func tutorialCommand() throws {
        let world = try World()
        let registry = try TestRegistry(world)
        try registry.push(exampleImage, as: "dockersamples/101-tutorial:latest")
        let (manifest, config, layer) = try exampleDigests()

        // No credentials yet: the mirror's 401 is what the user is told, with what to do.
        let anonymous = try registry.netctl("run", "-d", "-p", "80:80", "dockersamples/101-tutorial")
        #expect(anonymous.status == 125)
        #expect(anonymous.stderr.contains("127.0.0.1:5000 requires credentials for docker.io/dockersamples/101-tutorial:latest")
                && anonymous.stderr.contains("netctl login 127.0.0.1:5000"), "\(anonymous.stderr)")
        #expect(registry.layerCache.isEmpty && registry.scratch.isEmpty, "a refused pull stores nothing")

        let wrong = try registry.netctl("login", "-u", "netctl", "-p", "wrong", "127.0.0.1:5000")
        #expect(wrong.status == 1 && wrong.stderr.contains("refused") && !FileManager.default.fileExists(atPath: registry.directory + "/auth.json"),
                "\(wrong.stderr)")
        try registry.login()
        let auth = try String(contentsOfFile: registry.directory + "/auth.json", encoding: .utf8)
        #expect(auth.contains("\"127.0.0.1:5000\"") && auth.contains(Data("netctl:registry-secret".utf8).base64EncodedString()))

        let id = try registry.netctlOK("run", "-d", "-p", "80:80", "dockersamples/101-tutorial").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 64, "stdout is the container's ID only")
        #expect(try world.page(from: world.sandbox.hostNamespace, "127.0.0.1", 80).contains("netctl 101 tutorial"))
        #expect(try world.page(from: world.neighbour, World.hostIP, 80).contains("netctl 101 tutorial"))
        #expect(registry.blobGets(layer) == 1 && registry.blobGets(config) == 1)

        let images = try registry.netctlOK("images").stdout
        #expect(images.contains("dockersamples/101-tutorial") && images.contains("latest") && images.contains(config.short) && images.contains("1.03MB"),
                "\(images)")
        let listed = try JSONSerialization.jsonObject(with: Data(try registry.netctlOK("images", "--json").stdout.utf8)) as! [[String: Any]]
        #expect(listed.count == 1 && (listed[0]["digests"] as? [String]) == ["docker.io/dockersamples/101-tutorial@\(manifest)"])

        // exec runs in the container, with its environment; a second run and a pull fetch no blob again.
        let hostname = try registry.netctlOK("exec", String(id.prefix(12)), "cat", "/etc/hostname").stdout
        #expect(hostname.trimmingCharacters(in: .whitespacesAndNewlines) == String(id.prefix(12)))
        let exitStatus = try registry.netctl("exec", String(id.prefix(12)), "sh", "-c", "exit 7")
        #expect(exitStatus.status == 7, "exec passes the command's status on")
        try registry.netctlOK("run", "-d", "--name", "second", "-p", "8080:80", "dockersamples/101-tutorial")
        let again = try registry.netctlOK("pull", "dockersamples/101-tutorial").stdout
        #expect(again.contains("Status: Image is up to date for docker.io/dockersamples/101-tutorial:latest"), "\(again)")
        #expect(again.contains("Digest: \(manifest)"))
        #expect(registry.blobGets(layer) == 1, "a blob pulled once is never fetched again")

        // rmi: refused while containers use it, then removes the image and its layer.
        let refused = try registry.netctl("rmi", "dockersamples/101-tutorial")
        #expect(refused.status == 1 && refused.stderr.contains("is used by containers"), "\(refused.stderr)")
        try registry.netctlOK("rm", "-f", String(id.prefix(12)), "second")
        let removed = try registry.netctlOK("rmi", "dockersamples/101-tutorial").stdout
        #expect(removed.contains("Untagged: docker.io/dockersamples/101-tutorial:latest") && removed.contains("Deleted: \(config)"), "\(removed)")
        #expect(registry.layerCache.isEmpty)
        #expect(try registry.netctlOK("images", "-q").stdout.isEmpty)
        try registry.netctlOK("logout", "127.0.0.1:5000")
        #expect(try registry.netctl("pull", "dockersamples/101-tutorial").stderr.contains("requires credentials"))
    }

    @Test("failures say what happened: no such tag or repository, untrusted certificate, a corrupt blob (discarded), --pull never")
    func failures() throws {
        let world = try World()
        let registry = try TestRegistry(world)
        try registry.push(exampleImage, as: "dockersamples/101-tutorial:latest")
        try registry.login()
        let (_, _, layer) = try exampleDigests()

        let tag = try registry.netctl("pull", "dockersamples/101-tutorial:nope")
        #expect(tag.status == 1 && tag.stderr.contains("manifest unknown") && tag.stderr.contains("check the tag"), "\(tag.stderr)")
        // The reference registry answers an unknown repository's manifest as MANIFEST_UNKNOWN.
        let repository = try registry.netctl("pull", "127.0.0.1:5000/nobody/here")
        #expect(repository.status == 1 && repository.stderr.contains("127.0.0.1:5000/nobody/here:latest: manifest unknown"), "\(repository.stderr)")
        let bad = try registry.netctl("pull", "Nginx")
        #expect(bad.stderr.contains("invalid reference format") && bad.stderr.contains("lowercase"), "\(bad.stderr)")
        let never = try registry.netctl("run", "--pull", "never", "dockersamples/101-tutorial")
        #expect(never.status == 125 && never.stderr.contains("no image \"docker.io/dockersamples/101-tutorial:latest\" in the store"), "\(never.stderr)")

        // Without the CA in certs.d: a TLS error that says how to trust it.
        var untrusted = registry.environment
        untrusted["NETCTL_CERTS_D"] = registry.directory + "/empty"
        let tls = try world.sandbox.run(Sandbox.netctl, ["pull", "127.0.0.1:5000/dockersamples/101-tutorial"], environment: untrusted)
        #expect(tls.status == 1 && tls.stderr.contains("TLS with 127.0.0.1:5000 failed") && tls.stderr.contains("certs.d/127.0.0.1:5000/ca.crt"),
                "\(tls.stderr)")

        // The registry serves a damaged layer (same size, one byte changed): refused, nothing kept.
        let path = registry.storedBlob(layer)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let original = bytes
        bytes[bytes.count / 2] ^= 0xff
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let corrupt = try registry.netctl("pull", "dockersamples/101-tutorial")
        #expect(corrupt.status == 1 && corrupt.stderr.contains("layer \(layer.short) from 127.0.0.1:5000 is corrupt") && corrupt.stderr.contains("discarded"),
                "\(corrupt.stderr)")
        #expect(registry.layerCache.isEmpty && registry.scratch.isEmpty, "nothing half-written stays: \(registry.scratch)")
        #expect(try registry.netctlOK("images", "-q").stdout.isEmpty)
        try Data(original).write(to: URL(fileURLWithPath: path))
        try registry.netctlOK("pull", "dockersamples/101-tutorial")
        #expect(registry.layerCache.count == 1)

        // A layer whose bytes are what the manifest says, but which climbs out of its root:
        // refused, nothing of it kept (not even the verified blob), nothing written outside.
        let outside = registry.directory + "/outside"
        try makeDirectory(outside)
        let layout = registry.directory + "/hostile"
        try TestImage(layers: [HostileLayer.dotdot.layer(outside: outside)]).writeLayout(to: layout)
        try registry.push(layout, as: "hostile:1")
        for _ in 0..<2 {
            let hostile = try registry.netctl("pull", "127.0.0.1:5000/hostile:1")
            #expect(hostile.status == 1 && hostile.stderr.contains(HostileLayer.dotdot.message), "\(hostile.stderr)")
            #expect(registry.scratch.isEmpty && registry.layerCache.count == 1, "\(registry.scratch)")
        }
        #expect(!FileManager.default.fileExists(atPath: outside + "/pwned"))
    }

    @Test("an interrupted download resumes with a Range request; a damaged partial is discarded; two pulls at once download once")
    func resumeAndConcurrency() throws {
        let world = try World()
        let registry = try TestRegistry(world)
        // Four layers of 2 MiB of noise (gzip cannot shrink them) and the example's own.
        var layers: [[UInt8]] = []
        for i in 0..<4 {
            var tar = TarWriter()
            var generator = SystemRandomNumberGenerator()
            tar.file("noise\(i)", (0..<(2 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
            layers.append(tar.finished())
        }
        let layout = registry.directory + "/multi"
        let written = try TestImage(layers: try [exampleLayer()] + layers, config: .init(Cmd: ["/serve"])).writeLayout(to: layout)
        try registry.push(layout, as: "multi:1")
        try registry.login()

        // What a killed pull leaves: the first half of a blob in the scratch directory.
        let blob = written.layerDigests[1]
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: layout + "/blobs/sha256/" + blob.hex)))
        try makeDirectory(world.sandbox.stateDirectory + "/images/tmp")
        let partial = world.sandbox.stateDirectory + "/images/tmp/blob-\(blob.hex).partial"
        try Data(full.prefix(full.count / 2)).write(to: URL(fileURLWithPath: partial))
        let resumed = try registry.netctlOK("pull", "127.0.0.1:5000/multi:1").stdout
        #expect(resumed.contains("\(blob.short): Resuming at"), "\(resumed)")
        #expect(slurp(registry.log).contains("Range") || registry.blobGets(blob) == 0, "the resumed GET is partial (206), not a 200")
        #expect(slurp(registry.log).split(separator: "\n").contains { $0.contains("/blobs/\(blob)") && $0.contains("\" 206 ") })
        #expect(registry.layerCache.count == 5 && registry.scratch.isEmpty)

        // A partial whose bytes are wrong: the digest check fails, it is discarded, the next pull succeeds.
        try registry.netctlOK("rmi", "127.0.0.1:5000/multi:1")
        var damaged = Array(full.prefix(full.count / 2))
        damaged[100] ^= 0xff
        try Data(damaged).write(to: URL(fileURLWithPath: partial))
        let failed = try registry.netctl("pull", "127.0.0.1:5000/multi:1")
        #expect(failed.status == 1 && failed.stderr.contains("is corrupt") && !FileManager.default.fileExists(atPath: partial), "\(failed.stderr)")
        try registry.netctlOK("pull", "127.0.0.1:5000/multi:1")

        // Two pulls at once into an empty store: both succeed, each blob crosses the wire once more.
        try registry.netctlOK("rmi", "127.0.0.1:5000/multi:1")
        #expect(registry.layerCache.isEmpty)
        let before = written.layerDigests.map { registry.blobGets($0) }
        let first = try world.sandbox.startNetctl(["pull", "-q", "127.0.0.1:5000/multi:1"], environment: registry.environment)
        let second = try world.sandbox.startNetctl(["pull", "-q", "127.0.0.1:5000/multi:1"], environment: registry.environment)
        #expect(try first.wait(timeout: 120) == 0 && second.wait(timeout: 120) == 0)
        let after = written.layerDigests.map { registry.blobGets($0) }
        #expect(zip(before, after).allSatisfy { $1 == $0 + 1 }, "before \(before), after \(after)")
        #expect(registry.layerCache.count == 5)
    }

    @Test("an image index: this machine's platform is picked, --platform picks another, a missing one is named; load -i and images")
    func indexAndLoad() throws {
        let world = try World()
        let registry = try TestRegistry(world)
        try registry.login()
        // An index of two images: this machine's (the example) and a riscv64 one.
        let layout = registry.directory + "/index"
        let native = try TestImage(layers: [try exampleLayer()], config: .init(Cmd: ["/serve"])).writeLayout(to: layout)
        let nativeManifest = try manifestDigest(layout)
        var other = TestImage(layers: [try exampleLayer()], config: .init(Cmd: ["/other"]))
        other.architecture = "riscv64"
        let foreign = try other.writeLayout(to: layout)
        let foreignManifest = try manifestDigest(layout)
        let nested = """
        {"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[\
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\(nativeManifest.0)","size":\(nativeManifest.1),"platform":{"os":"linux","architecture":"\(ImageStore.hostArchitecture)"}},\
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\(foreignManifest.0)","size":\(foreignManifest.1),"platform":{"os":"linux","architecture":"riscv64"}}]}
        """
        let nestedDigest = SHA256.digest(Array(nested.utf8))
        try write(Array(nested.utf8), to: layout + "/blobs/sha256/" + nestedDigest.hex)
        try write(Array("""
        {"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"\(nestedDigest)","size":\(nested.utf8.count),"annotations":{"org.opencontainers.image.ref.name":"multi"}}]}
        """.utf8), to: layout + "/index.json")
        let pushed = try world.sandbox.run("/usr/bin/skopeo", ["copy", "-q", "--all", "--dest-cert-dir", registry.directory + "/certs.d/127.0.0.1:5000",
                                                               "--dest-creds", "netctl:registry-secret", "oci:\(layout):multi",
                                                               "docker://127.0.0.1:5000/multiarch:1"], timeout: 120)
        try #require(pushed.ok, "\(pushed.stderr)")

        try registry.netctlOK("pull", "127.0.0.1:5000/multiarch:1")
        #expect(try registry.netctlOK("images", "-q", "--no-trunc").stdout.contains(native.configDigest.description))
        try registry.netctlOK("pull", "--platform", "linux/riscv64", "127.0.0.1:5000/multiarch:1")
        let ids = try registry.netctlOK("images", "-q", "--no-trunc").stdout
        #expect(ids.contains(foreign.configDigest.description) && ids.contains(native.configDigest.description),
                "the tag moved to the riscv64 image; the other stays, dangling: \(ids)")
        #expect(try registry.netctlOK("images").stdout.contains("<none>"), "the dangling image is listed as <none>")
        let missing = try registry.netctl("pull", "--platform", "linux/s390x", "127.0.0.1:5000/multiarch:1")
        #expect(missing.stderr.contains("has no linux/s390x image (it has linux/\(ImageStore.hostArchitecture), linux/riscv64)")
                && missing.stderr.contains("--platform"), "\(missing.stderr)")

        // load -i: a docker save archive's RepoTags become names, read as Docker reads them.
        let archive = registry.directory + "/saved.tar"
        try TestImage(layers: [try exampleLayer()], config: .init(Cmd: ["/bin/sh"])).writeDockerSave(to: archive, tag: "saved/app:2")
        let loaded = try registry.netctlOK("load", "-i", archive).stdout
        #expect(loaded.contains("Loaded image: docker.io/saved/app:2"), "\(loaded)")
        let table = try registry.netctlOK("images").stdout
        #expect(table.contains("saved/app") && table.contains("127.0.0.1:5000/multiarch"), "\(table)")
        let run = try registry.netctlOK("run", "--rm", "--pull", "never", "saved/app:2", "/bin/sh", "-c", "echo from-the-store")
        #expect(run.stdout.contains("from-the-store"))
    }

    @Test("Bearer tokens (Docker Hub's flow): the challenge's realm, service and scope, anonymous and with credentials")
    func tokenFlow() throws {
        let world = try World()
        let registry = try TestRegistry(world, tokenPort: 5001)
        try registry.push(exampleImage, as: "dockersamples/101-tutorial:latest")
        let tokenLog = registry.directory + "/token.log"

        // Anonymous: the token service grants nothing, so the registry still refuses.
        let anonymous = try registry.netctl("pull", "127.0.0.1:5000/dockersamples/101-tutorial")
        #expect(anonymous.status == 1 && anonymous.stderr.contains("127.0.0.1:5000 requires credentials"), "\(anonymous.stderr)")
        #expect(slurp(tokenLog).contains("token scope=repository:dockersamples/101-tutorial:pull user=-"), "\(slurp(tokenLog))")

        // Wrong credentials: the token service refuses them, and login says so.
        let wrong = try registry.netctl("login", "-u", "netctl", "-p", "nope", "127.0.0.1:5000")
        #expect(wrong.status == 1 && wrong.stderr.contains("refused"), "\(wrong.stderr)")

        try registry.login()
        try registry.netctlOK("pull", "dockersamples/101-tutorial")
        #expect(slurp(tokenLog).contains("token scope=repository:dockersamples/101-tutorial:pull user=netctl"), "\(slurp(tokenLog))")
        #expect(registry.layerCache.count == 1)
        let id = try registry.netctlOK("run", "-d", "-p", "80:80", "--pull", "never", "dockersamples/101-tutorial").stdout
        #expect(try world.page(from: world.sandbox.hostNamespace, "127.0.0.1", 80).contains("netctl 101 tutorial"))
        try registry.netctlOK("rm", "-f", String(id.prefix(12)))
    }

    @Test("a pull killed half-way resumes with a Range request; a damaged blob on the wire is refused; a plain-HTTP registry marked insecure")
    func killedAndDamagedOnTheWire() throws {
        let world = try World()
        let registry = try TestRegistry(world)
        var tar = TarWriter()
        var generator = SystemRandomNumberGenerator()
        tar.file("noise", (0..<(8 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let layout = registry.directory + "/big"
        let written = try TestImage(layers: [tar.finished()]).writeLayout(to: layout)
        try registry.push(layout, as: "big:1")
        let blob = written.layerDigests[0]

        // Two plain-HTTP proxies in front of the registry (tools/lib/test-proxy.py): one slow
        // (4 MB/s), one that flips a byte in the middle of every blob. registries.conf marks
        // them insecure, so netctl falls back from https to http for them.
        let proxyLog = registry.directory + "/proxy.log", damagingLog = registry.directory + "/damaging.log"
        for (port, extra, log) in [(5002, ["--rate", "4000000"], proxyLog), (5003, ["--flip"], damagingLog)] {
            try world.sandbox.startHelper(["/bin/bash", "-c", "exec python3 \"$0\" \"$@\" >>\"\(log)\" 2>&1",
                                           repositoryRoot + "/tools/lib/test-proxy.py", "\(port)", "https://127.0.0.1:5000",
                                           registry.directory + "/ca.crt"] + extra)
            guard eventually(10, { slurp(log).contains("serving") }) else { throw SandboxError("proxy \(port): \(slurp(log))") }
        }
        let conf = registry.directory + "/registries.conf"
        try (slurp(conf) + "\n[[registry]]\nlocation = \"127.0.0.1:5002\"\ninsecure = true\n\n[[registry]]\nlocation = \"127.0.0.1:5003\"\ninsecure = true\n")
            .write(toFile: conf, atomically: true, encoding: .utf8)
        try registry.netctlOK("login", "-u", "netctl", "-p", "registry-secret", "127.0.0.1:5002")
        try registry.netctlOK("login", "-u", "netctl", "-p", "registry-secret", "127.0.0.1:5003")

        // Killed (SIGKILL) once part of the layer is on disk.
        let partial = world.sandbox.stateDirectory + "/images/tmp/blob-\(blob.hex).partial"
        func partialSize() -> Int { ((try? FileManager.default.attributesOfItem(atPath: partial))?[.size] as? Int) ?? 0 }
        let pull = try world.sandbox.startNetctl(["pull", "-q", "127.0.0.1:5002/big:1"], environment: registry.environment)
        let caught = eventually(30) { partialSize() > 1 << 20 }
        pull.kill(SIGKILL)
        _ = try pull.wait(timeout: 10)
        let kept = partialSize()
        try #require(caught && kept < (8 << 20), "the pull was killed with \(kept) bytes on disk")
        let listed = try registry.netctlOK("images", "-q").stdout
        #expect(registry.layerCache.isEmpty && listed.isEmpty, "a killed pull stores no image")

        let resumed = try registry.netctlOK("pull", "127.0.0.1:5002/big:1").stdout
        #expect(resumed.contains("\(blob.short): Resuming at"), "\(resumed)")
        let ranged = slurp(proxyLog).split(separator: "\n").filter { $0.contains("/blobs/\(blob)") && $0.contains("range=bytes=") }
        #expect(ranged.contains { $0.hasSuffix("-> 206") }, "the rest was asked for with Range: \(slurp(proxyLog))")
        #expect(registry.layerCache.count == 1 && registry.scratch.isEmpty)
        #expect(slurp(proxyLog).contains("GET /v2/"), "fetched over plain HTTP through the insecure entry")

        // Damaged on the wire: refused by its digest, nothing kept; the registry itself is fine.
        try registry.netctlOK("rmi", "127.0.0.1:5002/big:1")
        let damaged = try registry.netctl("pull", "127.0.0.1:5003/big:1")
        #expect(damaged.status == 1 && damaged.stderr.contains("layer \(blob.short) from 127.0.0.1:5003 is corrupt")
                && damaged.stderr.contains("discarded"), "\(damaged.stderr)")
        #expect(registry.layerCache.isEmpty && registry.scratch.isEmpty, "\(registry.scratch)")
        try registry.login()
        try registry.netctlOK("pull", "127.0.0.1:5000/big:1")
        #expect(registry.layerCache.count == 1)
    }

    private func manifestDigest(_ layout: String) throws -> (String, Int) {
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: layout + "/index.json"))) as! [String: Any]
        let entry = (index["manifests"] as! [[String: Any]])[0]
        return (entry["digest"] as! String, entry["size"] as! Int)
    }
}
