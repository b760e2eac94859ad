import FoundationEssentials
import Glibc
import Images
import Primitives
import Synchronization

/// What a pull is doing, for progress output: one event per layer step.
public struct PullEvent: Sendable {
    public enum Step: Sendable, Equatable {
        case resolved(manifest: Digest, endpoint: String)
        case waiting
        case alreadyExists
        /// Bytes of the blob held so far (resumed bytes included) and its size.
        case downloading(done: Int64, total: Int64)
        case resuming(from: Int64)
        case extracting
        case complete
    }
    /// The layer's blob digest, short (empty for image-wide events).
    public var layer: String
    public var step: Step
}

/// Pulls images from registries that speak the OCI distribution protocol into the store:
/// the manifest (an index picks this platform), the configuration, then the layers in
/// parallel (a bounded number at once), each checked against its digest while it streams
/// and unpacked into the shared layer cache. A layer already cached is never fetched; an
/// interrupted download resumes with a Range request; nothing unverified counts as present.
public final class Puller: Sendable {
    public let store: ImageStore
    public let configuration: RegistryConfiguration
    public let credentials: CredentialStore
    public let platform: Platform
    public let parallel: Int
    let progress: @Sendable (PullEvent) -> Void

    public init(store: ImageStore, configuration: RegistryConfiguration, credentials: CredentialStore,
                platform: Platform? = nil, parallel: Int = 3, progress: @escaping @Sendable (PullEvent) -> Void = { _ in }) {
        self.store = store; self.configuration = configuration; self.credentials = credentials
        self.platform = platform ?? Platform(os: "linux", architecture: ImageStore.hostArchitecture)
        self.parallel = max(1, parallel); self.progress = progress
    }

    static let manifestTypes = [MediaType.ociManifest, MediaType.ociIndex, MediaType.dockerManifest, MediaType.dockerList]

    /// Pulls `reference` and records it in the catalog under its name (and digest).
    @discardableResult
    public func pull(_ reference: Reference) throws -> StoredImage {
        let endpoints = try configuration.endpoints(for: reference)
        let credential = try credentials.credential(registry: reference.registry, repository: reference.repository)
        var firstError: Error?
        for (index, endpoint) in endpoints.enumerated() {
            // A mirror may hold its own credentials; the registry's are the fallback.
            let own = endpoint.isMirror ? try credentials.credential(registry: endpoint.host, repository: endpoint.repository) : nil
            let authorizer = Authorizer(credential: own ?? credential)
            do {
                return try pull(reference, from: endpoint, authorizer: authorizer)
            } catch let error as RegistryError {
                // A mirror that cannot serve it is passed over, as Podman does; the registry's own
                // answer is the one reported (or the first mirror's, if the registry is blocked off).
                if index == endpoints.count - 1 {
                    // An unreachable registry behind a mirror that answered: the mirror's answer says more.
                    if case .unreachable = error, let firstError { throw firstError }
                    throw error
                }
                if case .digestMismatch = error { throw error }
                firstError = firstError ?? error
            }
        }
        throw firstError!
    }

    private func pull(_ reference: Reference, from endpoint: RegistryConfiguration.Endpoint, authorizer: Authorizer) throws -> StoredImage {
        let trust = configuration.certificates(for: endpoint.host)
        let connection = try RegistryConnection(endpoint: endpoint, reference: reference.description, authorizer: authorizer, trust: trust)
        var (manifestBytes, mediaType) = try fetchManifest(reference.manifestReference, connection)
        var manifestDigest = SHA256.digest(manifestBytes)
        if let digest = reference.digest, digest != manifestDigest {
            throw RegistryError.digestMismatch(what: "manifest \(reference)", host: endpoint.host, expected: digest.description,
                                               actual: manifestDigest.description)
        }
        let pulledBy = manifestDigest
        if mediaType == MediaType.ociIndex || mediaType == MediaType.dockerList {
            let index: ImageIndex = try decode(manifestBytes, "image index of \(reference)")
            let chosen = try choose(index.manifests, reference: reference)
            (manifestBytes, mediaType) = try fetchManifest(chosen.description, connection)
            manifestDigest = SHA256.digest(manifestBytes)
            guard manifestDigest == chosen else {
                throw RegistryError.digestMismatch(what: "manifest \(chosen.short)", host: endpoint.host, expected: chosen.description,
                                                   actual: manifestDigest.description)
            }
        }
        guard mediaType == MediaType.ociManifest || mediaType == MediaType.dockerManifest else {
            throw RegistryError.unsupportedManifest(reference: reference.description, mediaType: mediaType)
        }
        progress(PullEvent(layer: "", step: .resolved(manifest: pulledBy, endpoint: endpoint.host + "/" + endpoint.repository)))
        let manifest: ImageManifest = try decode(manifestBytes, "manifest of \(reference)")
        let configBytes = try store.blob(manifest.config.digest) ?? fetchSmallBlob(manifest.config, what: "image config", connection)
        let config: ImageConfig = try decode(configBytes, "image config of \(reference)")
        // The platform asked for (this machine's by default), whatever the index said.
        if config.os.map({ $0 != platform.os }) == true || config.architecture.map({ $0 != platform.architecture }) == true {
            throw RegistryError.noMatchingPlatform(reference: reference.description, wanted: platform.description,
                                                   offered: ["\(config.os ?? "?")/\(config.architecture ?? "?")"])
        }
        guard config.rootfs.diff_ids.count == manifest.layers.count else {
            throw ImageError.invalid(what: "image config of \(reference)",
                                     reason: "it lists \(config.rootfs.diff_ids.count) layers, the manifest \(manifest.layers.count)")
        }
        for layer in manifest.layers where layer.mediaType?.hasSuffix("zstd") == true {
            throw ImageError.unsupported(what: "layer \(layer.digest.short)", reason: "zstd-compressed layers are not; use gzip or uncompressed layers")
        }
        try fetchLayers(Array(zip(manifest.layers, config.rootfs.diff_ids)), endpoint: endpoint, reference: reference,
                        authorizer: authorizer, trust: trust, first: connection)
        try store.storeBlob(configBytes, digest: manifest.config.digest)
        try store.storeBlob(manifestBytes, digest: manifestDigest)
        let stored = StoredImage(id: manifest.config.digest, names: [], layers: config.rootfs.diff_ids,
                                 size: manifest.layers.reduce(0) { $0 + $1.size }, created: config.created)
        try store.record(stored, name: reference.tag != nil ? Reference(registry: reference.registry, repository: reference.repository,
                                                                        tag: reference.tag).description : nil,
                         digest: reference.name + "@" + pulledBy.description)
        progress(PullEvent(layer: "", step: .complete))
        return store.catalog().first { $0.id == stored.id } ?? stored
    }

