import Primitives
/// A failure as the CNI specification reports it: printed to stdout as
/// `{"cniVersion", "code", "msg", "details"}` with a non-zero exit status.
public struct CNIError: Error, Equatable, CustomStringConvertible {
    public var code: Int
    public var msg: String
    public var details: String

    public init(_ code: Code, _ msg: String, details: String = "") {
        self.code = code.rawValue; self.msg = msg; self.details = details
    }

    /// Well-known codes (0-99, from the specification) and netctl's own (100 and up).
    public enum Code: Int, Sendable {
        case incompatibleVersion = 1
        case unsupportedField = 2
        case unknownContainer = 3
        case invalidEnvironment = 4
        case ioFailure = 5
        case decodingFailure = 6
        case invalidNetworkConfig = 7
        case tryAgainLater = 11
        case notAvailable = 50
        case notAvailableContainersDamaged = 51
        /// The kernel or netctl's state refused an operation (the message says which).
        case internalFailure = 100
        /// A requested host port is published already or held by another program.
        case portConflict = 101
        /// CHECK found the attachment not as ADD made it.
        case attachmentBroken = 102
        /// ADD for a container and interface that are attached already.
        case alreadyAttached = 103
    }

    public var description: String { details.isEmpty ? msg : "\(msg): \(details)" }

    public func json(cniVersion: String) -> JSON {
        var pairs: [(String, JSON)] = [("cniVersion", .string(cniVersion)), ("code", .number("\(code)")), ("msg", .string(msg))]
        if !details.isEmpty { pairs.append(("details", .string(details))) }
        return .object(pairs)
    }
}
