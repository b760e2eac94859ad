// Benchmarks of NetworkManager's attach and detach, run in-process.
//
// They need root and change the kernel's network configuration, so they run only inside a
// private network + mount namespace (checked at start):
//
//     cd Benchmarks && unshare --net --mount swift package benchmark
//
// Everything they make lives in that namespace: a network with its bridge, namespaces
// bind-mounted under a private state directory (mkdtemp under /tmp, with a tmpfs mounted
// on it that only this mount namespace sees). Teardown removes the network (--force), the
// namespaces, the tmpfs and the directory; should the process die instead, the kernel
// objects go with the namespaces and only an empty /tmp/netctl-bench.* directory is left.

import Benchmark
import Glibc
import Logging
import NetCore
import Netlink

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal],
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
    private var tmpfsMounted = false
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

    /// Why this process must not touch the network configuration, if it must not: it
    /// shares its network or mount namespace with PID 1 (the host's).
    static func notInPrivateNamespaces() -> String? {
        if getuid() != 0 { return "the attach benchmarks need root" }
        for kind in ["net", "mnt"] {
            var mine = stat(), host = stat()
            guard stat("/proc/self/ns/\(kind)", &mine) == 0, stat("/proc/1/ns/\(kind)", &host) == 0 else {
                return "cannot compare /proc/self/ns/\(kind) with /proc/1/ns/\(kind)"
            }
            if mine.st_ino == host.st_ino && mine.st_dev == host.st_dev {
                return "refusing to run in the host's \(kind) namespace: run "
                    + "`unshare --net --mount swift package benchmark` (as root) in Benchmarks/"
            }
        }
        return nil
    }

    private init(namespaces count: Int) throws {
        var template = Array("/tmp/netctl-bench.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchError("mkdtemp: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        var partial: (() -> Void)? = { rmdir(made) }
        defer { partial?() }

        // A tmpfs only this mount namespace sees: state and namespace files vanish with it.
        guard mount("tmpfs", directory, "tmpfs", 0, "mode=0700") == 0 else {
            throw BenchError("mounting a tmpfs on \(directory): \(String(cString: strerror(errno)))")
        }
        partial = { [directory] in
            umount2(directory, Int32(MNT_DETACH))
            rmdir(directory)
        }

        var logger = Logger(label: "netctl-bench")
        logger.logLevel = .warning
        manager = try NetworkManager(stateDirectory: directory + "/state", logger: logger)
        partial = nil  // from here on, destroy() undoes everything
        tmpfsMounted = true
        do {
            try manager.createNetwork(NetworkSpec(name: Bench.network, subnet: Bench.subnet))
            networkCreated = true
            mkdir(directory + "/ns", 0o700)
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
        if tmpfsMounted {
            attempt {
                if umount2(directory, Int32(MNT_DETACH)) != 0 {
                    throw BenchError("unmounting \(directory): \(String(cString: strerror(errno)))")
                }
            }
            tmpfsMounted = false
        }
        attempt {
            if rmdir(directory) != 0 && errno != ENOENT {
                throw BenchError("removing \(directory): \(String(cString: strerror(errno)))")
            }
        }
        if let firstError { throw firstError }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
