// Benchmarks of NetworkManager's attach and detach, run in-process.
//
// They need root and change the kernel's network configuration, so they run only inside a
// private network + mount namespace (checked at start: they refuse to run otherwise):
//
//     cd Benchmarks && unshare --net --mount sh -c 'ip link set lo up && exec swift package benchmark'
//
// (`lo` is for SwiftPM, not for the benchmarks: in a namespace whose loopback is down,
// Foundation cannot make CFSocket's wakeup socket pair and `swift package` hangs.)
//
// Everything they make lives in those namespaces: one network with its bridge, and empty
// network namespaces bind-mounted under a private state directory (mkdtemp under /tmp, on
// disk as /var/lib/netctl would be). Teardown, and an atexit hook should a benchmark stop
// half-way, remove the network (force), the namespaces and the directory. Were the process
// killed, the kernel objects and the mounts would still go with the namespaces; only the
// /tmp/netctl-bench.* directory would be left.

import Benchmark
import Glibc
import Logging
import NetCore
import Netlink

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock],
        timeUnits: .microseconds,
        warmupIterations: 1,
        maxDuration: .seconds(10),
        maxIterations: 200
    )

    // One endpoint attached into an existing namespace: veth pair with its peer created in
    // the namespace, address, lo and peer up, default route. Only the attach is measured;
    // the detach that makes room for the next iteration is not.
    Benchmark("attach") { benchmark in
        guard let bench = Bench.current(benchmark) else { return }
        do {
            benchmark.startMeasurement()
            let endpoint = try bench.manager.attach(AttachRequest(
                network: Bench.network, target: .path(bench.namespaces[0]), name: "bench-attach"))
            benchmark.stopMeasurement()
            try bench.manager.detach([endpoint.name])
        } catch {
            benchmark.stopMeasurement()
            benchmark.error("attach: \(error)")
        }
    } setup: {
        try Bench.start(namespaces: 1)
    } teardown: {
        try Bench.finish()
    }

    // 100 endpoints, one per namespace, attached without measuring; then the one
    // detach([...]) call that removes them all is measured.
    Benchmark("detach-100-batched", configuration: .init(maxDuration: .seconds(10), maxIterations: 50)) { benchmark in
        guard let bench = Bench.current(benchmark) else { return }
        var attached: [String] = []
        do {
            for (i, path) in bench.namespaces.enumerated() {
                attached.append(try bench.manager.attach(AttachRequest(
                    network: Bench.network, target: .path(path), name: "bench-\(i)")).name)
            }
            benchmark.startMeasurement()
            try bench.manager.detach(attached)
            benchmark.stopMeasurement()
        } catch {
            benchmark.stopMeasurement()
            benchmark.error("detach-100-batched: \(error)")
            _ = try? bench.manager.detach(attached)
        }
    } setup: {
        try Bench.start(namespaces: 100)
    } teardown: {
        try Bench.finish()
    }
}

/// The state one benchmark works in: a private state directory, a NetworkManager on it,
/// one network and some empty network namespaces. Benchmarks run one at a time.
final class Bench {
    static let network = "bench"
    static let subnet = "10.231.0.0/16"

    nonisolated(unsafe) private static var live: Bench?
    nonisolated(unsafe) private static var startError: String?
    nonisolated(unsafe) private static var atexitRegistered = false

    let directory: String
    let manager: NetworkManager
    var namespaces: [String] = []
    private var networkCreated = false

    /// The current bench, or nil after reporting through `benchmark.error` why there is none.
    static func current(_ benchmark: Benchmark) -> Bench? {
        if let live { return live }
        benchmark.error(startError ?? "benchmark setup did not run")
        return nil
    }

    /// Sets up a bench with `count` namespaces. A failure is reported by the benchmark
    /// itself (`current`), after whatever was made has been removed again.
    static func start(namespaces count: Int) throws {
        try? finish()
        startError = nil
        if !atexitRegistered {
            atexitRegistered = true
            atexit { try? Bench.finish() }  // e.g. a benchmark that fails mid-way
        }
        if let problem = notInPrivateNamespaces() {
            startError = problem
            return
        }
        do {
            live = try Bench(namespaces: count)
        } catch {
            startError = "setup failed: \(error)"
        }
    }

    static func finish() throws {
        guard let bench = live else { return }
        live = nil
        try bench.destroy()
    }

