import FoundationEssentials
import Glibc
import Primitives

/// An image ready to run: its configuration and its unpacked layers, bottom first.
public struct Image: Sendable {
    /// The image ID: the digest of its configuration, as Docker shows it.
    public var id: Digest
    public var source: String
    public var config: ImageConfig
    /// Directories of unpacked layers in the shared cache, bottom layer first.
    public var layerDirectories: [String]
    /// Names it came with: a `docker save` archive's RepoTags, an OCI layout's ref.name.
    public var tags: [String]
    /// Bytes of its layers as stored in the archive or registry.
    public var size: Int64 = 0
}

/// Loads images from OCI image layouts (directory or tar) and `docker save` archives,
/// verifies every blob, and unpacks each layer once into a cache shared by all containers,
/// keyed by the layer's uncompressed digest (its diff ID).
public final class ImageStore: Sendable {
    public let directory: String
    private var layersDirectory: String { directory + "/layers" }
    private var scratchDirectory: String { directory + "/tmp" }

    public init(directory: String) throws {
        self.directory = directory
        for path in [directory, directory + "/layers", directory + "/tmp", directory + "/blobs"] {
            if mkdir(path, 0o700) != 0 && errno != EEXIST { throw ImageError.io(what: "cannot create \(path)", errno: errno) }
        }
        sweepScratch()
    }

