import Foundation
import Glibc
import Netlink
import Testing

/// Debian's Podman 4.3 inside a sandbox, rootful, with its configuration, storage and run
/// directories of its own (tmpfs over /run and /etc/containers in the sandbox's mount
/// namespace), runc and cgroupfs, and netctl as its network backend, installed the way a
/// user does it: tools/podman-backend.
final class PodmanBed {
    static let available = FileManager.default.isExecutableFile(atPath: "/usr/bin/podman")
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let netavark = URL(fileURLWithPath: Sandbox.netctl).deletingLastPathComponent().appendingPathComponent("netctl-netavark").path

    let world: World
    let directory: String
    var sandbox: Sandbox { world.sandbox }

    init() throws {
        world = try World()
        let s = world.sandbox
        directory = s.stateDirectory + "/.podman"
        try FileManager.default.createDirectory(atPath: directory + "/tmp", withIntermediateDirectories: true)
        for mountpoint in ["/run", "/etc/containers"] {
            try check(s.run("/usr/bin/mount", ["-t", "tmpfs", "tmpfs", mountpoint]), "mount \(mountpoint)")
        }
        try check(s.run("/usr/bin/mkdir", ["-p", "/run/netns"]), "mkdir /run/netns")
        // This machine's open-files limit is below Podman's default (runc would fail to set
        // it), and crun refuses its hybrid cgroups.
        try """
            [containers]
            default_ulimits = []
            [engine]
            cgroup_manager = "cgroupfs"
            runtime = "runc"
            events_logger = "file"
            tmp_dir = "\(directory)/tmp"
            [network]
            network_backend = "netavark"
            network_config_dir = "\(directory)/networks"

            """.write(toFile: s.outsidePath("/etc/containers/containers.conf"), atomically: false, encoding: .utf8)
        try """
            [storage]
            driver = "vfs"
            runroot = "\(directory)/runroot"
            graphroot = "\(directory)/root"

            """.write(toFile: s.outsidePath("/etc/containers/storage.conf"), atomically: false, encoding: .utf8)
        // Loading an archive of our own needs a signature policy; the host's files are hidden.
        try #"{"default": [{"type": "insecureAcceptAnything"}]}"#
            .write(toFile: s.outsidePath("/etc/containers/policy.json"), atomically: false, encoding: .utf8)
        try install()
        let archive = directory + "/image.tar"
        try check(s.run("/usr/bin/tar", ["-C", exampleImage, "-cf", archive, "."]), "tar")
        try check(podman("load", "-q", "-i", archive), "podman load")
    }

    deinit {
        // Every container and its conmon gone before the sandbox is.
        _ = try? podman("rm", "-af", "-t", "0")
        _ = eventually(20) { (try? self.podman("ps", "-aq").stdout.isEmpty) ?? true }
    }

    func install() throws {
        try check(sandbox.run(PodmanBed.repository + "/tools/podman-backend",
                              ["install", "--binary", PodmanBed.netavark, "--helper-dir", directory + "/helper",
                               "--state-dir", sandbox.stateDirectory]), "podman-backend install")
    }

    func uninstall() throws {
        try check(sandbox.run(PodmanBed.repository + "/tools/podman-backend", ["uninstall", "--helper-dir", directory + "/helper"]),
                  "podman-backend uninstall")
    }

    @discardableResult
    func podman(_ arguments: String...) throws -> Sandbox.Result {
        try sandbox.run("/usr/bin/podman", arguments, timeout: 120)
    }

    @discardableResult
    func podmanOK(_ arguments: String...) throws -> Sandbox.Result { try podmanOK(arguments) }

    @discardableResult
    func podmanOK(_ arguments: [String]) throws -> Sandbox.Result {
        try check(try sandbox.run("/usr/bin/podman", arguments, timeout: 120), "podman \(arguments.joined(separator: " "))")
    }

    @discardableResult
    func check(_ result: Sandbox.Result, _ what: String) throws -> Sandbox.Result {
        guard result.ok else { throw SandboxError("\(what) failed (\(result.status)): \(result.stderr) \(result.stdout)") }
        return result
    }

    var image: String { get throws { try podmanOK("images", "-q").stdout.split(separator: "\n").first.map(String.init) ?? "" } }

    /// `podman rm -f`, then until Podman lists it no more (its cleanup runs after the command returns).
    func remove(_ names: String...) throws {
        try podmanOK(["rm", "-f", "-t", "0"] + names)
        #expect(eventually(20) { names.allSatisfy { name in (try? self.podman("ps", "-a", "--format", "{{.Names}}").stdout)?
            .split(separator: "\n").contains(Substring(name)) == false } })
    }

    /// busybox wget inside a container: the page, or nil (its error in `error`). (No -T:
    /// this static busybox's wget crashes with it.)
    func fetch(in container: String, _ url: String) throws -> (page: String?, error: String) {
        let result = try podman("exec", container, "wget", "-q", "-O", "-", url)
        return (result.ok ? result.stdout : nil, result.stderr)
    }
}

@Suite("End to end: Podman 4.3 on netctl (netctl-netavark)", .enabled(if: Sandbox.isRoot && PodmanBed.available, "needs root and podman"),
       .serialized)
