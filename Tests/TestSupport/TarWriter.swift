import CZlib
import FoundationEssentials
import Glibc
import Images

/// Builds tar archives byte by byte, so tests can craft any member a layer may hold,
/// hostile ones included. Long paths use a PAX header.
public struct TarWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func directory(_ path: String, mode: UInt32 = 0o755) {
        entry(path, type: "5", mode: mode)
    }

    public mutating func file(_ path: String, _ content: String, mode: UInt32 = 0o644, uid: Int = 0, gid: Int = 0) {
        file(path, Array(content.utf8), mode: mode, uid: uid, gid: gid)
    }

    public mutating func file(_ path: String, _ content: [UInt8], mode: UInt32 = 0o644, uid: Int = 0, gid: Int = 0) {
        entry(path, type: "0", mode: mode, size: content.count, uid: uid, gid: gid)
        bytes += content
        bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
    }

    public mutating func symlink(_ path: String, to target: String) {
        entry(path, type: "2", mode: 0o777, link: target)
    }

    public mutating func hardLink(_ path: String, to target: String) {
        entry(path, type: "1", mode: 0o644, link: target)
    }

    public mutating func device(_ path: String, block: Bool = false, major: Int, minor: Int) {
        entry(path, type: block ? "4" : "3", mode: 0o666, major: major, minor: minor)
    }

    /// A PAX extended header with exactly this body (well-formed or not), for the next member.
    public mutating func paxHeader(_ body: String) {
        let data = Array(body.utf8)
        bytes += header("PaxHeader", type: "x", mode: 0o644, size: data.count, uid: 0, gid: 0, link: "", major: 0, minor: 0)
        bytes += data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
    }

    /// Two zero blocks: the end-of-archive marker.
    public func finished() -> [UInt8] { bytes + [UInt8](repeating: 0, count: 1024) }

    public mutating func entry(_ path: String, type: Character, mode: UInt32, size: Int = 0, uid: Int = 0, gid: Int = 0,
                               link: String = "", major: Int = 0, minor: Int = 0) {
        if path.utf8.count > 99 || link.utf8.count > 99 {
            var records = ""
            for (key, value) in [("path", path), ("linkpath", link)] where !value.isEmpty {
                let body = " \(key)=\(value)\n"
                var length = body.utf8.count + 1
                while String(length).utf8.count + body.utf8.count != length { length += 1 }
                records += "\(length)\(body)"
            }
            let data = Array(records.utf8)
            bytes += header("PaxHeader", type: "x", mode: 0o644, size: data.count, uid: 0, gid: 0, link: "", major: 0, minor: 0)
            bytes += data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
        }
        bytes += header(String(path.utf8.prefix(99))!, type: type, mode: mode, size: size, uid: uid, gid: gid,
                        link: String(link.utf8.prefix(99))!, major: major, minor: minor)
    }

    private func header(_ path: String, type: Character, mode: UInt32, size: Int, uid: Int, gid: Int, link: String,
                        major: Int, minor: Int) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, _ offset: Int) { for (i, byte) in text.utf8.enumerated() { block[offset + i] = byte } }
        func octal(_ value: Int, _ offset: Int, _ width: Int) { put(String(repeating: "0", count: max(0, width - 1 - String(value, radix: 8).count)) + String(value, radix: 8), offset) }
        put(path, 0)
        octal(Int(mode), 100, 8); octal(uid, 108, 8); octal(gid, 116, 8); octal(size, 124, 12); octal(0, 136, 12)
        block[156] = type.asciiValue!
        put(link, 157)
        put("ustar", 257); block[262] = 0; put("00", 263)
        octal(major, 329, 8); octal(minor, 337, 8)
        for i in 148..<156 { block[i] = 32 }
        let sum = block.reduce(0) { $0 + Int($1) }
        octal(sum, 148, 7)
        return block
    }
}

/// gzip of `bytes`, as image tools compress layers.
public func gzipped(_ bytes: [UInt8]) -> [UInt8] {
    var stream = z_stream()
    deflateInit2_(&stream, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
    defer { deflateEnd(&stream) }
    var input = bytes
    var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(bytes.count))) + 64)
    let produced: Int = input.withUnsafeMutableBufferPointer { inBuffer in
        output.withUnsafeMutableBufferPointer { outBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = uInt(inBuffer.count)
            stream.next_out = outBuffer.baseAddress
            stream.avail_out = uInt(outBuffer.count)
            deflate(&stream, Z_FINISH)
            return outBuffer.count - Int(stream.avail_out)
        }
    }
    return Array(output.prefix(produced))
}

/// Writes OCI image layouts and `docker save` archives for tests.
public struct TestImage {
    public var layers: [[UInt8]]
    public var config: ImageConfig.RunConfig
    public var gzip: Bool
    /// The architecture its config names (default: this machine's).
    public var architecture = ImageStore.hostArchitecture

    public init(layers: [[UInt8]], config: ImageConfig.RunConfig = .init(Cmd: ["/bin/true"]), gzip: Bool = true) {
        self.layers = layers; self.config = config; self.gzip = gzip
    }

    public struct Written {
        public var configDigest: Digest
        public var layerDigests: [Digest]
    }

