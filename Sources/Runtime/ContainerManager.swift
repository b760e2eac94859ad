import CFilesystem
import CProcess
import CSocket
import FoundationEssentials
import Glibc
import Primitives
import Images
import Logging
import NetCore
import Agent
import ProxyService
import Synchronization
import Registry

/// What `netctl run` asks for.
public struct RunRequest: Sendable {
    public var image: String
    public var name: String?
    /// Replaces the image's Cmd (the Entrypoint stays).
    public var command: [String]
    /// `KEY=VALUE`, or `KEY` to copy it from this process's environment.
    public var environment: [String]
    /// Docker `-p` specs.
    public var ports: [String]
    /// `-P`: every exposed port on a free host port.
    public var publishAll: Bool
    /// The networks to join, in order (the first holds the default route unless another has
    /// a higher gateway priority); empty: the default network.
    public var networks: [String]
    /// Network aliases (`--network-alias`), on every network it joins.
    public var aliases: [String]
    /// Addresses and MAC on its first network.
    public var ip: String?
    public var ip6: String?
    public var mac: String?
    /// `--hostname` (default: the short ID), `--add-host NAME:IP`, and `--dns`,
    /// `--dns-search`, `--dns-option` as Docker reads them.
    public var hostname: String?
    public var extraHosts: [String]
    public var dns: [String]
    public var dnsSearch: [String]
    public var dnsOptions: [String]
    public var detach: Bool
    public var autoRemove: Bool
    public var portBackend: PortBackend
    /// `-t`: the container's process gets a terminal, relayed to ours (attached runs only).
    public var tty = false
    /// `-i`: our stdin goes to the container's process.
    public var interactive = false
    /// When to pull an image given by name (`--pull`), and which platform's (`--platform`).
    public var pull: ImageLibrary.PullPolicy = .missing
    public var platform: Platform?

    public init(image: String, name: String? = nil, command: [String] = [], environment: [String] = [], ports: [String] = [],
                publishAll: Bool = false, networks: [String] = [], aliases: [String] = [], ip: String? = nil, ip6: String? = nil,
                mac: String? = nil, hostname: String? = nil, extraHosts: [String] = [], dns: [String] = [],
                dnsSearch: [String] = [], dnsOptions: [String] = [], detach: Bool = false, autoRemove: Bool = false,
                portBackend: PortBackend = .auto) {
        self.image = image; self.name = name; self.command = command; self.environment = environment; self.ports = ports
        self.publishAll = publishAll; self.networks = networks; self.aliases = aliases; self.ip = ip; self.ip6 = ip6
        self.mac = mac; self.hostname = hostname; self.extraHosts = extraHosts; self.dns = dns; self.dnsSearch = dnsSearch
        self.dnsOptions = dnsOptions; self.detach = detach; self.autoRemove = autoRemove; self.portBackend = portBackend
    }
}

/// Runs images with runc on netctl networking, the way `docker run` does: the image is
/// verified and unpacked once, each container gets its own root filesystem and a network
/// endpoint (with its published ports), and a monitor process owns the container's
/// lifetime: it starts it, reaps it, and removes its endpoint, ports and mounts when it
/// exits, however it exits. `gc` cleans up after a monitor that was killed.
public final class ContainerManager {
    public let stateDirectory: String
    let store: ContainerStore
    let images: ImageStore
    /// Networking, held for the manager's lifetime (one state connection, one netlink socket).
    public let network: NetworkManager
    let logger: Logger
    /// The program run as `<monitorExecutable> _monitor --state-dir DIR ID`; it must call
    /// `runMonitor(id:readyFD:)`. Defaults to the running executable (netctl has that command).
    public var monitorExecutable: String
    /// netctl's agent (`netctl-agent`: names, the firewall watch), started with the first network.
    public var agent = Agent.defaultBinary()
    /// Told each step of a pull that `run` makes.
    public var pullProgress: @Sendable (PullEvent) -> Void = { _ in }
    /// Where names are pulled from and with which credentials (`--authfile`).
    public var credentials = CredentialStore.standard()

