import CProcess
import CSocket
import Foundation
import Glibc
import Netlink
import Primitives

/// A private network + mount namespace for one test: the host side of the test's world.
/// A holder process (`unshare --net --mount cat`) keeps both alive; it reads stdin, so when
/// this object goes away, or the test process dies, the pipe closes, the holder exits and
/// the kernel tears down every link, address and mount made inside. Nothing leaks.
final class Sandbox {
    let holder: Child
    /// The write end of the holder's stdin; closing it ends the sandbox.
    private var holderInput: Int32 = -1
    let stateDirectory: String
    /// The sandbox's own network namespace (the "host" for netctl).
    let hostNamespace: NetworkNamespace
    private var helpers: [Child] = []

    static var isRoot: Bool { geteuid() == 0 }

    /// The netctl binary: $NETCTL_BIN, else the debug build beside the package.
    static let netctl: String = {
        if let path = ProcessInfo.processInfo.environment["NETCTL_BIN"] { return path }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/netctl").path
    }()

    /// The environment of every netctl the sandbox runs.
    let netctlEnvironment: [String: String]

    /// `agent` false: netctl starts no agent (for tests that write the kernel's table by hand,
    /// or look at what `gc` alone does).
    init(agent: Bool = true) throws {
        var environment = ["NETCTL_STATE_DIR": ""]
        if !agent { environment["NETCTL_AGENT"] = "off" }
        guard FileManager.default.isExecutableFile(atPath: Sandbox.netctl) else {
            throw SandboxError("netctl binary not found at \(Sandbox.netctl); run `swift build` first or set NETCTL_BIN")
        }
        var pipeFDs: [Int32] = [0, 0]
        guard csock_pipe2(&pipeFDs, O_CLOEXEC) == 0 else { throw SandboxError("pipe2 failed") }
        defer { close(pipeFDs[0]) }
        holder = try Child.spawn(["/usr/bin/unshare", "--net", "--mount", "--propagation", "private", "cat"], stdin: pipeFDs[0])
        holderInput = pipeFDs[1]
        var template = Array("/tmp/netctl-e2e-XXXXXX".utf8CString)
        stateDirectory = String(cString: mkdtemp(&template)!)
        environment["NETCTL_STATE_DIR"] = stateDirectory
        netctlEnvironment = environment
        // Wait until the holder is inside its new namespace.
        let own = try NetworkNamespace.current().identity
        var entered: NetworkNamespace?
        for _ in 0..<2000 {  // up to 10 s on a loaded machine
            if let ns = try? NetworkNamespace(pid: holder.pid), ns.identity != own { entered = ns; break }
            usleep(5_000)
        }
        guard let entered else { throw SandboxError("the sandbox holder did not enter a new namespace") }
        hostNamespace = entered
        let rt = try RouteNetlink.open(in: hostNamespace)
        try rt.perform(.setLink(index: try rt.link(named: "lo")!.index, LinkChange(up: true)))
    }

    deinit {
        // Containers started by `netctl run` outlive the command (their monitors run on):
        // remove them while the sandbox still exists, also when a test failed half-way.
        let containers = stateDirectory + "/containers"
        if let names = try? FileManager.default.contentsOfDirectory(atPath: containers).filter({ !$0.hasPrefix(".") }), !names.isEmpty {
            _ = try? run(Sandbox.netctl, ["rm", "-f"] + names, timeout: 30)
        }
        for helper in helpers {
            helper.kill()
            _ = try? helper.wait(timeout: 5)
        }
        // The name server a command started (its PID is in its lock file).
        if let text = try? String(contentsOfFile: stateDirectory + "/agent.lock", encoding: .utf8),
           let identity = ProcessIdentity(encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), identity.isAlive {
            kill(identity.pid, SIGKILL)
        }
        close(holderInput)
        _ = try? holder.wait(timeout: 10)
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    /// A path inside the sandbox's mount namespace, as this (outside) process sees it.
    func outsidePath(_ path: String) -> String { "/proc/\(holder.pid)/root\(path)" }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var ok: Bool { status == 0 }
    }

