import Glibc

/// Why an image could not be used: one line naming the image part and what to do.
public enum ImageError: Error, CustomStringConvertible, Equatable {
    case notFound(String)
    case unrecognized(path: String, reason: String)
    case invalid(what: String, reason: String)
    case digestMismatch(what: String, expected: String, actual: String)
    case sizeMismatch(what: String, expected: Int64, actual: Int64)
    case unsupported(what: String, reason: String)
    /// A layer entry that would write outside the root filesystem or make a device.
    case hostileLayer(layer: String, entry: String, reason: String)
    case io(what: String, errno: Int32)

    public var description: String {
        switch self {
        case .notFound(let path):
            return "no image at \(path); pass the path of an OCI image layout (directory or tar) or a `docker save` archive"
        case .unrecognized(let path, let reason):
            return "\(path) is not an OCI image layout or a `docker save` archive: \(reason)"
        case .invalid(let what, let reason):
            return "invalid \(what): \(reason)"
        case .digestMismatch(let what, let expected, let actual):
            return "\(what) is corrupt: its sha256 is \(actual), the image says \(expected); re-export the image"
        case .sizeMismatch(let what, let expected, let actual):
            return "\(what) is corrupt: it has \(actual) bytes, the image says \(expected); re-export the image"
        case .unsupported(let what, let reason):
            return "\(what) is not supported: \(reason)"
        case .hostileLayer(let layer, let entry, let reason):
            return "layer \(layer) rejected: entry \"\(entry)\" \(reason); the image is unsafe to unpack"
        case .io(let what, let code):
            return "\(what): \(String(cString: strerror(code)))"
        }
    }
}
