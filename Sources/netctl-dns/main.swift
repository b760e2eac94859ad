import Glibc
import Logging
import NameService
import Primitives

// netctl's name server, started on demand by whichever netctl process first needs names
// (NameService.sync): `netctl-dns --state-dir DIR`. A binary of its own, without the CLI,
// images or the proxy, so the process that stays up holds only what serving names needs.
let arguments = CommandLine.arguments
guard arguments.count == 3, arguments[1] == "--state-dir" else {
    writeStandardError("usage: netctl-dns --state-dir DIR (started by netctl when a network needs names)\n")
    exit(2)
}
// Its stderr is dns.log in the state directory.
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .notice
    return handler
}
do {
    try NameService.serve(stateDirectory: arguments[2], logger: Logger(label: "netctl-dns"))
} catch {
    writeStandardError("netctl-dns: \(error)\n")
    exit(1)
}