    private func fetchManifest(_ tagOrDigest: String, _ connection: RegistryConnection) throws -> ([UInt8], String) {
        var body: [UInt8] = []
        let response = try connection.get("manifests/" + tagOrDigest, accept: Puller.manifestTypes, what: "manifest") { bytes in
            body += bytes
            return body.count <= 4 << 20
        }
        guard body.count <= 4 << 20 else { throw RegistryError.tooLarge(what: "the manifest of \(connection.reference)", limit: 4 << 20) }
        // The media type is the manifest's own when it says; the header otherwise.
        let declared = (try? JSON.parse(body))?["mediaType"]?.string
        let header = response.header("content-type")?.split(separator: ";").first.map { String($0).trimmed }
        return (body, declared ?? header ?? MediaType.ociManifest)
    }

    private func fetchSmallBlob(_ descriptor: Descriptor, what: String, _ connection: RegistryConnection) throws -> [UInt8] {
        guard descriptor.size <= 16 << 20 else { throw RegistryError.tooLarge(what: what, limit: 16 << 20) }
        var body: [UInt8] = []
        _ = try connection.get("blobs/" + descriptor.digest.description, what: what) { bytes in
            body += bytes
            return body.count <= descriptor.size
        }
        let actual = SHA256.digest(body)
        guard actual == descriptor.digest, body.count == descriptor.size else {
            throw RegistryError.digestMismatch(what: what, host: connection.endpoint.host, expected: descriptor.digest.description,
                                               actual: actual.description)
        }
        return body
    }

    /// The index entry for this platform (variant only when asked for one).
    private func choose(_ manifests: [Descriptor], reference: Reference) throws -> Digest {
        let candidates = manifests.filter { $0.platform?.os == platform.os && $0.platform?.architecture == platform.architecture }
        if let match = candidates.first(where: { platform.variant == nil || $0.platform?.variant == platform.variant }) { return match.digest }
        throw RegistryError.noMatchingPlatform(reference: reference.description, wanted: platform.description,
                                               offered: manifests.compactMap { $0.platform?.description })
    }

    // MARK: Layers

