import Agent
import Glibc
import Logging
import Primitives

// netctl's agent, started on demand by whichever netctl process first needs it
// (Agent.sync): `netctl-agent --state-dir DIR`. It serves names and keeps the firewall
// whole while any network exists. A binary of its own, without the CLI, images or the
// proxy, so the process that stays up holds only what it needs.
let arguments = CommandLine.arguments
guard arguments.count == 3, arguments[1] == "--state-dir" else {
    writeStandardError("usage: netctl-agent --state-dir DIR (started by netctl when a network exists)\n")
    exit(2)
}
// Its stderr is agent.log in the state directory.
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .notice
    return handler
}
do {
    try Agent.serve(stateDirectory: arguments[2], logger: Logger(label: "netctl-agent"))
} catch {
    writeStandardError("netctl-agent: \(error)\n")
    exit(1)
}
