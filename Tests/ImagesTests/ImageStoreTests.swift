import FoundationEssentials
import Glibc
@testable import Images
import Primitives
import Testing
import TestSupport

/// A scratch directory per test, removed afterwards.
final class Scratch {
    let path: String
    init() {
        path = try! makeTemporaryDirectory("/tmp/netctl-images-")
    }
    deinit {
        try? removeTree(path)
    }
    func exists(_ relative: String) -> Bool { var st = stat(); return lstat(path + "/" + relative, &st) == 0 }
    func read(_ relative: String) -> String? {
        guard let file = fopen(path + "/" + relative, "r") else { return nil }
        defer { fclose(file) }
        var bytes = [UInt8](repeating: 0, count: 65536)
        let n = fread(&bytes, 1, bytes.count, file)
        return String(decoding: bytes[0..<n], as: UTF8.self)
    }
    func list(_ relative: String) -> [String] {
        listDirectory(path + "/" + relative)
    }
}

let isRoot = geteuid() == 0

func baseLayer() -> [UInt8] {
    var tar = TarWriter()
    tar.directory("bin")
    tar.file("bin/tool", "#!/bin/sh\necho tool\n", mode: 0o755)
    tar.symlink("bin/sh", to: "/bin/tool")
    tar.hardLink("bin/tool2", to: "bin/tool")
    tar.directory("etc")
    tar.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
    tar.file("etc/gone", "removed by the next layer")
    tar.directory("data")
    tar.file("data/old", "hidden by an opaque directory above")
    tar.file("owned", "by 33", mode: 0o4750, uid: 33, gid: 33)
    tar.file(String(repeating: "long/", count: 30) + "name", "a path over 100 bytes")
    return tar.finished()
}

func upperLayer() -> [UInt8] {
    var tar = TarWriter()
    tar.file("etc/.wh.gone", "")
    tar.directory("data")
    tar.file("data/.wh..wh..opq", "")
    tar.file("data/new", "only this is visible")
    tar.file("etc/motd", "hello")
    return tar.finished()
}

@Suite struct ImageStoreTests {
    @Test(.enabled(if: isRoot, "unpacking sets owners and makes whiteout devices")) func ociLayoutLoadsVerifiesAndStacks() throws {
        let scratch = Scratch()
        let config = ImageConfig.RunConfig(User: "web", Env: ["PATH=/bin", "A=1"], Entrypoint: ["/bin/tool"], Cmd: ["x"],
                                           WorkingDir: "/data", ExposedPorts: ["80/tcp": .init(), "53/udp": .init()])
        let written = try TestImage(layers: [baseLayer(), upperLayer()], config: config).writeLayout(to: scratch.path + "/image")
        let store = try ImageStore(directory: scratch.path + "/store")
        let image = try store.load(scratch.path + "/image")
        #expect(image.id == written.configDigest)
        #expect(image.config.config == config)
        #expect(image.layerDirectories.count == 2)

        let base = String(image.layerDirectories[0].dropFirst(scratch.path.count + 1))
        #expect(scratch.read(base + "/bin/tool") == "#!/bin/sh\necho tool\n")
        #expect(scratch.read(base + "/" + String(repeating: "long/", count: 30) + "name") == "a path over 100 bytes")
        var st = stat(), st2 = stat()
        #expect(lstat(scratch.path + "/" + base + "/owned", &st) == 0)
        #expect(st.st_uid == 33 && st.st_mode & 0o7777 == 0o4750)
        #expect(lstat(scratch.path + "/" + base + "/bin/tool", &st) == 0 && lstat(scratch.path + "/" + base + "/bin/tool2", &st2) == 0)
        #expect(st.st_ino == st2.st_ino, "a hard link stays a hard link")
        var link = [CChar](repeating: 0, count: 256)
        #expect(readlink(scratch.path + "/" + base + "/bin/sh", &link, 255) > 0 && String(cBuffer: link) == "/bin/tool")

        // Both ways of stacking give the same view: whiteouts delete, opaque directories hide.
        for mode in [RootFilesystem.Mode.overlay, .copy] {
            let container = scratch.path + "/c-\(mode.rawValue)"
            try TestSupport.makeDirectory(container)
            #expect(try RootFilesystem.create(layers: image.layerDirectories, in: container, mode: mode) == mode)
            let root = "c-\(mode.rawValue)/rootfs"
            #expect(scratch.list(root + "/etc") == ["motd", "passwd"], "\(mode)")
            #expect(scratch.list(root + "/data") == ["new"], "\(mode)")
            #expect(scratch.read(root + "/bin/tool") == "#!/bin/sh\necho tool\n", "\(mode)")
            // A container's writes stay its own.
            try TestSupport.write(Array("mine".utf8), to: scratch.path + "/" + root + "/etc/passwd")
            #expect(scratch.read(base + "/etc/passwd")!.hasPrefix("root:"), "\(mode): the shared layer is untouched")
            try RootFilesystem.remove(in: container)
            #expect(!RootFilesystem.isMounted(scratch.path + "/" + root) && !scratch.exists(root))
        }

        // A second load reuses the unpacked layers.
        #expect(lstat(image.layerDirectories[0], &st) == 0)
        let again = try store.load(scratch.path + "/image")
        #expect(again.layerDirectories == image.layerDirectories)
        #expect(lstat(again.layerDirectories[0], &st2) == 0 && st.st_ino == st2.st_ino && st.st_mtim.tv_nsec == st2.st_mtim.tv_nsec)
    }

