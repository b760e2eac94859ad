import Glibc
import Images
import Primitives

/// Images by name: what `pull`, `images`, `rmi`, `load`, `login` and `run NAME` do, as calls
/// any runtime can make. It pairs the store with the registries' configuration and the
/// user's credentials.
public final class ImageLibrary: Sendable {
    public enum PullPolicy: String, Sendable, CaseIterable {
        /// Pull when the store has no image of that name (Docker's and Podman's default).
        case missing
        case always
        case never
    }

    public let store: ImageStore
    public let configuration: RegistryConfiguration
    public let credentials: CredentialStore

    public init(store: ImageStore, configuration: RegistryConfiguration, credentials: CredentialStore) {
        self.store = store; self.configuration = configuration; self.credentials = credentials
    }

    /// An image given by path rather than by name: it exists on disk, or starts with /, ./ or ../.
    public static func isPath(_ text: String) -> Bool {
        text.hasPrefix("/") || text.hasPrefix("./") || text.hasPrefix("../") || text == "." || fileExists(text)
    }

    /// Reads a name as Docker does, with registries.conf's short-name aliases.
    public func reference(_ text: String) throws(RegistryError) -> Reference {
        try Reference(parsing: text, aliases: configuration.aliases)
    }

    /// The stored image `text` names: a name (tag or digest), or an image ID or a unique
    /// prefix of one, as `docker run` and `docker rmi` take them.
    public func find(_ text: String) -> StoredImage? {
        let images = store.catalog()
        // A name first, as Docker does: `cafe` is the image named cafe:latest before an ID prefix.
        if let reference = try? reference(text) {
            let named = reference.digest.map { digest in images.first { $0.digests.contains(reference.name + "@" + digest.description) } }
                ?? images.first { $0.names.contains(reference.description) }
            if let named { return named }
        }
        let hex = text.hasPrefix("sha256:") ? String(text.dropFirst(7)) : text
        guard hex.count >= 4, hex.count <= 64, hex.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        let matches = images.filter { $0.id.hex.hasPrefix(hex) }
        return matches.count == 1 ? matches[0] : nil
    }

    /// The image to run for `text`: a path is loaded as before; a name is found in the store
    /// or pulled, as `policy` says.
    public func image(for text: String, policy: PullPolicy = .missing, platform: Platform? = nil,
                      progress: @escaping @Sendable (PullEvent) -> Void = { _ in }) throws -> Image {
        if ImageLibrary.isPath(text) { return try store.load(text) }
        let reference = try reference(text)
        if policy != .always, let stored = find(text) { return try store.image(stored) }
        if policy == .never { throw RegistryError.imageNotInStore(reference.description) }
        return try store.image(try pull(reference, platform: platform, progress: progress))
    }

    @discardableResult
    public func pull(_ reference: Reference, platform: Platform? = nil, parallel: Int = 3,
                     progress: @escaping @Sendable (PullEvent) -> Void = { _ in }) throws -> StoredImage {
        try Puller(store: store, configuration: configuration, credentials: credentials, platform: platform,
                   parallel: parallel, progress: progress).pull(reference)
    }

    /// `load -i`: an OCI layout or `docker save` archive into the store, under the names it
    /// carries (read as Docker reads them). Returns the names, or the ID when it has none.
    public func load(_ path: String) throws -> [String] {
        let image = try store.load(path)
        let names = image.tags.compactMap { try? reference($0).description }
        let stored = StoredImage(id: image.id, names: [], layers: image.config.rootfs.diff_ids, size: image.size,
                                 created: image.config.created)
        if names.isEmpty { try store.record(stored, name: nil) }
        for name in names { try store.record(stored, name: name) }
        return names.isEmpty ? [image.id.description] : names
    }

    /// What `rmi` did, line by line, as Docker prints it.
    public enum Removal: Equatable, Sendable {
        case untagged(String)
        case deleted(Digest)
    }

    /// Removes a name, or a whole image by ID. An image that loses its last name is deleted
    /// with its layers that nothing else uses: no other stored image, and none of
    /// `layersInUse` (those of containers). An image a container uses is refused
    /// (`usedBy` names them) unless `force`, which only takes its names away.
    public func remove(_ text: String, force: Bool, usedBy: (Digest) -> [String], layersInUse: Set<Digest>) throws -> [Removal] {
        guard let target = find(text) else { throw RegistryError.imageNotInStore(text) }
        let byName = (try? reference(text)).map { target.names.contains($0.description) } ?? false
        let users = usedBy(target.id)
        if !users.isEmpty && !force { throw RegistryError.imageInUse(image: text, containers: users) }
        var removals: [Removal] = []
        var freedLayers: [Digest] = []
        var deleted = false
        try store.updateCatalog { images in
            guard let index = images.firstIndex(where: { $0.id == target.id }) else { return }
            if byName, let name = try? reference(text).description, images[index].names.count > 1 || !users.isEmpty {
                images[index].names.removeAll { $0 == name }
                removals.append(.untagged(name))
                return
            }
            if !users.isEmpty {
                removals += images[index].names.map { .untagged($0) }
                images[index].names = []
                return
            }
            let image = images.remove(at: index)
            removals += image.names.map { .untagged($0) } + image.digests.map { .untagged($0) }
            let kept = Set(images.flatMap(\.layers)).union(layersInUse)
            freedLayers = image.layers.filter { !kept.contains($0) }
            removals.append(.deleted(image.id))
            deleted = true
        }
        if deleted {
            store.removeLayers(freedLayers)
            store.removeBlob(target.id)
        }
        return removals
    }

    /// Checks the credential against the registry's API root (a token is fetched if it
    /// asks for one), then stores it where Podman and skopeo read it.
    public func login(registry: String, credential: Credential) throws {
        var endpoint = try configuration.endpoints(for: Reference(registry: registry, repository: "x")).last!
        endpoint.repository = ""
        let connection = try RegistryConnection(endpoint: endpoint, reference: registry, authorizer: Authorizer(credential: credential),
                                            trust: configuration.certificates(for: endpoint.host))
        _ = try connection.get("", what: "login") { _ in true }
        try credentials.store(credential, key: registry)
    }

    public func logout(registry: String) throws {
        try credentials.store(nil, key: registry)
    }
}