    /// Why this process must not touch the network configuration, if it must not: not
    /// root, or no ancestor process (PID 1 included, when readable) lives in another network
    /// and another mount namespace, i.e. nothing shows these namespaces to be private ones.
    static func notInPrivateNamespaces() -> String? {
        if getuid() != 0 { return "the attach benchmarks need root" }
        let hint = "run `unshare --net --mount sh -c 'ip link set lo up && exec swift package benchmark'` (as root) in Benchmarks/"
        for kind in ["net", "mnt"] {
            guard let mine = namespaceIdentity(pid: getpid(), kind) else {
                return "cannot read /proc/self/ns/\(kind)"
            }
            var ancestor = parentPID(of: getpid())
            var privateOne = false
            for _ in 0..<128 {  // the chain of ancestors is short; bound it anyway
                guard let pid = ancestor, pid > 0 else { break }
                // Unreadable (e.g. PID 1 on a sandboxed host): not evidence either way.
                if let theirs = namespaceIdentity(pid: pid, kind), theirs != mine {
                    privateOne = true
                    break
                }
                ancestor = pid == 1 ? nil : parentPID(of: pid)
            }
            if !privateOne {
                return "refusing to run in a \(kind) namespace shared with every ancestor process: \(hint)"
            }
        }
        return nil
    }

    private static func namespaceIdentity(pid: pid_t, _ kind: String) -> [UInt64]? {
        var st = stat()
        guard stat("/proc/\(pid)/ns/\(kind)", &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino)]
    }

    private static func parentPID(of pid: pid_t) -> pid_t? {
        let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<64 {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("PPid:") {
            return pid_t(String(line.dropFirst(5).filter { !$0.isWhitespace }))
        }
        return nil
    }

    private init(namespaces count: Int) throws {
        var template = Array("/tmp/netctl-bench.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchError("mkdtemp: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        var logger = Logger(label: "netctl-bench")
        logger.logLevel = .warning  // as the CLI without --debug
        do {
            manager = try NetworkManager(stateDirectory: directory + "/state", logger: logger)
        } catch {
            Bench.removeTree(directory)
            throw error
        }
        do {
            try manager.createNetwork(NetworkSpec(name: Bench.network, subnet: Bench.subnet))
            networkCreated = true
            guard mkdir(directory + "/ns", 0o700) == 0 else {
                throw BenchError("mkdir \(directory)/ns: \(String(cString: strerror(errno)))")
            }
            for i in 0..<count {
                let path = "\(directory)/ns/ns\(i)"
                try NetworkNamespace.create(at: path)
                namespaces.append(path)
            }
        } catch {
            try? destroy()
            throw error
        }
    }

    /// Removes everything this bench made; goes on past failures and reports the first.
    private func destroy() throws {
        var firstError: Error?
        func attempt(_ body: () throws -> Void) {
            do { try body() } catch { if firstError == nil { firstError = error } }
        }
        if networkCreated {
            attempt { try manager.removeNetwork(named: Bench.network, force: true) }
            networkCreated = false
        }
        for path in namespaces { attempt { try NetworkNamespace.remove(at: path) } }
        namespaces = []
        attempt {
            if !Bench.removeTree(directory) { throw BenchError("could not remove all of \(directory)") }
        }
        if let firstError { throw firstError }
    }

    /// Removes the state directory: the state database and its journal files, the namespace
    /// placeholders (unmounted first, in case one is still mounted) and the directories.
    /// Only these two levels exist; nothing is followed out of the directory.
    @discardableResult
    static func removeTree(_ directory: String) -> Bool {
        var ok = true
        for sub in ["ns", "state/netns", "state"] {
            let path = "\(directory)/\(sub)"
            for name in listDirectoryEntries(path) {
                let file = "\(path)/\(name)"
                var st = stat()
                guard lstat(file, &st) == 0 else { continue }
                if (st.st_mode & S_IFMT) == S_IFDIR { continue }  // removed in its own turn
                if sub != "state" { _ = umount2(file, Int32(MNT_DETACH)) }
                if unlink(file) != 0 && errno != ENOENT { ok = false }
            }
            if rmdir(path) != 0 && errno != ENOENT { ok = false }
        }
        if rmdir(directory) != 0 && errno != ENOENT { ok = false }
        return ok
    }

    private static func listDirectoryEntries(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        for _ in 0..<100_000 {
            guard let entry = readdir(dir) else { break }
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