    /// Removes the scratch directories of unpacks that were killed. A live unpack holds a
    /// lock on its directory until it is renamed into the cache or removed; one made in the
    /// last minute is left alone too (it is locked just after it is made).
    func sweepScratch(olderThan seconds: Int = 60) {
        let parent = Glibc.open(scratchDirectory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        guard parent >= 0 else { return }
        defer { close(parent) }
        let now = time(nil)
        for name in (try? listDirectory(parent)) ?? [] where name.hasPrefix("layer-") {
            let fd = openat(parent, name, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, now - st.st_mtim.tv_sec >= seconds, flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }
            try? removeTree(parent, name)
        }
    }

    /// The cache directory of a layer, whether or not it is unpacked yet.
    public func layerDirectory(_ diffID: Digest) -> String { layersDirectory + "/" + diffID.hex }

    public func load(_ path: String) throws -> Image {
        let archive = try ImageArchive(path: path)
        if archive.exists("index.json") { return try loadOCI(archive) }
        if archive.exists("manifest.json") { return try loadDockerSave(archive) }
        throw ImageError.unrecognized(path: path, reason: "it has neither index.json (OCI layout) nor manifest.json (docker save)")
    }

    // MARK: OCI layout

    private func loadOCI(_ archive: ImageArchive) throws -> Image {
        if archive.exists("oci-layout") {
            struct Layout: Decodable { var imageLayoutVersion: String }
            let layout: Layout = try decode(try archive.open("oci-layout", what: "oci-layout").readAll(limit: 4096, what: "oci-layout"), "oci-layout")
            guard layout.imageLayoutVersion.hasPrefix("1.") else {
                throw ImageError.unsupported(what: "OCI layout version \(layout.imageLayoutVersion)", reason: "only 1.x is")
            }
        }
        let index: ImageIndex = try decode(try archive.open("index.json", what: "index.json").readAll(limit: 1 << 22, what: "index.json"), "index.json")
        var manifestDescriptor = try choose(index.manifests, in: "index.json")
        // A multi-platform image: one more level of index.
        if manifestDescriptor.mediaType == MediaType.ociIndex || manifestDescriptor.mediaType == MediaType.dockerList {
            let nested: ImageIndex = try readBlob(archive, manifestDescriptor, what: "image index")
            manifestDescriptor = try choose(nested.manifests, in: "image index \(manifestDescriptor.digest.short)")
        }
        let manifest: ImageManifest = try readBlob(archive, manifestDescriptor, what: "manifest")
        let config: ImageConfig = try readBlob(archive, manifest.config, what: "image config", keep: true)
        try check(config, layers: manifest.layers.count, listedIn: "the manifest")
        var directories: [String] = []
        for (layer, diffID) in zip(manifest.layers, config.rootfs.diff_ids) {
            let what = "layer \(layer.digest.short)"
            if let mediaType = layer.mediaType, mediaType.hasSuffix("zstd") {
                throw ImageError.unsupported(what: what, reason: "zstd-compressed layers are not; use gzip or uncompressed layers")
            }
            let member = blobPath(layer.digest)
            directories.append(try unpack(diffID: diffID, blob: layer, what: what) { try archive.open(member, what: what) })
        }
        let name = manifestDescriptor.annotations?["org.opencontainers.image.ref.name"]
        return Image(id: manifest.config.digest, source: archive.path, config: config, layerDirectories: directories,
                     tags: name.map { [$0] } ?? [], size: manifest.layers.reduce(0) { $0 + $1.size })
    }

    /// The manifest for this machine's platform (or the only one).
    private func choose(_ manifests: [Descriptor], in what: String) throws -> Descriptor {
        guard !manifests.isEmpty else { throw ImageError.invalid(what: what, reason: "it lists no manifest") }
        let own = ImageStore.hostArchitecture
        if let match = manifests.first(where: { $0.platform == nil || ($0.platform!.os == "linux" && $0.platform!.architecture == own) }) {
            return match
        }
        let offered = manifests.compactMap { $0.platform.map { "\($0.os)/\($0.architecture)" } }.joined(separator: ", ")
        throw ImageError.unsupported(what: "image", reason: "it has no linux/\(own) manifest (it has \(offered))")
    }

    // MARK: docker save

    private func loadDockerSave(_ archive: ImageArchive) throws -> Image {
        let entries: [DockerSaveEntry] = try decode(try archive.open("manifest.json", what: "manifest.json").readAll(limit: 1 << 22, what: "manifest.json"), "manifest.json")
        guard let entry = entries.first else { throw ImageError.invalid(what: "manifest.json", reason: "it lists no image") }
        // The config's file name is its digest ("<hex>.json", or blobs/sha256/<hex> since Docker 25).
        let name = entry.Config.split(separator: "/").last.map(String.init) ?? entry.Config
        let configDigest = try Digest(hex: name.hasSuffix(".json") ? String(name.dropLast(5)) : name)
        let configSource = DigestingSource(try archive.open(entry.Config, what: "image config"))
        let configBytes = try configSource.readAll(limit: 1 << 22, what: "image config")
        try check(configSource, expected: configDigest, size: nil, what: "image config")
        let config: ImageConfig = try decode(configBytes, "image config")
        try check(config, layers: entry.Layers.count, listedIn: "manifest.json")
        try storeBlob(configBytes, digest: configDigest)
        // Layers carry no descriptor here: each is verified against its diff ID, which the
        // (verified) config names.
        var directories: [String] = []
        var size: Int64 = 0
        for (member, diffID) in zip(entry.Layers, config.rootfs.diff_ids) {
            let what = "layer \(diffID.short)"
            directories.append(try unpack(diffID: diffID, what: what, verifyCached: true) { try archive.open(member, what: what) })
            size += (try? archive.open(member, what: what).length) ?? 0
        }
        return Image(id: configDigest, source: archive.path, config: config, layerDirectories: directories,
                     tags: entry.RepoTags ?? [], size: size)
    }

    // MARK: Blobs and layers

    private func blobPath(_ digest: Digest) -> String { "blobs/sha256/" + digest.hex }

    /// A small blob of the archive, verified; with `keep`, also stored in the store's blobs.
    private func readBlob<T: Decodable>(_ archive: ImageArchive, _ descriptor: Descriptor, what: String, keep: Bool = false) throws -> T {
        guard descriptor.size <= 1 << 22 else { throw ImageError.invalid(what: what, reason: "larger than 4 MiB") }
        let source = DigestingSource(try archive.open(blobPath(descriptor.digest), what: what))
        let bytes = try source.readAll(limit: 1 << 22, what: what)
        try check(source, expected: descriptor.digest, size: descriptor.size, what: what)
        let value: T = try decode(bytes, what)
        if keep { try storeBlob(bytes, digest: descriptor.digest) }
        return value
    }

    private func verify(_ blob: ByteSource, expected: Digest, size: Int64?, what: String) throws {
        let source = DigestingSource(blob)
        try source.drain()
        try check(source, expected: expected, size: size, what: what)
    }

    private func check(_ source: DigestingSource, expected: Digest, size: Int64?, what: String) throws {
        if let size, source.count != size { throw ImageError.sizeMismatch(what: what, expected: size, actual: source.count) }
        let actual = source.finish()
        guard actual == expected else { throw ImageError.digestMismatch(what: what, expected: expected.description, actual: actual.description) }
    }

    /// The layer's cache directory, unpacking it first if needed. The uncompressed stream
    /// must match `diffID`, and the blob itself `blob`'s digest and size when the image has a
    /// descriptor for it (checked in the same pass: the blob is read once). A layer is
    /// unpacked into a scratch directory and renamed into the cache only once complete and
    /// verified, so a rejected layer leaves nothing behind and concurrent loads of one
    /// layer never see half of it. A cached layer is checked against `blob` (or, with
    /// `verifyCached`, its stream against `diffID`) before it is used.
    func unpack(diffID: Digest, blob: Descriptor? = nil, what: String, verifyCached: Bool = false,
                        open: () throws -> ByteSource) throws -> String {
        let final = layerDirectory(diffID)
        var st = stat()
        if stat(final, &st) == 0 {
            if let blob {
                try verify(try open(), expected: blob.digest, size: blob.size, what: what)
            } else if verifyCached {
                try verifyLayerStream(try open(), diffID: diffID, what: what)
            }
            return final
        }
        var template = Array((scratchDirectory + "/layer-XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { throw ImageError.io(what: "cannot create a scratch directory in \(scratchDirectory)", errno: errno) }
        let scratch = String(cBuffer: template)
        let scratchName = String(scratch.split(separator: "/").last!)
        let scratchParent = Glibc.open(scratchDirectory, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
        defer { close(scratchParent) }
        do {
            let root = Glibc.open(scratch, O_DIRECTORY | O_RDONLY | O_CLOEXEC)
            guard root >= 0 else { throw ImageError.io(what: "cannot open \(scratch)", errno: errno) }
            defer { close(root) }
            flock(root, LOCK_EX)  // held while this process lives: see sweepScratch
            let raw = DigestingSource(try open())
            let uncompressed = DigestingSource(try decompressed(raw, what: what))
            do {
                try LayerUnpacker(rootFD: root, layer: diffID.short).unpack(TarReader(uncompressed, what: what))
                try uncompressed.drain()  // padding after the end marker counts toward the digest
                if blob != nil { try raw.drain() }
            } catch {
                // A blob that is not what the image says explains any failure reading it.
                if let blob, (try? raw.drain()) != nil { try check(raw, expected: blob.digest, size: blob.size, what: what) }
                throw error
            }
            if let blob { try check(raw, expected: blob.digest, size: blob.size, what: what) }
            let actual = uncompressed.finish()
            guard actual == diffID else {
                throw ImageError.digestMismatch(what: "\(what) (uncompressed)", expected: diffID.description, actual: actual.description)
            }
            fchmod(root, 0o755)
            if rename(scratch, final) != 0 {
                guard errno == EEXIST || errno == ENOTEMPTY else { throw ImageError.io(what: "cannot store \(what) in \(final)", errno: errno) }
                try removeTree(scratchParent, scratchName)  // another load stored it first
            }
            return final
        } catch {
            try? removeTree(scratchParent, scratchName)
            throw error
        }
    }

    private func verifyLayerStream(_ blob: ByteSource, diffID: Digest, what: String) throws {
        let uncompressed = DigestingSource(try decompressed(blob, what: what))
        try uncompressed.drain()
        let actual = uncompressed.finish()
        guard actual == diffID else { throw ImageError.digestMismatch(what: what, expected: diffID.description, actual: actual.description) }
    }

    /// gzip is recognised by its magic number, whatever the media type says; zstd is refused.
    private func decompressed(_ blob: ByteSource, what: String) throws -> ByteSource {
        let peek = PeekingSource(blob)
        let magic = try peek.peek(4)
        if magic.starts(with: [0x1f, 0x8b]) { return try GzipSource(peek, what: what) }
        if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            throw ImageError.unsupported(what: what, reason: "zstd-compressed layers are not; use gzip or uncompressed layers")
        }
        return peek
    }

    /// The config is for this machine and names as many layers as the manifest lists.
    private func check(_ config: ImageConfig, layers: Int, listedIn manifest: String) throws {
        try checkPlatform(config)
        guard config.rootfs.diff_ids.count == layers else {
            throw ImageError.invalid(what: "image config", reason: "it lists \(config.rootfs.diff_ids.count) layers, \(manifest) \(layers)")
        }
    }

    func checkPlatform(_ config: ImageConfig) throws {
        if let os = config.os, os != "linux" { throw ImageError.unsupported(what: "image", reason: "it is built for \(os), not linux") }
        if let arch = config.architecture, arch != ImageStore.hostArchitecture {
            throw ImageError.unsupported(what: "image", reason: "it is built for \(arch); this host is \(ImageStore.hostArchitecture)")
        }
    }

    /// This machine's architecture in OCI's words.
    public static var hostArchitecture: String {
        var name = utsname()
        uname(&name)
        let machine = withUnsafeBytes(of: name.machine) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        switch machine {
        case "x86_64": return "amd64"
        case "aarch64": return "arm64"
        case "armv7l": return "arm"
        default: return machine
        }
    }
}

private func decode<T: Decodable>(_ bytes: [UInt8], _ what: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    } catch let error as ImageError {
        throw error
    } catch {
        throw ImageError.invalid(what: what, reason: "not the JSON expected (\(error))")
    }
}

/// Lets the first bytes be looked at (magic numbers) and then read again.
final class PeekingSource: ByteSource {
    private let inner: ByteSource
    private var buffered: [UInt8] = []
    private var position = 0

    init(_ inner: ByteSource) { self.inner = inner }

    func peek(_ count: Int) throws -> [UInt8] {
        while buffered.count < count {
            var chunk = [UInt8](repeating: 0, count: count - buffered.count)
            let n = try chunk.withUnsafeMutableBytes { try inner.read(into: $0) }
            if n == 0 { break }
            buffered += chunk[0..<n]
        }
        return Array(buffered.prefix(count))
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if position < buffered.count {
            let n = min(buffer.count, buffered.count - position)
            buffered.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + position, byteCount: n) }
            position += n
            return n
        }
        return try inner.read(into: buffer)
    }
}
