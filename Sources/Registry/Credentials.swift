import FoundationEssentials
import Glibc
import Primitives

/// A user name and password (or identity token) for one registry.
public struct Credential: Sendable, Equatable {
    public var username: String
    public var password: String
    public init(username: String, password: String) { self.username = username; self.password = password }
}

/// Credentials in the files users already have, in the order Podman and skopeo read them:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` (root without it:
/// `/run/containers/0/auth.json`), `$XDG_CONFIG_HOME/containers/auth.json`, then Docker's
/// `~/.docker/config.json`. Keys may be a host or `host/namespace/repository`, the most
/// specific winning; `https://index.docker.io/v1/` is Docker Hub.
public struct CredentialStore: Sendable {
    public var files: [String]
    /// Where `login` writes: the first of `files`.
    public var writeFile: String { files[0] }

    public init(files: [String]) { self.files = files }

    public static func standard(authFile: String? = nil, environment: [String: String] = currentEnvironment()) -> CredentialStore {
        if let file = authFile ?? environment["REGISTRY_AUTH_FILE"] { return CredentialStore(files: [file]) }
        var files: [String] = []
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty {
            files.append(runtime + "/containers/auth.json")
        } else {
            files.append("/run/containers/\(getuid())/auth.json")
        }
        let home = environment["HOME"] ?? "/root"
        files.append((environment["XDG_CONFIG_HOME"] ?? home + "/.config") + "/containers/auth.json")
        files.append((environment["DOCKER_CONFIG"] ?? home + "/.docker") + "/config.json")
        return CredentialStore(files: files)
    }

    /// The credential for `repository` at `registry` (as users name it: `docker.io`), if any file has one.
    public func credential(registry: String, repository: String) throws(RegistryError) -> Credential? {
        let candidates = Self.keys(registry: registry, repository: repository)
        for file in files {
            guard let auths = try Self.auths(file) else { continue }
            for key in candidates {
                guard let entry = auths[key] else { continue }
                return try Self.decode(entry, key: key, file: file)
            }
        }
        return nil
    }

    /// Keys to look for, most specific first.
    static func keys(registry: String, repository: String) -> [String] {
        var keys: [String] = []
        var path = registry + "/" + repository
        while true {
            keys.append(path)
            guard let slash = path.lastIndex(of: "/") else { break }
            path = String(path[..<slash])
        }
        if registry == Reference.defaultRegistry {
            keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
        } else {
            keys += ["https://" + registry, "http://" + registry]
        }
        return keys
    }

    private static func auths(_ file: String) throws(RegistryError) -> [String: JSON]? {
        guard let bytes = readBytes(file, limit: 4 << 20) else { return nil }
        guard let json = try? JSON.parse(bytes) else { throw .credentials(file: file, reason: "it is not JSON") }
        guard let auths = json["auths"] else { return [:] }
        guard case .object(let pairs) = auths else { throw .credentials(file: file, reason: "\"auths\" is not an object") }
        return Dictionary(pairs, uniquingKeysWith: { $1 })
    }

    private static func decode(_ entry: JSON, key: String, file: String) throws(RegistryError) -> Credential? {
        guard let encoded = entry["auth"]?.string, !encoded.isEmpty else {
            if entry["identitytoken"] != nil { throw .credentials(file: file, reason: "the entry for \(key) holds an identity token, which is not supported; log in with a password") }
            return nil  // a credential helper's entry: nothing stored here
        }
        guard let data = Data(base64Encoded: encoded), let text = String(data: data, encoding: .utf8),
              let colon = text.firstIndex(of: ":") else {
            throw .credentials(file: file, reason: "the \"auth\" of \(key) is not base64 of user:password")
        }
        return Credential(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
    }

    /// Stores (or with nil, removes) the credential for `key` in `writeFile`, keeping every
    /// other entry and key of the file; written atomically with mode 0600.
    public func store(_ credential: Credential?, key: String) throws(RegistryError) {
        let file = writeFile
        var root: [(String, JSON)] = []
        if let bytes = readBytes(file, limit: 4 << 20) {
            guard case .object(let pairs)? = try? JSON.parse(bytes) else { throw .credentials(file: file, reason: "it is not a JSON object") }
            root = pairs
        }
        var auths: [(String, JSON)] = []
        if let index = root.firstIndex(where: { $0.0 == "auths" }) {
            guard case .object(let pairs) = root[index].1 else { throw .credentials(file: file, reason: "\"auths\" is not an object") }
            auths = pairs
            root.remove(at: index)
        }
        let existed = auths.contains { $0.0 == key }
        auths.removeAll { $0.0 == key }
        if let credential {
            let encoded = Data((credential.username + ":" + credential.password).utf8).base64EncodedString()
            auths.append((key, .object([("auth", .string(encoded))])))
        } else if !existed {
            throw .credentials(file: file, reason: "it has no credentials for \(key)")
        }
        root.insert(("auths", .object(auths)), at: 0)
        let directory = String(file[..<(file.lastIndex(of: "/") ?? file.startIndex)])
        do {
            if !directory.isEmpty { try makeDirectories(directory, mode: 0o700) }
            try Primitives.writeFile(file, JSON.object(root).text + "\n", mode: 0o600, atomically: true)
        } catch {
            throw .credentials(file: file, reason: "cannot write it (\(error))")
        }
    }
}