    @Test(.enabled(if: isRoot)) func dockerSaveArchivesAndLayoutTarsLoad() throws {
        let scratch = Scratch()
        var tar = TarWriter()
        tar.file("hello", "from docker save")
        let image = TestImage(layers: [tar.finished()], config: .init(Cmd: ["/hello"]), gzip: false)
        try image.writeDockerSave(to: scratch.path + "/saved.tar")
        let store = try ImageStore(directory: scratch.path + "/store")
        let loaded = try store.load(scratch.path + "/saved.tar")
        #expect(loaded.tags == ["test:latest"])
        #expect(loaded.config.config?.Cmd == ["/hello"])
        #expect(scratch.read(String(loaded.layerDirectories[0].dropFirst(scratch.path.count + 1)) + "/hello") == "from docker save")

        // An OCI layout packed in a tar, as `skopeo copy ... oci-archive:` writes it.
        try image.writeLayout(to: scratch.path + "/layout")
        var archive = TarWriter()
        for name in ["oci-layout", "index.json"] { archive.file(name, Array(scratch.read("layout/" + name)!.utf8)) }
        for blob in scratch.list("layout/blobs/sha256") {
            let bytes = try FileRegion(path: scratch.path + "/layout/blobs/sha256/" + blob, what: blob).readAll(limit: 1 << 20, what: blob)
            archive.file("blobs/sha256/" + blob, bytes)
        }
        try TestSupport.write(archive.finished(), to: scratch.path + "/layout.tar")
        let fromTar = try store.load(scratch.path + "/layout.tar")
        #expect(fromTar.id == loaded.id, "\(fromTar.config) \(loaded.config)")
    }

    @Test("a killed unpack's scratch directory is swept; a live unpack's and a new one are kept")
    func scratchOfKilledUnpacksIsSwept() throws {
        let scratch = Scratch()
        let tmp = scratch.path + "/store/tmp/"
        _ = try ImageStore(directory: scratch.path + "/store")
        for name in ["layer-dead", "layer-live", "layer-new"] {
            #expect(mkdir(tmp + name, 0o700) == 0 && mkdir(tmp + name + "/usr", 0o755) == 0)
        }
        var hourAgo = [timespec(tv_sec: time(nil) - 3600, tv_nsec: 0), timespec(tv_sec: time(nil) - 3600, tv_nsec: 0)]
        for name in ["layer-dead", "layer-live"] { #expect(utimensat(AT_FDCWD, tmp + name, &hourAgo, 0) == 0) }
        let live = open(tmp + "layer-live", O_DIRECTORY | O_RDONLY)  // as an unpack in progress holds it
        defer { close(live) }
        #expect(flock(live, LOCK_EX) == 0)
        _ = try ImageStore(directory: scratch.path + "/store")
        #expect(scratch.list("store/tmp") == ["layer-live", "layer-new"])
    }

    @Test func missingAndUnrecognisedImages() throws {
        let scratch = Scratch()
        let store = try ImageStore(directory: scratch.path + "/store")
        #expect(throws: ImageError.notFound(scratch.path + "/nope")) { try store.load(scratch.path + "/nope") }
        try TestSupport.makeDirectory(scratch.path + "/empty")
        #expect { try store.load(scratch.path + "/empty") } throws: { error in
            "\(error)".contains("neither index.json (OCI layout) nor manifest.json")
        }
        try TestSupport.write(gzipped([1, 2, 3]), to: scratch.path + "/image.tar.gz")
        #expect { try store.load(scratch.path + "/image.tar.gz") } throws: { "\($0)".contains("gunzip") }
    }

    @Test func corruptedBlobsAreRefusedAndLeaveNothing() throws {
        let scratch = Scratch()
        let written = try TestImage(layers: [baseLayer()]).writeLayout(to: scratch.path + "/image")
        // Flip one byte of the layer blob.
        let blob = scratch.path + "/image/blobs/sha256/" + written.layerDigests[0].hex
        let fd = open(blob, O_RDWR)
        var byte: UInt8 = 0
        pread(fd, &byte, 1, 100); byte ^= 0xff; pwrite(fd, &byte, 1, 100)
        close(fd)
        let store = try ImageStore(directory: scratch.path + "/store")
        #expect { try store.load(scratch.path + "/image") } throws: { error in
            guard case ImageError.digestMismatch(let what, let expected, _) = error else { return false }
            return what.contains(written.layerDigests[0].short) && expected == written.layerDigests[0].description
        }
        #expect(scratch.list("store/layers").isEmpty && scratch.list("store/tmp").isEmpty)

