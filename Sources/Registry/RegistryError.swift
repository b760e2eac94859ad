import Primitives

/// What went wrong talking to a registry or reading its configuration, with the facts (which
/// reference, which host, what it answered). Each front end adds what to do in its own words.
public enum RegistryError: Error, CustomStringConvertible, Equatable {
    case invalidReference(String, reason: String)
    /// registries.conf, an auth file or a certs.d entry that cannot be read as documented.
    case configuration(file: String, reason: String)
    case blocked(reference: String, registry: String, file: String)
    case repositoryNotFound(reference: String, host: String)
    case manifestNotFound(reference: String, host: String)
    /// 401 after the credentials (if any) were tried.
    case unauthorized(reference: String, host: String, hadCredentials: Bool)
    case denied(reference: String, host: String, message: String)
    /// The TLS handshake failed: usually a certificate the system does not trust.
    case tls(host: String, detail: String)
    case unreachable(host: String, detail: String)
    case http(host: String, what: String, status: Int, message: String)
    /// A manifest or blob whose bytes are not its digest; nothing of it was kept.
    case digestMismatch(what: String, host: String, expected: String, actual: String)
    case tooLarge(what: String, limit: Int)
    case noMatchingPlatform(reference: String, wanted: String, offered: [String])
    case unsupportedManifest(reference: String, mediaType: String)
    case imageNotInStore(String)
    case imageInUse(image: String, containers: [String])
    case credentials(file: String, reason: String)
    /// libcurl, which every registry request goes through, could not be loaded.
    case clientUnavailable(String)

    public var description: String {
        switch self {
        case .invalidReference(let text, let reason):
            return "invalid reference format \(quoted(text)): \(reason)"
        case .configuration(let file, let reason):
            return "cannot use \(file): \(reason)"
        case .blocked(let reference, let registry, let file):
            return "\(reference) is blocked: registry \(registry) is marked blocked in \(file)"
        case .repositoryNotFound(let reference, let host):
            return "\(host) has no repository for \(reference) (or it needs credentials to see it)"
        case .manifestNotFound(let reference, let host):
            return "\(reference): manifest unknown at \(host) (no such tag or digest)"
        case .unauthorized(let reference, let host, let had):
            return had ? "\(host) refused the stored credentials for \(reference) (401 unauthorized)"
                       : "\(host) requires credentials for \(reference) (401 unauthorized)"
        case .denied(let reference, let host, let message):
            return "\(host) denied access to \(reference): \(message)"
        case .tls(let host, let detail):
            return "TLS with \(host) failed: \(detail)"
        case .unreachable(let host, let detail):
            return "cannot reach registry \(host): \(detail)"
        case .http(let host, let what, let status, let message):
            return "\(host) answered \(status) to \(what)" + (message.isEmpty ? "" : ": \(message)")
        case .digestMismatch(let what, let host, let expected, let actual):
            return "\(what) from \(host) is corrupt: its sha256 is \(actual), expected \(expected); it was discarded"
        case .tooLarge(let what, let limit):
            return "\(what) is larger than \(limit) bytes"
        case .noMatchingPlatform(let reference, let wanted, let offered):
            return "\(reference) has no \(wanted) image (it has \(offered.isEmpty ? "none" : offered.joined(separator: ", ")))"
        case .unsupportedManifest(let reference, let mediaType):
            return "\(reference) is a \(mediaType), which is not an image this can run"
        case .imageNotInStore(let name):
            return "no image \(quoted(name)) in the store"
        case .imageInUse(let image, let containers):
            return "image \(image) is used by container\(containers.count == 1 ? "" : "s") \(containers.joined(separator: ", "))"
        case .credentials(let file, let reason):
            return "cannot use credentials in \(file): \(reason)"
        case .clientUnavailable(let detail):
            return "cannot load libcurl, which registry requests need: \(detail)"
        }
    }
}
