import Foundation
import Testing

/// Checked-in expected output (`golden/`). `tools/update-golden` rewrites the files; a run
/// that rewrites them records an issue, so an update never passes for a check.
enum Golden {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("golden")

    static func expect(_ actual: String, matches name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let file = directory.appendingPathComponent(name).path
        if ProcessInfo.processInfo.environment["NETCTL_UPDATE_GOLDEN"] == "1" {
            try actual.write(toFile: file, atomically: true, encoding: .utf8)
            Issue.record("\(name) rewritten (NETCTL_UPDATE_GOLDEN=1): review the diff, then run the tests without it",
                         sourceLocation: sourceLocation)
            return
        }
        #expect(actual == (try String(contentsOfFile: file, encoding: .utf8)), "\(name) differs", sourceLocation: sourceLocation)
    }
}
