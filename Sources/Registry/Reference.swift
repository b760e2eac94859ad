import Images

/// An image reference read as Docker reads it: `nginx` is `docker.io/library/nginx:latest`,
/// `dockersamples/101-tutorial` is `docker.io/dockersamples/101-tutorial:latest`, and
/// `localhost:5000/app@sha256:...` is as written.
public struct Reference: Hashable, Sendable, CustomStringConvertible {
    /// The registry as users name it (`docker.io`, `localhost:5000`).
    public var registry: String
    /// The repository within it (`library/nginx`).
    public var repository: String
    /// Nil only when a digest is given alone.
    public var tag: String?
    public var digest: Digest?

    public static let defaultRegistry = "docker.io"

    public init(registry: String, repository: String, tag: String? = nil, digest: Digest? = nil) {
        self.registry = registry; self.repository = repository; self.tag = tag; self.digest = digest
    }

    /// `registry/repository`, without tag or digest.
    public var name: String { registry + "/" + repository }

    /// The full form: `docker.io/library/nginx:latest`, `host/app@sha256:...`.
    public var description: String {
        var text = name
        if let tag { text += ":" + tag }
        if let digest { text += "@" + digest.description }
        return text
    }

    /// What the registry's manifest endpoint takes: the digest when there is one.
    public var manifestReference: String { digest?.description ?? tag ?? "latest" }

    /// The shortest form Docker would print (`nginx:latest`, `localhost:5000/app:1`).
    public var familiarName: String {
        guard registry == Reference.defaultRegistry else { return name }
        return repository.hasPrefix("library/") && repository.split(separator: "/").count == 2
            ? String(repository.dropFirst("library/".count)) : repository
    }

    /// Parses `text`; `aliases` (registries.conf's short-name aliases) apply to names without
    /// a registry before Docker's default does.
    public init(parsing text: String, aliases: [String: String] = [:]) throws(RegistryError) {
        func bad(_ reason: String) -> RegistryError { .invalidReference(text, reason: reason) }
        guard !text.isEmpty else { throw bad("it is empty") }
        guard text.utf8.count <= 512 else { throw bad("it is longer than 512 bytes") }
        var rest = Substring(text)
        var digest: Digest?
        if let at = rest.firstIndex(of: "@") {
            do { digest = try Digest(parsing: String(rest[rest.index(after: at)...])) } catch {
                throw bad("the digest is not sha256: followed by 64 lowercase hex digits")
            }
            rest = rest[..<at]
        }
        var tag: String?
        // A tag follows the last colon, if that colon is after the last slash (else it is a port).
        if let colon = rest.lastIndex(of: ":"), rest[colon...].firstIndex(of: "/") == nil {
            let candidate = rest[rest.index(after: colon)...]
            guard Reference.isTag(candidate) else { throw bad("the tag \"\(candidate)\" is not 1-128 of [A-Za-z0-9_.-], starting with a letter, digit or _") }
            tag = String(candidate)
            rest = rest[..<colon]
        }
        var components = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        var registry = Reference.defaultRegistry
        if components.count > 1, let first = components.first,
           first.contains(".") || first.contains(":") || first == "localhost" || first.contains(where: \.isUppercase) {
            guard Reference.isHost(first) else { throw bad("\"\(first)\" is not a registry host[:port]") }
            registry = first
            components.removeFirst()
        } else if let alias = aliases[String(rest)] {
            // A short-name alias names the registry and repository (and maybe a tag) in full.
            var resolved = try Reference(parsing: alias)
            if let tag { resolved.tag = tag } else if digest != nil { resolved.tag = nil }
            if let digest { resolved.digest = digest }
            self = resolved
            return
        }
        for component in components {
            if component.contains(where: \.isUppercase) { throw bad("repository name must be lowercase") }
            guard Reference.isComponent(component) else {
                throw bad(component.isEmpty ? "a path component is empty" : "\"\(component)\" is not a repository path component ([a-z0-9] separated by ., _, __ or dashes)")
            }
        }
        if registry == Reference.defaultRegistry && components.count == 1 { components.insert("library", at: 0) }
        let repository = components.joined(separator: "/")
        guard registry.utf8.count + 1 + repository.utf8.count <= 255 else { throw bad("the name is longer than 255 characters") }
        self.init(registry: registry, repository: repository, tag: tag ?? (digest == nil ? "latest" : nil), digest: digest)
    }

    static func isTag(_ text: Substring) -> Bool {
        guard let first = text.utf8.first, text.utf8.count <= 128 else { return false }
        func word(_ c: UInt8) -> Bool { isLowerAlnum(c) || (c >= 65 && c <= 90) || c == 95 }
        return word(first) && text.utf8.allSatisfy { word($0) || $0 == 46 || $0 == 45 }
    }

    /// `[a-z0-9]+` runs joined by one `.`, one or two `_`, or any number of `-`.
    static func isComponent(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard let first = bytes.first, let last = bytes.last, isLowerAlnum(first), isLowerAlnum(last) else { return false }
        var i = 0
        while i < bytes.count {
            if isLowerAlnum(bytes[i]) { i += 1; continue }
            var j = i
            while j < bytes.count && !isLowerAlnum(bytes[j]) { j += 1 }
            let separator = bytes[i..<j]
            let ok = separator.elementsEqual([46]) || separator.elementsEqual([95]) || separator.elementsEqual([95, 95])
                || separator.allSatisfy { $0 == 45 }
            guard ok else { return false }
            i = j
        }
        return true
    }

    /// host or host:port, where host is DNS labels or an IPv4 address (or [IPv6]).
    static func isHost(_ text: String) -> Bool {
        var host = Substring(text)
        if let colon = host.lastIndex(of: ":"), !host.hasPrefix("[") || host[..<colon].hasSuffix("]") {
            let port = host[host.index(after: colon)...]
            guard !port.isEmpty, port.count <= 5, port.allSatisfy(\.isASCII), port.allSatisfy(\.isNumber), Int(port)! <= 65535 else { return false }
            host = host[..<colon]
        }
        if host.hasPrefix("[") { return host.hasSuffix("]") && host.count > 2 && host.dropFirst().dropLast().allSatisfy { $0.isHexDigit || $0 == ":" } }
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        return !labels.isEmpty && labels.allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }
}

private func isLowerAlnum(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
