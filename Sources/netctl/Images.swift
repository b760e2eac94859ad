import ArgumentParser
import FoundationEssentials
import Glibc
import Images
import NetCore
import Primitives
import Registry
import Runtime
import Synchronization

// Images by name: pull, images, rmi, load, login, logout, over Registry's ImageLibrary.

/// `--authfile`, `--platform` and `--quiet`, shared by the commands that pull.
struct PullOptions: ParsableArguments {
    @Option(help: "The credentials file (default: $REGISTRY_AUTH_FILE, then Podman's and Docker's usual files).")
    var authfile: String?
    @Option(help: "Pull this platform's image from a multi-platform one: os/arch[/variant] (default: linux and this machine's).")
    var platform: String?

    func parsedPlatform() throws -> Platform? {
        guard let platform else { return nil }
        let parts = platform.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard (2...3).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }) else {
            throw UsageError("--platform \(quoted(platform)) is not os/arch[/variant], for example linux/amd64")
        }
        return Platform(os: parts[0], architecture: parts[1], variant: parts.count == 3 ? parts[2] : nil)
    }
}

extension GlobalOptions {
    /// The image store alone: pulls and listings open no network state.
    func imageLibrary(authfile: String? = nil, configuration: RegistryConfiguration? = nil) throws -> ImageLibrary {
        setUpLogging()
        return try ContainerManager.imageLibrary(stateDirectory: stateDir ?? NetworkManager.defaultStateDirectory,
                                                 credentials: CredentialStore.standard(authFile: authfile), configuration: configuration)
    }
}

/// Shows a pull as `docker pull` does: a line per layer, redrawn with a bar on a terminal,
/// appended as plain lines otherwise, nothing when quiet.
final class PullPrinter: Sendable {
    private struct State {
        var order: [String] = []
        var lines: [String: String] = [:]
        var drawn = 0
        var lastPlain: [String: String] = [:]
    }
    private let state = Mutex(State())
    private let terminal: Bool
    private let quiet: Bool
    private let output: Int32

    init(quiet: Bool, output: Int32 = STDOUT_FILENO) {
        self.quiet = quiet
        self.output = output
        terminal = isatty(output) == 1
    }

    func handle(_ event: PullEvent) {
        guard !quiet else { return }
        state.withLock { state in
            let text: String
            switch event.step {
            case .resolved: return
            case .complete where event.layer.isEmpty: return
            case .waiting: text = "Pulling fs layer"
            case .alreadyExists: text = "Already exists"
            case .resuming(let from): text = "Resuming at \(bytes(from))"
            case .downloading(let done, let total):
                text = done == total ? "Download complete" : terminal ? "Downloading " + bar(done, total) : "Downloading"
            case .extracting: text = "Extracting"
            case .complete: text = "Pull complete"
            }
            if state.lines[event.layer] == nil { state.order.append(event.layer) }
            state.lines[event.layer] = text
            if terminal {
                var out = state.drawn > 0 ? "\u{1B}[\(state.drawn)A" : ""
                for layer in state.order { out += "\u{1B}[2K\(layer): \(state.lines[layer]!)\n" }
                state.drawn = state.order.count
                _ = writeAll(output, Array(out.utf8))
            } else if state.lastPlain[event.layer] != text {
                state.lastPlain[event.layer] = text
                _ = writeAll(output, Array("\(event.layer): \(text)\n".utf8))
            }
        }
    }

    private func bar(_ done: Int64, _ total: Int64) -> String {
        let width = 40
        let filled = total > 0 ? Int(Int64(width) * done / total) : 0
        return "[" + String(repeating: "=", count: max(0, filled - 1)) + (filled > 0 ? ">" : "")
            + String(repeating: " ", count: width - filled) + "] \(bytes(done))/\(bytes(total))"
    }
}

