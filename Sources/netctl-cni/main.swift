import CNI
import Glibc
import Logging
import Primitives

// netctl-cni: a CNI plugin (spec 0.4.0, 1.0.0, 1.1.0) over NetCore. The CNI runtime gives
// the command in CNI_* variables and the network configuration on stdin; the result or
// error JSON goes to stdout, logs to stderr.
LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = getenv("NETCTL_DEBUG") != nil ? .debug : .warning
    return handler
}

let environment = currentEnvironment()
// Read no further than just past the limit: the plugin refuses that much (a configuration is a few KB).
let input = readAll(0, limit: BridgeConfig.maxInputBytes)
let output = CNIPlugin.run(environment: environment, stdin: input)
if !output.stdout.isEmpty {
    writeAll(1, Array((output.stdout + "\n").utf8))
}
exit(output.status)