    /// Images by name over this manager's store: registries.conf is read when first needed,
    /// so a path-only run never depends on it.
    public func imageLibrary() throws -> ImageLibrary {
        ImageLibrary(store: images, configuration: try RegistryConfiguration.load(), credentials: credentials)
    }

    /// The image store of a state directory, without the containers and networks: what
    /// `pull`, `images`, `load` and `login` need (no network state is opened for them).
    public static func imageLibrary(stateDirectory: String = NetworkManager.defaultStateDirectory,
                                    credentials: CredentialStore = .standard(),
                                    configuration: RegistryConfiguration? = nil) throws -> ImageLibrary {
        do { try makeDirectories(stateDirectory, mode: 0o700) } catch {
            throw RuntimeError.io(what: "cannot create \(stateDirectory)", errno: (error as? SystemError)?.code ?? EIO)
        }
        return ImageLibrary(store: try ImageStore(directory: stateDirectory + "/images"),
                            configuration: try configuration ?? RegistryConfiguration.load(), credentials: credentials)
    }

    /// `rmi`: refused for an image a container uses (unless `force`, which untags it), and
    /// never deletes a layer a container's root filesystem is built on.
    public func removeImage(_ text: String, force: Bool) throws -> [ImageLibrary.Removal] {
        let library = try imageLibrary()
        let records = store.all()
        let catalog = images.catalog()
        var inUse = Set<Digest>()
        for record in records {
            if let layers = record.layers { inUse.formUnion(layers.compactMap { try? Digest(hex: $0) }) }
            else if let stored = catalog.first(where: { $0.id.description == record.imageID }) { inUse.formUnion(stored.layers) }
            else { inUse.formUnion(catalog.flatMap(\.layers)) }  // a container from before layers were recorded: keep all
        }
        return try library.remove(text, force: force, usedBy: { id in
            records.filter { $0.imageID == id.description }.map(\.name)
        }, layersInUse: inUse)
    }

    public init(stateDirectory: String = NetworkManager.defaultStateDirectory, monitorExecutable: String? = nil,
                logger: Logger = Logger(label: "netctl-runtime")) throws {
        // Absolute: the monitor runs from "/" and runc from the bundle directory.
        self.stateDirectory = stateDirectory.hasPrefix("/") ? stateDirectory
            : (FileManager.default.currentDirectoryPath + "/" + stateDirectory)
        self.logger = logger
        try NetworkManager.requirePrivilege()
        if mkdir(stateDirectory, 0o700) != 0 && errno != EEXIST {
            throw RuntimeError.io(what: "cannot create \(stateDirectory)", errno: errno)
        }
        store = try ContainerStore(directory: self.stateDirectory + "/containers")
        images = try ImageStore(directory: self.stateDirectory + "/images")
        network = try NetworkManager(stateDirectory: self.stateDirectory)
        self.monitorExecutable = monitorExecutable ?? ContainerManager.ownExecutable()
    }

    private var runcRoot: String { stateDirectory + "/runc" }
    func directory(_ record: ContainerRecord) -> String { store.path(record.id) }

    // MARK: run