    private func configJSON() throws -> [UInt8] {
        struct Config: Encodable {
            var architecture: String, os: String, config: ImageConfig.RunConfig
            var rootfs: Root
            struct Root: Encodable { var type = "layers"; var diff_ids: [String] }
        }
        let value = Config(architecture: architecture, os: "linux", config: config,
                           rootfs: .init(diff_ids: layers.map { SHA256.digest($0).description }))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]  // the same bytes, hence the same digest, every time
        return Array(try encoder.encode(value))
    }

    /// An OCI image layout directory at `path`.
    @discardableResult
    public func writeLayout(to path: String) throws -> Written {
        try makeDirectory(path + "/blobs/sha256")
        func blob(_ bytes: [UInt8]) throws -> (String, Int) {
            let digest = SHA256.digest(bytes)
            try write(bytes, to: path + "/blobs/sha256/" + digest.hex)
            return (digest.description, bytes.count)
        }
        let config = try configJSON()
        let (configDigest, configSize) = try blob(config)
        var layerEntries: [String] = []
        var layerDigests: [Digest] = []
        for layer in layers {
            let stored = gzip ? gzipped(layer) : layer
            let (digest, size) = try blob(stored)
            layerDigests.append(try Digest(parsing: digest))
            let type = gzip ? "application/vnd.oci.image.layer.v1.tar+gzip" : "application/vnd.oci.image.layer.v1.tar"
            layerEntries.append("{\"mediaType\":\"\(type)\",\"digest\":\"\(digest)\",\"size\":\(size)}")
        }
        let manifest = "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"\(configDigest)\",\"size\":\(configSize)},\"layers\":[\(layerEntries.joined(separator: ","))]}"
        let (manifestDigest, manifestSize) = try blob(Array(manifest.utf8))
        try write(Array("{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"\(manifestDigest)\",\"size\":\(manifestSize)}]}".utf8), to: path + "/index.json")
        try write(Array("{\"imageLayoutVersion\":\"1.0.0\"}".utf8), to: path + "/oci-layout")
        return Written(configDigest: try Digest(parsing: configDigest), layerDigests: layerDigests)
    }

    /// A `docker save` archive (the classic format: `<id>/layer.tar` and `<config>.json`).
    public func writeDockerSave(to path: String, tag: String = "test:latest") throws {
        var archive = TarWriter()
        let config = try configJSON()
        let configName = SHA256.digest(config).hex + ".json"
        archive.file(configName, config)
        var names: [String] = []
        for (i, layer) in layers.enumerated() {
            let name = "layer\(i)/layer.tar"
            archive.directory("layer\(i)")
            archive.file(name, layer)
            names.append(name)
        }
        let manifest = "[{\"Config\":\"\(configName)\",\"RepoTags\":[\"\(tag)\"],\"Layers\":[\(names.map { "\"\($0)\"" }.joined(separator: ","))]}]"
        archive.file("manifest.json", manifest)
        try write(archive.finished(), to: path)
    }
}

public func makeDirectory(_ path: String) throws {
    var current = ""
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, 0o755) != 0 && errno != EEXIST { throw ImageError.io(what: "mkdir \(current)", errno: errno) }
    }
}

public func write(_ bytes: [UInt8], to path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw ImageError.io(what: "open \(path)", errno: errno) }
    defer { close(fd) }
    guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
        throw ImageError.io(what: "write \(path)", errno: errno)
    }
}

/// Layers that try to write outside the root they are unpacked into, or to make a device,
/// one way each; `message` is what the rejection says.
public enum HostileLayer: String, CaseIterable, Sendable {
    case dotdot, absolutePath, absoluteSymlink, relativeSymlink, symlinkThenHardLink, hardLinkOut, charDevice, blockDevice

    public var message: String {
        switch self {
        case .dotdot: return "climbs out of the root"
        case .absolutePath: return "has an absolute path"
        case .absoluteSymlink, .relativeSymlink, .symlinkThenHardLink: return "through the symlink"
        case .hardLinkOut: return "hard link pointing outside"
        case .charDevice, .blockDevice: return "is a device node"
        }
    }

    /// The layer tar, aimed at the directory `outside` (which holds a file "secret").
    public func layer(outside: String) -> [UInt8] {
        let up = String(repeating: "../", count: 12) + String(outside.dropFirst())
        var tar = TarWriter()
        tar.file("fine", "an innocent entry first")
        switch self {
        case .dotdot: tar.file("a/" + up + "/pwned", "x")
        case .absolutePath: tar.file(outside + "/pwned", "x")
        case .absoluteSymlink:
            tar.symlink("escape", to: outside)
            tar.file("escape/pwned", "x")
        case .relativeSymlink:
            tar.symlink("escape", to: up)
            tar.file("escape/pwned", "x")
        case .symlinkThenHardLink:
            tar.symlink("escape", to: outside)
            tar.hardLink("stolen", to: "escape/secret")
        case .hardLinkOut: tar.hardLink("stolen", to: up + "/secret")
        case .charDevice: tar.device("dev/mem", major: 1, minor: 1)
        case .blockDevice: tar.device("dev/sda", block: true, major: 8, minor: 0)
        }
        return tar.finished()
    }
}
