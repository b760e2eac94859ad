import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import Agent
import NetCore
import Primitives
import Registry
import Runtime

// The runtime wrapper: `docker run`-style commands over the Runtime library.

extension GlobalOptions {
    func containers() throws -> ContainerManager {
        setUpLogging()
        let containers = try ContainerManager(stateDirectory: stateDir ?? NetworkManager.defaultStateDirectory)
        containers.network.detachesInBackground = true  // as for the network commands
        holdSocketsAtExit(containers.network)
        ensureNameServer(containers.network)
        return containers
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an image (OCI image layout, directory or tar, or a `docker save` archive) with runc on a netctl network.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Run in the background and print the container ID; output goes to `netctl logs`.")
    var detach = false
    @Option(help: "Container name (default: the first 12 digits of its ID).") var name: String?
    @Option(name: [.short, .customLong("publish")], help: "Publish a port, Docker's -p: [hostIP:][hostPort:]containerPort[/proto].")
    var publish: [String] = []
    @Flag(name: [.customShort("P"), .customLong("publish-all")], help: "Publish every exposed port on a free host port.")
    var publishAll = false
    @Option(help: "A network to join (repeat for several; default: netctl, made on first use). The first holds the default route.")
    var network: [String] = []
    @Option(name: .customLong("network-alias"), help: "Another name the container answers to on its networks. Repeatable.")
    var networkAlias: [String] = []
    @Option(help: "IPv4 address on its first network.") var ip: String?
    @Option(help: "IPv6 address on its first network.") var ip6: String?
    @Option(name: .customLong("mac-address"), help: "MAC address on its first network.") var macAddress: String?
    @Option(help: "Its hostname (default: the short container ID).") var hostname: String?
    @Option(name: .customLong("add-host"), help: "An /etc/hosts entry, NAME:IP. Repeatable.") var addHost: [String] = []
    @Option(help: "A DNS server of its own (the network's name server forwards to it). Repeatable.") var dns: [String] = []
    @Option(name: .customLong("dns-search"), help: "A DNS search domain. Repeatable.") var dnsSearch: [String] = []
    @Option(name: .customLong("dns-option"), help: "A resolv.conf option. Repeatable.") var dnsOption: [String] = []
    @Option(name: [.short, .customLong("env")], help: "Set an environment variable: KEY=VALUE, or KEY to pass ours.")
    var env: [String] = []
    @Flag(name: .customLong("rm"), help: "Remove the container when it exits.") var autoRemove = false
    @Flag(name: .shortAndLong, help: "Keep stdin open: it goes to the container's process.") var interactive = false
    @Flag(name: .shortAndLong, help: "Give the container's process a terminal, relayed to ours (with -i, an interactive shell).")
    var tty = false
    @Option(help: "Port backend: nft, proxy or auto (the kernel where it can, the proxy where it can't).")
    var backend: PortBackend = .auto
    @Option(help: "Pull the image: missing (when the store lacks it), always, or never.") var pull: ImageLibrary.PullPolicy = .missing
    @OptionGroup var pullOptions: PullOptions
    @Flag(name: .shortAndLong, help: "Pull without progress output.") var quiet = false
    @Argument(help: "The image: a name (nginx, localhost:5000/app:1, NAME@sha256:...) or a path (OCI layout or `docker save` archive).")
    var image: String
    @Argument(parsing: .captureForPassthrough, help: "Command and arguments (replace the image's Cmd).") var command: [String] = []

    func run() throws {
        var code: Int32 = 0
        // 125 for netctl's own failures, as `docker run`: a container's status passes through.
        try reportingErrors(exitCode: 125) {
            if tty && detach { throw UsageError("-t with -d leaves the terminal with no one at it; run -d, then `netctl exec -it CONTAINER sh`") }
            if tty && isatty(STDIN_FILENO) != 1 { throw UsageError("-t needs a terminal on stdin (the input device is not a TTY); drop -t") }
            let containers = try global.containers()
            containers.credentials = CredentialStore.standard(authFile: pullOptions.authfile)
            // As docker run: the pull's progress goes to stderr, stdout keeps the container's ID.
            let printer = PullPrinter(quiet: quiet, output: STDERR_FILENO)
            containers.pullProgress = { printer.handle($0) }
            var request = RunRequest(
                image: image, name: name, command: command, environment: env, ports: publish, publishAll: publishAll,
                networks: network, aliases: networkAlias, ip: ip, ip6: ip6, mac: macAddress, hostname: hostname, extraHosts: addHost,
                dns: dns, dnsSearch: dnsSearch, dnsOptions: dnsOption, detach: detach, autoRemove: autoRemove, portBackend: backend)
            request.pull = pull
            request.tty = tty
            request.interactive = interactive
            request.platform = try pullOptions.parsedPlatform()
            let record = try containers.run(request)
            if detach { print(record.id) } else { code = record.exitCode ?? 0 }
        }
        if code != 0 { throw ExitCode(code) }
    }
}


struct PS: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List containers.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Show all containers, exited ones too.") var all = false
    @Flag(name: .shortAndLong, help: "Only IDs.") var quiet = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try reportingErrors {
            let manager = try global.containers()
            let records = manager.containers(all: all)
            if quiet { return records.forEach { print($0.shortID) } }
            if json { return try printJSON(records) }
            let network = manager.network
            let rows = records.map { record -> [String] in
                // As `docker ps` prints them: 0.0.0.0:8080->80/tcp.
                let ports = manager.endpoints(of: record).flatMap { (try? network.ports(endpoint: $0.name)) ?? [] }.flatMap { port in
                    port.servedAddresses.map { "\($0):\(port.hostPort)->\(port.containerPort)/\(port.proto.rawValue)" }
                }
                let command = "\"" + String(record.command.joined(separator: " ").prefix(20)) + "\""
                return [record.shortID, record.image, command, ago(record.created), status(record, manager),
                        record.state == .running ? ports.joined(separator: ", ") : "", record.name]
            }
            printTable(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)
        }
    }

    private func status(_ record: ContainerRecord, _ manager: ContainerManager) -> String {
        switch record.state {
        case .created: return "Created"
        case .running:
            return manager.isRunning(record) ? "Up " + duration(since: record.startedAt ?? record.created)
                                             : "Unknown (its monitor died; run `netctl gc`)"
        case .exited:
            return "Exited (\(record.exitCode.map(String.init) ?? "?")) " + ago(record.finishedAt ?? record.created)
        }
    }
}