/// 1.03MB, as Docker prints sizes (decimal units).
func bytes(_ count: Int64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(count)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 { value /= 1000; unit += 1 }
    if unit == 0 { return "\(count)B" }
    let rounded = (value * 100).rounded() / 100
    var text = String(rounded)
    if text.hasSuffix(".0") { text.removeLast(2) }
    return text + units[unit]
}

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pull an image from a registry: NAME[:TAG|@DIGEST], read as Docker reads names (nginx is docker.io/library/nginx:latest).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: PullOptions
    @Flag(name: .shortAndLong, help: "Print only the image's name when done.") var quiet = false
    @Argument(help: "The image's name.") var name: String

    func run() throws {
        try reportingErrors {
            // Bad input is refused before the store is opened (or made).
            let platform = try options.parsedPlatform()
            let configuration = try RegistryConfiguration.load()
            let reference = try Reference(parsing: name, aliases: configuration.aliases)
            let library = try global.imageLibrary(authfile: options.authfile, configuration: configuration)
            let printer = PullPrinter(quiet: quiet)
            if !quiet {
                if !name.contains(":") && !name.contains("@") { print("Using default tag: latest") }
                print("\(reference.tag ?? reference.digest!.description): Pulling from \(reference.repository)")
                fflush(nil)  // before the layers' lines, which are written directly
            }
            let before = library.find(reference.description)?.id
            let stored = try library.pull(reference, platform: platform) { printer.handle($0) }
            if quiet { return print(reference.description) }
            if let digest = stored.digests.last(where: { $0.hasPrefix(reference.name + "@") }) {
                print("Digest: " + digest.dropFirst(reference.name.count + 1))
            }
            print(before == stored.id ? "Status: Image is up to date for \(reference.description)"
                                      : "Status: Downloaded newer image for \(reference.description)")
            print(reference.description)
        }
    }
}

struct ImagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "images", abstract: "List the images in the store.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Only image IDs.") var quiet = false
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Show full image IDs.") var noTrunc = false

    func run() throws {
        try reportingErrors {
            let images = try global.imageLibrary().store.catalog()
            if json { return try printJSON(images) }
            if quiet { return Set(images.map(\.id)).sorted { $0.hex < $1.hex }.forEach { print(noTrunc ? $0.description : $0.short) } }
            var rows: [[String]] = []
            for image in images.reversed() {
                let names = image.names.isEmpty ? ["<none>:<none>"] : image.names
                for name in names {
                    let reference = try? Reference(parsing: name)
                    rows.append([reference?.familiarName ?? (name == "<none>:<none>" ? "<none>" : name), reference?.tag ?? "<none>",
                                 noTrunc ? image.id.description : image.id.short, created(image.created), bytes(image.size)])
                }
            }
            printTable(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
        }
    }

    private func created(_ text: String?) -> String {
        guard let text, let date = Timestamp(iso8601: text) else { return "N/A" }
        let seconds = max(0, Timestamp.now().secondsSinceEpoch - date.secondsSinceEpoch)
        switch seconds {
        case ..<60: return "Less than a minute ago"
        case ..<3600: return "\(seconds / 60) minutes ago"
        case ..<172800: return "\(seconds / 3600) hours ago"
        case ..<1209600: return "\(seconds / 86400) days ago"
        case ..<5184000: return "\(seconds / 604800) weeks ago"
        case ..<63072000: return "\(seconds / 2592000) months ago"
        default: return "\(seconds / 31536000) years ago"
        }
    }
}

struct Rmi: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove images (by name or ID) and the layers nothing else uses.")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .shortAndLong, help: "Untag an image even if a container uses it (its layers stay).") var force = false
    @Argument(help: "Images: names or IDs.") var images: [String]

    func run() throws {
        try reportingErrors {
            let containers = try global.containers()
            var failed: Error?
            for image in images {
                do {
                    for removal in try containers.removeImage(image, force: force) {
                        switch removal {
                        case .untagged(let name): print("Untagged: \(name)")
                        case .deleted(let id): print("Deleted: \(id)")
                        }
                    }
                } catch {
                    writeStandardError("netctl: error: \(errorLine(error))\n")
                    failed = error
                }
            }
            if failed != nil { throw ExitCode(1) }
        }
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load an image into the store from an OCI image layout (directory or tar) or a `docker save` archive.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .shortAndLong, help: "The archive or layout to read.") var input: String
    @Flag(name: .shortAndLong, help: "Print nothing.") var quiet = false

    func run() throws {
        try reportingErrors {
            let names = try global.imageLibrary().load(input)
            if quiet { return }
            for name in names { print(name.hasPrefix("sha256:") ? "Loaded image ID: \(name)" : "Loaded image: \(name)") }
        }
    }
}