    /// Runs a command inside the sandbox (network and mount namespaces), with a time limit.
    @discardableResult
    func run(_ executable: String, _ arguments: [String], timeout: TimeInterval = 60,
             environment: [String: String] = [:]) throws -> Result {
        // Output goes to files, so a chatty child never blocks on a full pipe.
        let outPath = "\(stateDirectory)/.out-\(UInt32.random(in: 0...UInt32.max))", errPath = outPath + ".err"
        let outFD = open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let errFD = open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(outFD); close(errFD); unlink(outPath); unlink(errPath) }
        let child = try Child.spawn(["/usr/bin/nsenter", "--target", "\(holder.pid)", "--net", "--mount", "--", executable] + arguments,
                                    stdout: outFD, stderr: errFD,
                                    environment: environment.merging(netctlEnvironment) { $1 })
        let status = try child.wait(timeout: timeout)
        let stdout = slurp(outPath), stderr = slurp(errPath)
        return Result(status: status, stdout: stdout, stderr: stderr)
    }

    /// Starts netctl inside the sandbox without waiting (for concurrency tests); output discarded.
    func startNetctl(_ arguments: [String], environment: [String: String] = [:]) throws -> Child {
        try Child.spawn(["/usr/bin/nsenter", "--target", "\(holder.pid)", "--net", "--mount", "--", Sandbox.netctl] + arguments,
                        environment: environment.merging(netctlEnvironment) { $1 })
    }

    /// Starts netctl inside the sandbox without waiting; its stderr goes to `log` (a path
    /// outside the sandbox's mount namespace is fine: the file is opened here).
    func startNetctl(_ arguments: [String], stderrTo log: String) throws -> Child {
        let fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SandboxError("cannot open \(log)") }
        defer { close(fd) }
        return try Child.spawn(["/usr/bin/nsenter", "--target", "\(holder.pid)", "--net", "--mount", "--", Sandbox.netctl] + arguments,
                               stderr: fd, environment: netctlEnvironment)
    }

    /// Runs netctl inside the sandbox.
    @discardableResult
    func netctl(_ arguments: String...) throws -> Result {
        try run(Sandbox.netctl, arguments)
    }

    /// Runs netctl and fails the test (by throwing) if it fails.
    @discardableResult
    func netctlOK(_ arguments: String...) throws -> Result { try netctlOK(arguments) }

    @discardableResult
    func netctlOK(_ arguments: [String]) throws -> Result {
        let result = try run(Sandbox.netctl, arguments)
        guard result.ok else {
            throw SandboxError("netctl \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
        }
        return result
    }

    /// netctl with --json, decoded.
    func json(_ arguments: String...) throws -> Any {
        let result = try run(Sandbox.netctl, arguments + ["--json"])
        guard result.ok else { throw SandboxError("netctl \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        return try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
    }

    /// Starts a long-running program inside the sandbox (in the network namespace at
    /// `netns`, if given), stopped (by PID) when the sandbox goes; its stderr to `log`.
    @discardableResult
    func startHelper(_ argv: [String], netns: String? = nil, log: String? = nil) throws -> Child {
        let fd = log.map { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) } ?? -1
        defer { if fd >= 0 { close(fd) } }
        let enter = ["/usr/bin/nsenter", "--target", "\(holder.pid)", "--net", "--mount", "--"]
        let command = netns.map { ["/usr/bin/nsenter", "--net=" + $0] + argv } ?? argv
        let child = try Child.spawn(enter + command, stderr: fd)
        helpers.append(child)
        return child
    }

    /// Starts a long-running "container" process in a new network namespace inside the
    /// sandbox; returns its PID as the sandbox sees... and as the host sees it (the
    /// sandbox shares our PID namespace).
    func startContainerProcess() throws -> Int32 {
        let child = try Child.spawn(["/usr/bin/nsenter", "--target", "\(holder.pid)", "--net", "--mount", "--",
                                     "/usr/bin/unshare", "--net", "sleep", "120"])
        helpers.append(child)
        // nsenter execs unshare, which execs sleep: one PID throughout.
        let pid = child.pid
        for _ in 0..<2000 {  // up to 10 s on a loaded machine
            if let ns = try? NetworkNamespace(pid: pid), ns.identity != hostNamespace.identity,
               readFile("/proc/\(pid)/comm")?.hasPrefix("sleep") == true {
                return pid
            }
            usleep(5_000)
        }
        throw SandboxError("container process did not start")
    }

    /// Makes a bind-mounted namespace file inside the sandbox, like `ip netns add` would.
    func makeNamespaceFile(_ name: String) throws -> String {
        let path = "\(stateDirectory)/ns-\(name)"
        try run("/usr/bin/touch", [path])
        let made = try run("/usr/bin/unshare", ["--net=\(path)", "true"])
        guard made.ok else { throw SandboxError("unshare --net=\(path) failed: \(made.stderr)") }
        return path
    }

    /// Links in the sandbox's host namespace, by name.
    func hostLinks() throws -> [String: Link] {
        Dictionary(uniqueKeysWithValues: try RouteNetlink.open(in: hostNamespace).links().map { ($0.name, $0) })
    }

    /// `nft list ...` of netctl's objects: "" when they do not exist; any other failure of
    /// nft is thrown, so a check of what is left never passes because nft could not look.
    func nftList(_ arguments: String...) throws -> String {
        let result = try run("/usr/sbin/nft", ["list"] + arguments)
        if result.ok { return result.stdout }
        guard result.stderr.contains("No such file or directory") else {
            throw SandboxError("nft list \(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
        return ""
    }

    /// What a failed command must leave untouched: links, addresses, endpoints, networks,
    /// namespaces, netctl's nftables table and the sysctls netctl sets.
    func snapshot() throws -> String {
        let table = try nftList("table", "inet", "netctl")
        let sysctls = try run("/bin/sh", ["-c", "grep -r . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/route_localnet "
                                              + "/proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/bridge 2>/dev/null; true"])
        let rt = try RouteNetlink.open(in: hostNamespace)
        let links = try rt.links().map { "\($0.name) up=\($0.isUp) master=\($0.master ?? 0)" }.sorted()
        let addresses = try rt.addresses().map { "\($0.index) \($0.address)/\($0.prefixLength)" }.sorted()
        let networks = try run(Sandbox.netctl, ["network", "ls", "--json"]).stdout
        let endpoints = try run(Sandbox.netctl, ["endpoints", "--json"]).stdout
        let namespaces = try FileManager.default.contentsOfDirectory(atPath: outsidePath(stateDirectory + "/netns")).sorted()
        return ([links, addresses, [networks, endpoints], namespaces, [table, sysctls.stdout]] as [[String]]).map { $0.joined(separator: "\n") }
            .joined(separator: "\n--\n")
    }
}

struct SandboxError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Binds the calling thread to one CPU (threads it starts inherit that).
func bindThread(toCPU cpu: Int32) -> Bool {
    var cpu = cpu
    return cproc_set_thread_cpus(pthread_self(), &cpu, 1) == 0
}

/// Waits (bounded, polling every 50 ms) until `body` holds; returns whether it did. The
/// expectations after it say what did not.
@discardableResult
func eventually(_ seconds: Double = 10, _ body: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try body() { return true }
        usleep(50_000)
    }
    return try body()
}