private func duration(since date: Timestamp) -> String {
    let seconds = max(0, Int(date.seconds(until: .now())))
    switch seconds {
    case ..<60: return seconds < 2 ? "Less than a second" : "\(seconds) seconds"
    case ..<3600: return seconds < 120 ? "About a minute" : "\(seconds / 60) minutes"
    case ..<86400: return seconds < 7200 ? "About an hour" : "\(seconds / 3600) hours"
    default: return "\(seconds / 86400) days"
    }
}

private func ago(_ date: Timestamp) -> String { duration(since: date) + " ago" }

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a detached container's output.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Keep printing new output until the container exits.") var follow = false
    @Argument(help: "Container name or ID.") var container: String

    func run() throws {
        try reportingErrors {
            let manager = try global.containers()
            let path = try manager.logPath(container)
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return }  // no output yet
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 65536)
            var last = !follow
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n > 0 { _ = buffer.withUnsafeBytes { write(1, $0.baseAddress, n) }; continue }
                if last { break }
                // Once it has stopped, one more pass takes what it wrote just before.
                if let record = try? manager.container(container), manager.isRunning(record) { usleep(100_000) } else { last = true }
            }
        }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop containers: SIGTERM, then SIGKILL after the timeout. Their endpoints and ports are removed.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .shortAndLong, help: "Seconds to wait before SIGKILL.") var time: Double = 10
    @Argument(help: "Container names or IDs.") var containers: [String]

    func run() throws {
        try reportingErrors {
            let manager = try global.containers()
            for container in containers { _ = try manager.stop(container, timeout: time); print(container) }
        }
    }
}

struct Rm: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove containers.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Kill running ones first.") var force = false
    @Argument(help: "Container names or IDs.") var containers: [String]

    func run() throws {
        try reportingErrors {
            let manager = try global.containers()
            for container in containers { _ = try manager.remove(container, force: force); print(container) }
        }
    }
}

/// The process that owns a detached container's lifetime (started by `run -d`).
struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_monitor", abstract: "Internal: a container's monitor.",
                                                    shouldDisplay: false)
    @Option var stateDir: String
    @Argument var id: String

    func run() throws {
        // Its stderr is the container's monitor.log: what it has to say goes there.
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .notice
            return handler
        }
        let code = try ContainerManager(stateDirectory: stateDir).runMonitor(id: id, readyFD: 3)
        throw ExitCode(code)
    }
}

extension ImageLibrary.PullPolicy: ExpressibleByArgument {}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a command in a running container (runc exec).")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Keep stdin open.") var interactive = false
    @Flag(name: .shortAndLong, help: "Give the command a terminal.") var tty = false
    @Option(name: [.short, .customLong("env")], help: "Set an environment variable, KEY=VALUE. Repeatable.") var env: [String] = []
    @Option(name: .shortAndLong, help: "Run as this user: uid[:gid].") var user: String?
    @Option(name: .shortAndLong, help: "Working directory inside the container.") var workdir: String?
    @Argument(help: "The container: name or ID.") var container: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.") var command: [String] = []

    func run() throws {
        var arguments: [String] = []
        try reportingErrors(exitCode: 126) {
            guard !tty || isatty(STDIN_FILENO) == 1 else { throw UsageError("-t needs a terminal on stdin; drop -t, or run it from a terminal") }
            arguments = try global.containers().execCommand(container, command: command, tty: tty, environment: env,
                                                            user: user, workdir: workdir)
        }
        // Without -i the command reads nothing, as with docker exec.
        if !interactive {
            let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if null >= 0 { dup2(null, STDIN_FILENO); close(null) }
        }
        // runc takes this process's place: its exit status, signals and terminal are the command's.
        var argv = arguments.map { strdup($0) } + [nil]
        execv(arguments[0], &argv)
        writeStandardError("netctl: error: cannot run \(arguments[0]): \(errorMessage(errno))\n")
        throw ExitCode(126)
    }
}