struct Login: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Log in to a registry: checks the credentials with it, then stores them where Podman and skopeo read them.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The credentials file to write (default: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json).")
    var authfile: String?
    @Option(name: .shortAndLong, help: "User name.") var username: String
    @Option(name: .shortAndLong, help: "Password (prefer --password-stdin).") var password: String?
    @Flag(help: "Read the password from stdin.") var passwordStdin = false
    @Argument(help: "The registry (default: docker.io).") var registry: String = Reference.defaultRegistry

    func run() throws {
        try reportingErrors {
            guard password == nil || !passwordStdin else { throw UsageError("give --password or --password-stdin, not both") }
            var secret = password ?? ""
            if passwordStdin { secret = String(decoding: readAll(STDIN_FILENO, limit: 1 << 16), as: UTF8.self).trimmed }
            guard !secret.isEmpty else { throw UsageError("no password: give --password-stdin (or --password)") }
            let host = Self.registryName(registry)
            try global.imageLibrary(authfile: authfile).login(registry: host, credential: Credential(username: username, password: secret))
            print("Login Succeeded!")
        }
    }

    /// `https://host/`, `host/`: the registry's name as keys are written.
    static func registryName(_ text: String) -> String {
        var name = Substring(text)
        for scheme in ["https://", "http://"] where name.hasPrefix(scheme) { name = name.dropFirst(scheme.count) }
        while name.hasSuffix("/") { name = name.dropLast() }
        return name == "index.docker.io" || name == "registry-1.docker.io" ? Reference.defaultRegistry : String(name)
    }
}

struct Logout: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a registry's stored credentials.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The credentials file (default: as for login).") var authfile: String?
    @Argument(help: "The registry (default: docker.io).") var registry: String = Reference.defaultRegistry

    func run() throws {
        try reportingErrors {
            let host = Login.registryName(registry)
            try global.imageLibrary(authfile: authfile).logout(registry: host)
            print("Removed login credentials for \(host)")
        }
    }
}

/// What to do about a registry failure, in the CLI's words.
func advice(_ error: RegistryError) -> String? {
    switch error {
    case .invalidReference: return "write NAME[:TAG|@sha256:DIGEST], lowercase, for example nginx:latest or localhost:5000/app:1"
    case .configuration(let file, _): return "fix \(file) (containers-registries.conf(5) describes it)"
    case .blocked: return "unblock it there, or pull from another registry"
    case .repositoryNotFound: return "check the name, or `netctl login` if it is private"
    case .manifestNotFound: return "check the tag; the registry's tags list shows those it has"
    case .unauthorized(_, let host, true): return "log in again with `netctl login \(host)`"
    case .unauthorized(_, let host, false): return "log in with `netctl login \(host)`"
    case .denied: return "log in as a user who may pull it"
    case .tls(let host, _):
        return "trust its CA by putting it in /etc/containers/certs.d/\(host)/ca.crt (or the system's store), or mark the registry insecure in registries.conf"
    case .unreachable: return "check the address and that it is up; a mirror in registries.conf can stand in"
    case .http: return "retry; if it persists, the registry is failing"
    case .digestMismatch: return "pull again; if it persists, the registry or a proxy on the way serves damaged data"
    case .tooLarge: return "check the name: a registry serving that much for it is not serving an image"
    case .noMatchingPlatform: return "pick one of those with --platform"
    case .unsupportedManifest: return "pull an image, not another kind of artifact"
    case .imageNotInStore: return "pull it, or drop --pull never; `netctl images` lists the store"
    case .imageInUse(_, let containers): return "remove \(containers.count == 1 ? "it" : "them") first (`netctl rm`), or untag with rmi -f"
    case .credentials(let file, _): return "fix or remove \(file), or name another with --authfile"
    case .clientUnavailable: return "install it (apt install libcurl4)"
    }
}