struct PodmanTests {
    @Test("podman run -d -p: the page on 127.0.0.1, the bridge address and from a neighbour; podman port; rm leaves nothing")
    func runPublish() throws {
        let bed = try PodmanBed()
        let world = bed.world
        try bed.podmanOK("run", "-d", "--name", "web", "-p", "8080:80", try bed.image)
        #expect(try world.page(from: world.sandbox.hostNamespace, "127.0.0.1", 8080).contains("netctl 101 tutorial"))
        #expect(try world.page(from: world.sandbox.hostNamespace, "10.88.0.1", 8080).contains("netctl 101 tutorial"))
        #expect(try world.page(from: world.neighbour, World.hostIP, 8080).contains("netctl 101 tutorial"))
        #expect(try bed.podmanOK("port", "web").stdout.contains("80/tcp -> 0.0.0.0:8080"))
        // netctl made it: its endpoint, its map element.
        #expect(try world.netctlOK("endpoints").stdout.contains("web.podman"))
        #expect(try world.nft("list", "map", "inet", "netctl", "v4_any").contains("tcp . 8080 : 10.88.0.2 . 80"))
        try bed.remove("web")
        #expect(eventually { (try? world.netctlOK("endpoints").stdout.split(separator: "\n").count) == 1 }, "no endpoint left")
        #expect(try world.netctlOK("network", "ls").stdout.split(separator: "\n").count == 1, "podman's network goes with its last endpoint")
        let links = try RouteNetlink.open(in: world.sandbox.hostNamespace).links().map(\.name).filter { !["lo", "uplink0"].contains($0) }
        #expect(links.isEmpty, "\(links)")
        #expect(try !world.nft("list", "table", "inet", "netctl").contains(" : 10.88."), "no map element left")
    }

    @Test("two networks, --network a,b, aliases, names within a network only, network connect and disconnect; macvlan refused")
    func networksAndNames() throws {
        let bed = try PodmanBed()
        let image = try bed.image
        try bed.podmanOK("network", "create", "--subnet", "10.89.1.0/24", "a")
        try bed.podmanOK("network", "create", "--subnet", "10.89.2.0/24", "b")
        try bed.podmanOK("run", "-d", "--name", "db", "--network", "a", "--network-alias", "mysql", image)
        try bed.podmanOK("run", "-d", "--name", "app", "--network", "a,b", image)
        try bed.podmanOK("run", "-d", "--name", "other", "--network", "b", image)
        let fromApp = try bed.fetch(in: "app", "http://mysql/")
        #expect(fromApp.page?.contains("netctl 101 tutorial") == true, "\(fromApp.error)")
        #expect(try bed.fetch(in: "app", "http://db/").page != nil, "by container name too")
        let resolv = try bed.podmanOK("exec", "app", "cat", "/etc/resolv.conf").stdout
        #expect(resolv.contains("nameserver 10.89.1.1") && resolv.contains("nameserver 10.89.2.1"), "\(resolv)")
        // other shares b with app, not a with db.
        let fromOther = try bed.fetch(in: "other", "http://mysql/")
        #expect(fromOther.page == nil && fromOther.error.contains("bad address"), "\(fromOther)")
        #expect(try bed.fetch(in: "other", "http://app/").page != nil)
        // db joins b with another alias: other reaches it; then leaves again.
        try bed.podmanOK("network", "connect", "--alias", "store", "b", "db")
        #expect(try bed.fetch(in: "other", "http://store/").page?.contains("netctl 101 tutorial") == true)
        try bed.podmanOK("network", "disconnect", "b", "db")
        #expect(try bed.fetch(in: "other", "http://store/").page == nil)
        #expect(try bed.fetch(in: "app", "http://mysql/").page != nil, "db still on a")
        // What netctl does not serve: Podman shows netctl's one line.
        try bed.podmanOK("network", "create", "-d", "macvlan", "-o", "parent=lo", "--subnet", "10.89.3.0/24", "mv")
        let refused = try bed.podman("run", "-d", "--name", "mvc", "--network", "mv", image)
        #expect(!refused.ok && refused.stderr.contains("netctl serves bridge networks only"), "\(refused.stderr)")
        _ = try? bed.podman("rm", "-f", "mvc")
        try bed.remove("db", "app", "other")
        #expect(eventually { (try? bed.world.netctlOK("endpoints").stdout.split(separator: "\n").count) == 1 })
    }

    @Test("after `nft flush ruleset` the ports come back by themselves, and with podman network reload; uninstall gives Podman its own netavark")
    func reloadAndUninstall() throws {
        let bed = try PodmanBed()
        let world = bed.world
        let image = try bed.image
        try bed.podmanOK("run", "-d", "--name", "one", "-p", "8081:80", image)
        try bed.podmanOK("run", "-d", "--name", "two", "-p", "8082:80", image)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8081).contains("netctl 101 tutorial"))
        // netctl's agent puts the table back by itself; Podman's reload works as well.
        _ = try world.nft("flush", "ruleset")
        #expect(try world.page(from: world.neighbour, World.hostIP, 8082).contains("netctl 101 tutorial"))
        _ = try world.nft("flush", "ruleset")
        try bed.podmanOK("network", "reload", "--all")
        for port: UInt16 in [8081, 8082] {
            #expect(try world.page(from: world.neighbour, World.hostIP, port).contains("netctl 101 tutorial"), "port \(port)")
        }
        try bed.remove("one", "two")
        // Back to Podman's own netavark: nothing of netctl's is made.
        try bed.uninstall()
        try bed.podmanOK("run", "-d", "--name", "own", "-p", "8083:80", image)
        #expect(try world.page(from: world.neighbour, World.hostIP, 8083).contains("netctl 101 tutorial"))
        #expect(try world.netctlOK("endpoints").stdout.split(separator: "\n").count == 1, "netctl made no endpoint")
        try bed.remove("own")
    }
}
