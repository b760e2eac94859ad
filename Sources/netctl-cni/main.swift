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

var environment: [String: String] = [:]
var entry = environ
while let pointer = entry.pointee {
    let pair = String(cString: pointer)
    if let eq = pair.firstIndex(of: "=") { environment[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]) }
    entry += 1
}
var input: [UInt8] = []
var buffer = [UInt8](repeating: 0, count: 8192)  // a configuration is a few KB; more takes more reads
while input.count <= BridgeConfig.maxInputBytes {  // past the limit, the plugin refuses it (unread)
    let n = read(0, &buffer, buffer.count)
    if n > 0 { input += buffer[0..<n]; continue }
    if n < 0 && errno == EINTR { continue }
    break
}
let output = CNIPlugin.run(environment: environment, stdin: input)
if !output.stdout.isEmpty {
    writeAll(1, Array((output.stdout + "\n").utf8))
}
exit(output.status)