        // A config edited after the fact no longer matches its digest either.
        let other = try TestImage(layers: [baseLayer()], config: .init(Cmd: ["/a"])).writeLayout(to: scratch.path + "/image2")
        try TestSupport.write(Array("{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}".utf8),
                              to: scratch.path + "/image2/blobs/sha256/" + other.configDigest.hex)
        #expect { try store.load(scratch.path + "/image2") } throws: { "\($0)".contains("image config is corrupt") }
    }

    /// Each way a layer could write outside its root, or make a device: rejected whole.
    @Test(.enabled(if: isRoot), arguments: HostileLayer.allCases)
    func hostileLayersAreRejected(_ kind: HostileLayer) throws {
        let scratch = Scratch()
        let outside = scratch.path + "/outside"
        try TestSupport.makeDirectory(outside)
        try TestSupport.write(Array("secret".utf8), to: outside + "/secret")
        try TestImage(layers: [kind.layer(outside: outside)]).writeLayout(to: scratch.path + "/image")
        let store = try ImageStore(directory: scratch.path + "/store")
        #expect { try store.load(scratch.path + "/image") } throws: { error in
            guard case ImageError.hostileLayer = error else { return false }
            return "\(error)".contains(kind.message) && "\(error)".contains("rejected")
        }
        #expect(scratch.list("outside") == ["secret"], "nothing written outside")
        #expect(scratch.list("store/layers").isEmpty && scratch.list("store/tmp").isEmpty, "nothing half-unpacked is kept")
    }

    /// Malformed or extreme values in a layer are errors, never a crash, and leave nothing.
    @Test(.enabled(if: isRoot), arguments: [
        ("2 a=b\n", "bad PAX record"),                 // a length shorter than its own record
        ("11 size=-5\n", "bad PAX size"),
        ("10 uid=-1\n", "out of range"),
        ("22 uid=99999999999999\n", "out of range"),
        ("15 mtime=1e300\n", ""),                      // accepted, as time 0
        ("13 mtime=nan\n", ""),
    ])
    func malformedValuesAreErrors(_ pax: String, _ message: String) throws {
        let scratch = Scratch()
        var tar = TarWriter()
        tar.paxHeader(pax)
        tar.file("f", "x")
        try TestImage(layers: [tar.finished()]).writeLayout(to: scratch.path + "/image")
        let store = try ImageStore(directory: scratch.path + "/store")
        if message.isEmpty {
            _ = try store.load(scratch.path + "/image")
        } else {
            #expect { try store.load(scratch.path + "/image") } throws: { "\($0)".contains(message) }
            #expect(scratch.list("store/layers").isEmpty && scratch.list("store/tmp").isEmpty)
        }
    }

    @Test(.enabled(if: isRoot)) func deepNestingIsRefused() throws {
        let scratch = Scratch()
        var tar = TarWriter()
        tar.file(String(repeating: "d/", count: 200) + "f", "x")
        try TestImage(layers: [tar.finished()]).writeLayout(to: scratch.path + "/image")
        let store = try ImageStore(directory: scratch.path + "/store")
        #expect { try store.load(scratch.path + "/image") } throws: { "\($0)".contains("nested too deep") }
        #expect(scratch.list("store/layers").isEmpty && scratch.list("store/tmp").isEmpty)
    }

    @Test func tarReaderChecksHeaders() throws {
        var tar = TarWriter()
        tar.file("a", "1")
        var bytes = tar.finished()
        bytes[0] = UInt8(ascii: "b")  // the checksum no longer matches
        try withTemporaryFile(bytes) { path in
            let reader = TarReader(try FileRegion(path: path, what: "t"), what: "t")
            #expect { try reader.next() } throws: { "\($0)".contains("checksum") }
        }
    }

    @Test func gzipRoundTripsAcrossMembers() throws {
        let first = Array(repeating: UInt8(7), count: 200_000), second = Array("tail".utf8)
        try withTemporaryFile(gzipped(first) + gzipped(second)) { path in
            let source = try GzipSource(try FileRegion(path: path, what: "g"), what: "g")
            #expect(try source.readAll(limit: 1 << 20, what: "g") == first + second)
        }
        try withTemporaryFile(Array(gzipped(first).dropLast(10))) { path in
            let source = try GzipSource(try FileRegion(path: path, what: "g"), what: "g")
            #expect { try source.drain() } throws: { "\($0)".contains("truncated") }
        }
    }
}

func withTemporaryFile(_ bytes: [UInt8], _ body: (String) throws -> Void) throws {
    let scratch = Scratch()
    try TestSupport.write(bytes, to: scratch.path + "/file")
    try body(scratch.path + "/file")
}
