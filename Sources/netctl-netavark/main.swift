import Glibc
import Logging
import NetCore
import Netavark
import Primitives

// Podman's network backend: installed as `netavark` where Podman looks for it
// (containers.conf helper_binaries_dir; tools/podman-backend). Parses netavark's command
// line, hands the work to the Netavark library, prints what it says.
//
//   netctl-netavark [--config DIR] [--rootless BOOL] [--aardvark-binary PATH] [--file FILE]
//                   setup NETNS | teardown NETNS | version | firewall-reload | firewalld-reload

// Podman shows the helper's stderr to its user: warnings only.
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = getenv("NETCTL_DEBUG") != nil ? .debug : .warning
    return handler
}

func fail(_ message: String) -> Never {
    writeStandardError("netctl-netavark: \(message)\n")
    print(JSON.object([("error", .string(message))]).text)
    exit(1)
}

var arguments = Array(CommandLine.arguments.dropFirst())
var rootless = false, file: String?
var positional: [String] = []
while !arguments.isEmpty {
    let argument = arguments.removeFirst()
    // Global options, as `--name=value` or `--name value` (or their short forms).
    let (name, inline): (String, String?) = argument.hasPrefix("--") && argument.contains("=")
        ? (String(argument.prefix { $0 != "=" }), String(argument.drop { $0 != "=" }.dropFirst()))
        : (argument, nil)
    func value() -> String {
        if let inline { return inline }
        guard !arguments.isEmpty else { fail("\(name) needs a value") }
        return arguments.removeFirst()
    }
    switch name {
    case "-c", "--config", "-a", "--aardvark-binary", "--plugin-directory", "--firewall-driver":
        _ = value()  // netctl keeps its own state and serves names itself
    case "-r", "--rootless":
        rootless = value() == "true"
    case "-f", "--file":
        file = value()
    case "-V", "--version":
        positional = ["version"]
    case "-h", "--help":
        print("netctl-netavark: Podman's network backend over netctl (setup NETNS, teardown NETNS, version, firewall-reload)")
        exit(0)
    default:
        positional.append(argument)
    }
}

// Rootless Podman networks live in a user namespace netctl does not serve: Podman's own
// netavark keeps them.
if rootless {
    let podmans = ["/usr/libexec/podman/netavark", "/usr/lib/podman/netavark", "/usr/local/libexec/podman/netavark"]
    guard let netavark = podmans.first(where: { access($0, X_OK) == 0 }) else { fail("\(NetavarkError.rootless)") }
    let argv = ([netavark] + Array(CommandLine.arguments.dropFirst())).map { strdup($0) } + [nil]
    execv(netavark, argv)
    fail("cannot run \(netavark): \(String(cString: strerror(errno)))")
}

let command: NetavarkBackend.Command
switch positional.first {
case "setup" where positional.count == 2: command = .setup(netns: positional[1])
case "teardown" where positional.count == 2: command = .teardown(netns: positional[1])
case "version": command = .version
case "firewall-reload", "firewalld-reload": command = .firewallReload
default: fail("usage: netctl-netavark [options] setup NETNS | teardown NETNS | version | firewall-reload")
}

var input: [UInt8] = []
switch command {
case .setup, .teardown:
    // The options: a few KB; a megabyte is more than Podman ever sends.
    if let file {
        guard let bytes = readBytes(file, limit: NetavarkBackend.maxInputBytes) else { fail("cannot read \(file): \(String(cString: strerror(errno)))") }
        input = bytes
    } else {
        input = readAll(0, limit: NetavarkBackend.maxInputBytes)
    }
default:
    break
}
let stateDirectory = getenv("NETCTL_STATE_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? NetworkManager.defaultStateDirectory
let output = NetavarkBackend.run(command, stdin: input, stateDirectory: stateDirectory)
if !output.stderr.isEmpty { writeStandardError(output.stderr) }
_ = writeAll(1, Array(output.stdout.utf8))
exit(output.status)