    /// Starts a container. Detached: returns once it runs. Attached: returns when it has
    /// exited (its record carries the exit code). Bad input or a failure while starting
    /// leaves nothing behind.
    public func run(_ request: RunRequest) throws -> ContainerRecord {
        var phases = Phases()  // where the time goes, for --debug
        let runc = try Runc.locate(root: runcRoot)
        var mappings = try request.ports.flatMap { try PortMapping.parse($0) }
        let environment = try request.environment.map { entry -> String in
            if entry.contains("=") { guard !entry.hasPrefix("=") else { throw RuntimeError.invalidEnvironment(entry) }; return entry }
            guard !entry.isEmpty else { throw RuntimeError.invalidEnvironment(entry) }
            return getenv(entry).map { entry + "=" + String(cString: $0) } ?? ""
        }.filter { !$0.isEmpty }
        let id = ContainerManager.randomID()
        let name = request.name ?? String(id.prefix(12))
        try NetworkManager.checkName(name, kind: "container")
        // Cheap refusals before loading the image, which can take minutes the first time (the
        // name is checked again under the lock below).
        if let other = store.all().first(where: { $0.name == name }) { throw RuntimeError.nameInUse(name: name, id: other.id) }
        for name in request.networks { _ = try network.network(named: name) }
        let files = try ContainerFiles(request)

        phases.mark("checks")
        // A path needs no registry configuration: registries.conf is read for names only.
        let image = ImageLibrary.isPath(request.image) ? try images.load(request.image)
            : try imageLibrary().image(for: request.image, policy: request.pull, platform: request.platform, progress: pullProgress)
        phases.mark("image")
        let config = image.config.config ?? .init()
        if request.publishAll {
            for exposed in (config.ExposedPorts ?? [:]).keys.sorted() {
                mappings += try PortMapping.parse(exposed)  // "80" is 80/tcp, as in the image
            }
        }
        let args = (config.Entrypoint ?? []) + (request.command.isEmpty ? (config.Cmd ?? []) : request.command)
        guard !args.isEmpty else { throw RuntimeError.noCommand(image: request.image) }

        var record = ContainerRecord(
            id: id, name: name, image: request.image, imageID: image.id.description, command: args, created: .now(),
            networks: [], ports: request.ports + (request.publishAll ? ["(all exposed)"] : []),
            autoRemove: request.autoRemove, detached: request.detach,
            stopSignal: config.StopSignal.map { $0.hasPrefix("SIG") ? String($0.dropFirst(3)) : $0 }, state: .created,
            monitorPID: getpid(), monitorStart: ProcessIdentity.current().startTime)
        record.layers = image.config.rootfs.diff_ids.map(\.hex)
        let dir = directory(record)
        try store.locked {
            if let other = store.all().first(where: { $0.name == name }) { throw RuntimeError.nameInUse(name: name, id: other.id) }
            guard mkdir(dir, 0o700) == 0 else { throw RuntimeError.io(what: "cannot create \(dir)", errno: errno) }
            try store.save(record)
        }
        do {
            record.rootfsMode = try RootFilesystem.create(layers: image.layerDirectories, in: dir).rawValue
            phases.mark("rootfs")
            let user = try resolveUser(config.User, rootfs: dir + "/rootfs")
            let endpoints = try connectNetworks(of: &record, request, mappings: mappings)
            phases.mark("network")
            let hostname = request.hostname ?? record.shortID
            try files.write(for: record, hostname: hostname, endpoints: endpoints, manager: network, in: dir)
            var env = (config.Env ?? []).filter { !$0.hasPrefix("HOSTNAME=") }
            if request.tty && !env.contains(where: { $0.hasPrefix("TERM=") }) { env.append("TERM=xterm") }  // as Docker sets it
            if !env.contains(where: { $0.hasPrefix("PATH=") }) { env.insert("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", at: 0) }
            env.append("HOSTNAME=" + hostname)
            for entry in environment {
                let key = entry.prefix(while: { $0 != "=" })
                env.removeAll { $0.prefix(while: { $0 != "=" }) == key }
                env.append(entry)
            }
            let cwd = config.WorkingDir.flatMap { $0.isEmpty ? nil : $0 } ?? "/"
            try RuntimeSpec(args: args, env: env, cwd: cwd, user: user, hostname: hostname, netns: record.namespacePath(stateDirectory), containerID: id,
                            etcFiles: ["/etc/hostname": dir + "/hostname", "/etc/hosts": dir + "/hosts", "/etc/resolv.conf": dir + "/resolv.conf"],
                            terminal: request.tty && !request.detach)
                .write(to: dir + "/config.json")
            try store.save(record)
            phases.mark("bundle")
            try syncNames()
            phases.mark("names")
        } catch {
            discard(record)
            throw error
        }
        if !request.detach {
            // Attached: this process is the monitor, and the container writes to our output.
            let started = try start(record.id, runc: runc, attached: true, input: request.interactive, terminal: request.tty,
                                    phases: &phases)
            logger.debug("run \(record.name): \(phases)")
            var relay: (TerminalRelay, pthread_t)?
            if let console = started.console {
                let terminal = TerminalRelay(master: console, forwardInput: request.interactive)
                do { relay = (terminal, try terminal.start()) } catch { terminal.restore(); logger.warning("\(error)") }
            }
            let code = supervise(started)
            if let (terminal, thread) = relay { terminal.finish(thread) }
            return store.load(record.id) ?? { var r = started.record; r.state = .exited; r.exitCode = code; return r }()
        }
        let started = try startMonitor(record, phases: &phases)
        logger.debug("run \(record.name): \(phases)")
        return started
    }