    /// Fetches and unpacks the layers the cache lacks, `parallel` at once, each on its own
    /// thread and connection. The first failure stops the others.
    private func fetchLayers(_ layers: [(Descriptor, Digest)], endpoint: RegistryConfiguration.Endpoint, reference: Reference,
                             authorizer: Authorizer, trust: [UInt8], first: RegistryConnection) throws {
        let next = Mutex(0)
        // The manifest's connection (TLS done, authorized) goes to the first worker.
        let spare = Mutex<RegistryConnection?>(first)
        let scheme = first.scheme
        let failure = Mutex<Error?>(nil)
        for (blob, diffID) in layers {
            progress(PullEvent(layer: blob.digest.short, step: store.hasLayer(diffID) ? .alreadyExists : .waiting))
        }
        let work: @Sendable () -> Void = { [self] in
            let connection: RegistryConnection
            if let reused = spare.withLock({ value -> RegistryConnection? in defer { value = nil }; return value }) {
                connection = reused
            } else {
                do {
                    connection = try RegistryConnection(endpoint: endpoint, reference: reference.description, authorizer: authorizer,
                                                        trust: trust, scheme: scheme)
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                    return
                }
            }
            while failure.withLock({ $0 == nil }) {
                let index = next.withLock { value -> Int in defer { value += 1 }; return value }
                guard index < layers.count else { return }
                let (blob, diffID) = layers[index]
                do {
                    try fetchLayer(blob, diffID: diffID, connection, stop: { failure.withLock { $0 != nil } })
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        let missing = layers.filter { !store.hasLayer($0.1) }.count
        var threads: [pthread_t] = []
        for _ in 0..<min(parallel, missing) {
            do { threads.append(try startThread("a layer download", work)) } catch { failure.withLock { $0 = $0 ?? error }; break }
        }
        for thread in threads { pthread_join(thread, nil) }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    private func fetchLayer(_ blob: Descriptor, diffID: Digest, _ connection: RegistryConnection, stop: () -> Bool) throws {
        let short = blob.digest.short
        if store.hasLayer(diffID) { return }
        try store.withBlobLock(blob.digest) {
            // Another pull may have stored it while this one waited for the lock.
            if store.hasLayer(diffID) { progress(PullEvent(layer: short, step: .alreadyExists)); return }
            let path = store.partialBlobPath(blob.digest)
            try download(blob, to: path, connection, stop: stop)
            progress(PullEvent(layer: short, step: .extracting))
            do {
                _ = try store.unpackLayer(diffID: diffID, file: path, what: "layer \(short)")
            } catch {
                // A verified blob that does not unpack (hostile, or not the layer the config
                // says): kept, it would only fail again.
                unlink(path)
                throw error
            }
            unlink(path)
            progress(PullEvent(layer: short, step: .complete))
        }
    }

    /// Downloads a blob to `path`, resuming what a killed pull left there (Range), hashing as
    /// it streams. A blob whose digest or size is wrong is deleted: it never counts as present.
    private func download(_ blob: Descriptor, to path: String, _ connection: RegistryConnection, stop: () -> Bool) throws {
        let short = blob.digest.short
        let what = "layer \(short)"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ImageError.io(what: "cannot create \(path)", errno: errno) }
        defer { close(fd) }
        let hasher = SHA256()
        var held = Int64(lseek(fd, 0, SEEK_END))
        if held > blob.size { ftruncate(fd, 0); held = 0 }
        if held > 0 {
            // The bytes kept from last time count toward the digest: hash them first.
            lseek(fd, 0, SEEK_SET)
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            var read: Int64 = 0
            while read < held {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { break }
                buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                read += Int64(n)
            }
            held = read
            progress(PullEvent(layer: short, step: .resuming(from: held)))
        }
        var count = held
        var writeError: Int32 = 0
        var oversize = false
        var lastReport = count
        if held < blob.size {
            let headers = held > 0 ? ["Range: bytes=\(held)-"] : []
            do {
                _ = try connection.get("blobs/" + blob.digest.description, headers: headers, what: what, start: { status in
                    // A registry that ignores the Range sends the whole blob: start over.
                    if status != 206 && count > 0 {
                        ftruncate(fd, 0)
                        lseek(fd, 0, SEEK_SET)
                        hasher.reset()
                        count = 0
                    }
                }) { bytes in
                    guard !stop() else { return false }
                    guard count + Int64(bytes.count) <= blob.size else { oversize = true; return false }
                    var offset = 0
                    while offset < bytes.count {
                        let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                        if n < 0 { if errno == EINTR { continue }; writeError = errno; return false }
                        offset += n
                    }
                    hasher.update(bytes)
                    count += Int64(bytes.count)
                    if count - lastReport >= 1 << 20 || count == blob.size {
                        lastReport = count
                        progress(PullEvent(layer: short, step: .downloading(done: count, total: blob.size)))
                    }
                    return true
                }
            } catch {
                if writeError != 0 {
                    unlink(path)  // no space (or a failing disk): keep nothing half-written
                    throw ImageError.io(what: "cannot write \(what) to \(path)", errno: writeError)
                }
                if oversize {
                    unlink(path)
                    throw RegistryError.digestMismatch(what: what, host: connection.endpoint.host, expected: blob.digest.description,
                                                       actual: "that of more than its \(blob.size) bytes")
                }
                // Cut short: what arrived stays for the next pull to resume.
                throw error
            }
        }
        let actual = hasher.finish()
        guard count == blob.size, actual == blob.digest else {
            unlink(path)
            throw RegistryError.digestMismatch(what: what, host: connection.endpoint.host, expected: blob.digest.description,
                                               actual: count == blob.size ? actual.description : "that of \(count) bytes, not \(blob.size)")
        }
    }
}

private func decode<T: Decodable>(_ bytes: [UInt8], _ what: String) throws -> T {
    do { return try JSONDecoder().decode(T.self, from: Data(bytes)) } catch {
        throw ImageError.invalid(what: what, reason: "not the JSON expected")
    }
}
