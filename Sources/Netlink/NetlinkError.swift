import Glibc

/// A failed netlink or namespace operation: what we were doing and the kernel's answer.
public struct NetlinkError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    /// A positive errno value.
    public let code: Int32

    public init(operation: String, code: Int32) {
        self.operation = operation
        self.code = code
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(code)))"
    }
}

/// Calls that return -1 and set errno, or return -errno (the C shim's style).
@discardableResult
func check(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Int32 {
    if result >= 0 { return result }
    let code = result == -1 ? errno : -result
    throw NetlinkError(operation: operation(), code: code)
}
