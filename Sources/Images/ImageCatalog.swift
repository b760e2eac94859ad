import FoundationEssentials
import Glibc
import Primitives

/// An image the store keeps under names: what `netctl images` lists and `run NAME` finds.
public struct StoredImage: Codable, Sendable, Equatable {
    /// The image ID: its configuration's digest.
    public var id: Digest
    /// Full references it answers to (`docker.io/library/nginx:latest`); none: dangling.
    public var names: [String]
    /// `registry/repository@sha256:...` of the manifests it was pulled by.
    public var digests: [String]
    /// Diff IDs of its layers, bottom first (the cache's keys).
    public var layers: [Digest]
    /// Bytes of its layers as distributed (compressed where they were).
    public var size: Int64
    /// When it was built, from its configuration (RFC 3339).
    public var created: String?

    public init(id: Digest, names: [String], digests: [String] = [], layers: [Digest], size: Int64, created: String?) {
        self.id = id; self.names = names; self.digests = digests; self.layers = layers; self.size = size; self.created = created
    }
}

/// The named side of the store: `images.json` (the catalog), the configuration and
/// manifest blobs of stored images in `blobs/sha256/`, and locks that let concurrent pulls
/// of one layer download it once.
extension ImageStore {
    private var catalogPath: String { directory + "/images.json" }
    private var blobsDirectory: String { directory + "/blobs" }

    /// The stored images, in the order they were stored.
    public func catalog() -> [StoredImage] {
        guard let bytes = readBytes(catalogPath, limit: 64 << 20), !bytes.isEmpty else { return [] }
        return (try? JSONDecoder().decode([StoredImage].self, from: Data(bytes))) ?? []
    }

    /// Changes the catalog under its lock, so concurrent pulls and removals each see the
    /// other's result; written whole and renamed into place (a crash leaves old or new).
    @discardableResult
    public func updateCatalog<T>(_ change: (inout [StoredImage]) throws -> T) throws -> T {
        let lock = open(directory + "/images.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw ImageError.io(what: "cannot open \(directory)/images.lock", errno: errno) }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        var images = catalog()
        let result = try change(&images)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try writeFile(catalogPath, Array(try encoder.encode(images)), mode: 0o600, atomically: true, synced: true)
        } catch {
            throw ImageError.io(what: "cannot write \(catalogPath)", errno: (error as? SystemError)?.code ?? EIO)
        }
        return result
    }

    /// Stores `image` under `name` (taking the name from any image that had it) and, when
    /// given, the digest it was pulled by. An image left with no name stays, dangling, as
    /// in Docker, until `rmi` or `image prune`.
    public func record(_ image: StoredImage, name: String?, digest: String? = nil) throws {
        try updateCatalog { images in
            if let name { for i in images.indices { images[i].names.removeAll { $0 == name } } }
            if let index = images.firstIndex(where: { $0.id == image.id }) {
                if let name, !images[index].names.contains(name) { images[index].names.append(name) }
                if let digest, !images[index].digests.contains(digest) { images[index].digests.append(digest) }
            } else {
                var new = image
                new.names = name.map { [$0] } ?? []
                new.digests = digest.map { [$0] } ?? []
                images.append(new)
            }
        }
    }

    /// The runnable image for a stored one: its configuration from the blob store, its
    /// layers from the cache.
    public func image(_ stored: StoredImage) throws -> Image {
        guard let bytes = blob(stored.id) else {
            throw ImageError.invalid(what: "stored image \(stored.id.short)", reason: "its configuration is missing from the store")
        }
        let config: ImageConfig
        do { config = try JSONDecoder().decode(ImageConfig.self, from: Data(bytes)) } catch {
            throw ImageError.invalid(what: "image config \(stored.id.short)", reason: "not the JSON expected")
        }
        let directories = stored.layers.map(layerDirectory)
        for (diffID, path) in zip(stored.layers, directories) where !fileExists(path) {
            throw ImageError.invalid(what: "stored image \(stored.id.short)", reason: "layer \(diffID.short) is missing from the layer cache")
        }
        return Image(id: stored.id, source: stored.names.first ?? stored.id.description, config: config,
                     layerDirectories: directories, tags: stored.names)
    }

    // MARK: Blobs

    public func blobPath(of digest: Digest) -> String { blobsDirectory + "/" + digest.hex }

    /// A stored blob, checked against its digest (a damaged one counts as absent).
    public func blob(_ digest: Digest) -> [UInt8]? {
        guard let bytes = readBytes(blobPath(of: digest), limit: 16 << 20), SHA256.digest(bytes) == digest else { return nil }
        return bytes
    }

    /// Stores verified bytes under their digest (once: a blob already there stays).
    public func storeBlob(_ bytes: [UInt8], digest: Digest) throws {
        if blob(digest) != nil { return }
        guard SHA256.digest(bytes) == digest else {
            throw ImageError.digestMismatch(what: "blob", expected: digest.description, actual: SHA256.digest(bytes).description)
        }
        do {
            if !fileExists(blobsDirectory) { try makeDirectories(blobsDirectory, mode: 0o700) }
            // A name of its own: two pulls may store the same blob at once.
            let temporary = blobPath(of: digest) + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try writeFile(temporary, bytes, mode: 0o600, synced: true)
            if rename(temporary, blobPath(of: digest)) != 0 {
                let code = errno
                unlink(temporary)
                throw SystemError("cannot store blob \(digest.short)", code: code)
            }
        } catch {
            throw ImageError.io(what: "cannot store blob \(digest.short)", errno: (error as? SystemError)?.code ?? EIO)
        }
    }

    // MARK: Layers

    public func hasLayer(_ diffID: Digest) -> Bool { fileExists(layerDirectory(diffID)) }

    /// The download of a layer's blob, in the scratch directory: kept across a killed pull,
    /// so the next one resumes it.
    public func partialBlobPath(_ blob: Digest) -> String { directory + "/tmp/blob-" + blob.hex + ".partial" }

    /// Runs `body` holding the lock of one layer blob: a second pull of the same layer waits
    /// here, then finds the layer unpacked instead of downloading it again.
    public func withBlobLock<T>(_ blob: Digest, _ body: () throws -> T) throws -> T {
        let path = directory + "/tmp/blob-" + blob.hex + ".lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ImageError.io(what: "cannot open \(path)", errno: errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 && errno == EINTR {}
        return try body()
    }

    /// Unpacks a downloaded layer blob (already checked against its digest) into the cache;
    /// its uncompressed stream must match `diffID`.
    public func unpackLayer(diffID: Digest, file: String, what: String) throws -> String {
        try unpack(diffID: diffID, what: what) { try FileRegion(path: file, what: what) }
    }

    /// Removes cached layers (those no image or container uses any more; the caller knows).
    public func removeLayers(_ diffIDs: [Digest]) {
        for diffID in diffIDs { try? removeTree(layerDirectory(diffID)) }
    }

    public func removeBlob(_ digest: Digest) { unlink(blobPath(of: digest)) }
}