    /// Starts the monitor in its own session and waits until it reports the container
    /// running, or why it is not.
    private func startMonitor(_ record: ContainerRecord, phases: inout Phases) throws -> ContainerRecord {
        var pipe: [Int32] = [0, 0]
        guard csock_pipe2(&pipe, O_CLOEXEC) == 0 else { throw RuntimeError.io(what: "pipe", errno: errno) }
        let monitorLog = open(directory(record) + "/monitor.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer { if monitorLog >= 0 { close(monitorLog) } }
        let pid: pid_t
        do {
            pid = try Processes.spawn([monitorExecutable, "_monitor", "--state-dir", stateDirectory, record.id],
                                      fds: [0: -1, 1: -1, 2: monitorLog, 3: pipe[1]], newSession: true)
        } catch {
            close(pipe[0]); close(pipe[1])
            discard(record)
            throw error
        }
        close(pipe[1])
        var reply = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(pipe[0], &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            reply += buffer[0..<n]
        }
        close(pipe[0])
        let text = String(decoding: reply, as: UTF8.self).trimmed
        if text == "ok" || text.hasPrefix("ok ") {
            // The monitor's own phases come after "ok " ("runc create 20.1 ms, ...").
            phases.mark("monitor (\(text.dropFirst(3)))")
            // Started. A short-lived --rm container may be gone already; that is no failure.
            var started = record
            started.state = .running
            return store.load(record.id) ?? started
        }
        // The monitor cleaned up after itself; make sure, and reap it (it is our child). What
        // it logged goes into the error: the directory holding its log goes with the container.
        Processes.wait(pid)
        let logged = readBytes(directory(record) + "/monitor.log").flatMap {
            String(decoding: $0, as: UTF8.self).split(separator: "\n").last.map(String.init)
        }
        discard(record)
        throw RuntimeError.monitorFailed(container: record.name, message: text.hasPrefix("error: ") ? String(text.dropFirst(7))
                                         : "its monitor exited without starting it" + (logged.map { " (it logged: \($0))" } ?? ""))
    }

    // MARK: The monitor

    /// The monitor's body: creates and starts the container with runc, reports readiness on
    /// `readyFD` ("ok", or "error: why"), then supervises it until it exits. Returns the
    /// container's exit code (125 if it could not start).
    public func runMonitor(id: String, readyFD: Int32) -> Int32 {
        _ = fcntl(readyFD, F_SETFD, FD_CLOEXEC)  // runc and the container must not hold it
        _ = chdir("/")  // hold no directory (and no mount) busy for the container's lifetime
        signal(SIGINT, SIG_IGN)
        // If `run -d` died, writing "ok" to its pipe must fail with EPIPE, not kill the monitor.
        signal(SIGPIPE, SIG_IGN)
        let started: Started
        var phases = Phases()
        do {
            started = try start(id, runc: try Runc.locate(root: runcRoot), attached: false, phases: &phases)
        } catch {
            report(readyFD, "error: \(error)")
            return 125
        }
        report(readyFD, "ok \(phases)")
        close(readyFD)
        return supervise(started)
    }

    /// A container runc has started, with what its monitor holds for it.
    struct Started {
        var record: ContainerRecord
        var pid: pid_t
        var relays: ProxyService.Background?
        /// The master end of the container's terminal (`run -t`).
        var console: Int32? = nil
    }

    /// Takes ownership of the record, then `runc create` and `runc start`. On failure nothing
    /// of the container is left (its record included) and the error says why.
    private func start(_ id: String, runc: Runc, attached: Bool, input: Bool = false, terminal: Bool = false,
                       phases: inout Phases) throws -> Started {
        // The monitor owns the record from here: gc, stop and rm see a live owner, not the
        // `run` that started it (which may be gone).
        guard var record = try store.update(id, {
            $0.monitorPID = getpid(); $0.monitorStart = ProcessIdentity.current().startTime
        }) else { throw RuntimeError.containerNotFound(id) }
        let dir = directory(record)
        _ = cproc_set_child_subreaper()  // the container's first process becomes our child once runc exits
        _ = cproc_forward_signal(SIGTERM)
        if attached { _ = cproc_forward_signal(SIGINT) }
        // A closed terminal or a vanished `run -d` must not leave the container without its monitor.
        signal(SIGHUP, SIG_IGN)
        // Attached: the container writes to our stdout/stderr; detached: to its log.
        let log = attached ? -1 : open(dir + "/log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        defer { if log >= 0 { close(log) } }
        let runcLog = dir + "/runc.log"
        var relays: ProxyService.Background?
        do {
            phases.mark("monitor up")
            var console: Int32?
            if attached && terminal {
                // runc makes the terminal and sends its master here while `create` runs.
                let socket = try ConsoleSocket()
                let master = Mutex<Result<Int32, Error>?>(nil)
                let receiver = try startThread("receiving the container's terminal") {
                    let result = Result { try socket.receiveMaster() }
                    master.withLock { $0 = result }
                }
                var created: Error?
                do {
                    try runc.run(["create", "--bundle", dir, "--pid-file", dir + "/pid", "--console-socket", socket.path, id],
                                 container: record.name, logFile: runcLog)
                } catch { created = error }
                if created != nil { shutdown(socket.listener, Int32(SHUT_RDWR)) }  // the receiver stops waiting
                pthread_join(receiver, nil)
                if let created { throw created }
                console = try master.withLock { $0 }!.get()
            } else {
                try runc.run(["create", "--bundle", dir, "--pid-file", dir + "/pid", id], container: record.name, logFile: runcLog,
                             stdin: attached && input ? 0 : -1, stdout: attached ? 1 : log, stderr: attached ? 2 : log)
            }
            phases.mark("runc create")
            guard let text = readBytes(dir + "/pid"), let pid = pid_t(String(decoding: text, as: UTF8.self).trimmed) else {
                throw RuntimeError.runcFailed(step: "create", container: record.name, message: "it wrote no pid file")
            }
            cproc_set_signal_target(pid)
            relays = relayProxiedPorts(record)
            phases.mark("relays")
            try runc.run(["start", id], container: record.name, logFile: runcLog)
            phases.mark("runc start")
            guard let running = try store.update(id, {
                $0.state = .running; $0.pid = pid; $0.pidStart = ProcessIdentity.startTime(of: pid); $0.startedAt = .now()
            }) else {
                throw RuntimeError.monitorFailed(container: record.name, message: "it was removed while starting")
            }
            record = running
            return Started(record: record, pid: pid, relays: relays, console: console)
        } catch {
            relays?.stop(drainSeconds: 0)
            discard(record)
            throw error
        }
    }

    /// Reaps the container, then removes what it held; its exit code.
    private func supervise(_ started: Started) -> Int32 {
        let code = reap(started.pid)
        cproc_set_signal_target(0)
        started.relays?.stop(drainSeconds: 0)
        release(started.record)
        if started.record.autoRemove {
            discard(started.record)
        } else {
            _ = try? store.update(started.record.id) { $0.state = .exited; $0.exitCode = code; $0.finishedAt = .now() }
        }
        return code
    }

    /// Waits for the container's first process, reaping every orphan handed to us on the way.
    private func reap(_ pid: pid_t) -> Int32 {
        while true {
            var status: Int32 = 0
            let child = waitpid(-1, &status, 0)
            if child == pid { return Processes.exitCode(status) }
            if child < 0 && errno == ECHILD {
                // Not ours after all (no subreaper support): watch it instead.
                while kill(pid, 0) == 0 { usleep(100_000) }
                return -1
            }
        }
    }

    /// Ports of this container the kernel can't DNAT (`[::1]`, IPv6 to an IPv4-only
    /// container) are relayed by a proxy service scoped to its namespace, inside the monitor,
    /// for the container's lifetime; it stands aside while a `netctl proxy serve` relays them
    /// (NetCore's `RelayClaims`). A container without such ports gets none. A relay that
    /// cannot start is logged, not fatal: the kernel's share of the ports works without it.
    private func relayProxiedPorts(_ record: ContainerRecord) -> ProxyService.Background? {
        let hasRelays = endpoints(of: record).contains { endpoint in
            ((try? network.ports(endpoint: endpoint.name)) ?? []).contains { !PortPlan($0, on: endpoint).relays.isEmpty }
        }
        guard hasRelays else { return nil }
        do {
            return try ProxyService.Background(stateDirectory: stateDirectory, scope: .namespace(record.namespacePath(stateDirectory)),
                                               options: .init(workers: 1), logger: logger)
        } catch {
            logger.warning("not relaying the proxied ports of \(record.name): \(error)")
            return nil
        }
    }

    /// Tells `run -d` how the start went.
    private func report(_ fd: Int32, _ message: String) {
        let bytes = Array((message + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    // MARK: stop, rm, gc

    /// Stops a running container: its image's stop signal (SIGTERM by default), then SIGKILL after `timeout`
    /// seconds, as `docker stop` does. Its endpoint and ports are gone when this returns.
    @discardableResult
    public func stop(_ reference: String, timeout: Double = 10) throws -> ContainerRecord {
        let record = try store.find(reference)
        guard record.state != .exited else { return record }
        // Being made by a live `run`: there is nothing to signal yet, and the clean-up below
        // would pull the endpoint from under it.
        if record.state == .created && record.monitor?.isAlive == true {
            throw RuntimeError.stillStarting(record.name)
        }
        let runc = try Runc.locate(root: runcRoot)
        let log = directory(record) + "/runc.log"
        if timeout > 0 {
            try? runc.run(["kill", record.id, record.stopSignal ?? "TERM"], container: record.name, logFile: log)
            if let done = waitUntilExited(record.id, seconds: timeout) { return done }
        }
        // SIGKILL to the container's first process ends its PID namespace, which is all `runc
        // kill` does here; sent directly when the process is known, it costs no runc start.
        if let process = record.process, process.isAlive {
            kill(process.pid, SIGKILL)
        } else {
            try? runc.run(["kill", record.id, "KILL"], container: record.name, logFile: log)
        }
        if let done = waitUntilExited(record.id, seconds: 10) { return done }
        // No monitor finished it: do its work here.
        return try finishForMonitor(record) ?? record
    }

    /// A dead monitor's clean-up, done by someone else: the container's endpoint, ports and
    /// mounts go, and its record says exited.
    @discardableResult
    private func finishForMonitor(_ record: ContainerRecord) throws -> ContainerRecord? {
        release(record)
        return try store.update(record.id) { $0.state = .exited; $0.finishedAt = .now() }
    }

    /// Waits for the monitor to record the exit. Without a monitor (it died), waits for the
    /// container's process itself and does the monitor's clean-up.
    private func waitUntilExited(_ id: String, seconds: Double) -> ContainerRecord? {
        var waited = 0.0
        repeat {
            guard let record = store.load(id) else { return nil }
            if record.state == .exited { return record }
            if record.monitor?.isAlive != true
                && record.process?.isAlive != true {
                return try? finishForMonitor(record)
            }
            usleep(10_000)
            waited += 0.01
        } while waited < seconds
        return nil
    }

    /// Removes a container that has exited (running ones only with `force`, which kills them).
    @discardableResult
    public func remove(_ reference: String, force: Bool = false) throws -> ContainerRecord {
        var phases = Phases()
        let record = try store.find(reference)
        if record.state != .exited && isActive(record) {
            guard force else { throw RuntimeError.stillRunning(record.name) }
            _ = try stop(record.id, timeout: 0)
            phases.mark("stop")  // the kill, and the monitor's clean-up
        }
        // Exited means its monitor (or whoever finished for it) released it already: runc's
        // state, endpoints and mount are gone; what is left is the directory and the record.
        discard(record, released: store.load(record.id)?.state == .exited)
        phases.mark("remove")
        logger.debug("rm \(record.name): \(phases)")
        return record
    }

    /// Containers whose monitor died: their endpoint, ports and mounts are removed and they
    /// are marked exited (or removed, if they were being created or had --rm). A container
    /// whose process still runs is left alone. Returns the names it cleaned.
    public func gc() throws -> [String] {
        var cleaned: [String] = []
        for record in store.all() where record.state != .exited && !isActive(record) {
            if record.state == .created || record.autoRemove {
                discard(record)
            } else {
                try finishForMonitor(record)
            }
            cleaned.append(record.name)
        }
        return cleaned
    }

    /// Its monitor lives, or its process does.
    private func isActive(_ record: ContainerRecord) -> Bool {
        record.monitor?.isAlive == true || record.process?.isAlive == true
    }

    /// Gives back what a container holds in the kernel: runc's state, the endpoint (with its
    /// ports and namespace) and the root filesystem mount. Idempotent.
    private func release(_ record: ContainerRecord) {
        let dir = directory(record)
        if let runc = try? Runc.locate(root: runcRoot) {
            try? runc.run(["delete", "--force", record.id], container: record.name, logFile: dir + "/runc.log")
        }
        let attached = endpoints(of: record).map(\.name)
        if !attached.isEmpty {
            do { _ = try network.detach(attached) } catch { logger.warning("cannot detach \(attached.joined(separator: ", ")): \(error)") }
            do { try syncNames() } catch { logger.warning("\(error)") }
        }
        _ = cfs_umount_detach(dir + "/rootfs")
    }

    /// Releases a container and deletes its directory and record.
    private func discard(_ record: ContainerRecord, released: Bool = false) {
        if !released { release(record) }  // unmounts the rootfs; removing the directory takes the rest
        let parent = open(store.directory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        defer { close(parent) }
        try? removeTree(parent, record.id)
    }

    // MARK: exec

    /// The runc command line that runs `command` in a running container, as `runc exec`
    /// does it: the container's own environment, user and working directory unless given;
    /// with `tty`, runc gives the process a terminal and relays the caller's to it. The
    /// caller runs it in its own place (exec), so signals and the terminal are its own.
    public func execCommand(_ reference: String, command: [String], tty: Bool, environment: [String] = [],
                            user: String? = nil, workdir: String? = nil) throws -> [String] {
        let record = try store.find(reference)
        guard isRunning(record) else { throw RuntimeError.notRunning(record.name) }
        guard !command.isEmpty else { throw RuntimeError.noCommand(image: record.image) }
        let runc = try Runc.locate(root: runcRoot)
        var arguments = [runc.executable, "--root", runc.root, "exec"]
        if tty { arguments.append("--tty") }
        for entry in environment { arguments += ["--env", entry] }
        if let user { arguments += ["--user", user] }
        if let workdir { arguments += ["--cwd", workdir] }
        return arguments + [record.id] + command
    }

    // MARK: Queries

    public func containers(all: Bool = false) -> [ContainerRecord] {
        store.all().filter { all || $0.state != .exited }
    }

    public func container(_ reference: String) throws -> ContainerRecord { try store.find(reference) }

    public func logPath(_ reference: String) throws -> String { directory(try store.find(reference)) + "/log" }

    /// Whether the container's monitor or process is still there (`ps` shows a running
    /// container whose monitor died as such, until `gc`).
    public func isRunning(_ record: ContainerRecord) -> Bool { record.state == .running && isActive(record) }

    // MARK: Helpers

    static func randomID() -> String {
        (0..<4).map { _ in
            let hex = String(UInt64.random(in: 0...UInt64.max), radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    static func ownExecutable() -> String { Processes.ownExecutable() }
}
