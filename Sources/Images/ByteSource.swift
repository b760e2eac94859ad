import CZlib
import Glibc

/// A stream of bytes read in chunks: a file region, a digest tap, a gzip decoder.
public protocol ByteSource: AnyObject {
    /// Fills up to `buffer.count` bytes; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Passes over `count` bytes (a file seeks; a stream reads them).
    func skip(_ count: Int64) throws
}

extension ByteSource {
    public func skip(_ count: Int64) throws {
        var left = count
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        while left > 0 {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(Int64(buffer.count), left))]))
            guard n > 0 else { throw ImageError.invalid(what: "archive", reason: "truncated") }
            left -= Int64(n)
        }
    }

    /// Reads and discards to the end; returns the byte count.
    @discardableResult
    public func drain() throws -> Int64 {
        var total: Int64 = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate() }
        while case let n = try read(into: buffer), n > 0 { total += Int64(n) }
        return total
    }

    /// Reads everything (small files: manifests, configs).
    public func readAll(limit: Int, what: String) throws -> [UInt8] {
        var result = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { return result }
            result += chunk[0..<n]
            if result.count > limit { throw ImageError.invalid(what: what, reason: "larger than \(limit) bytes") }
        }
    }
}

/// A byte range of a file, read with pread (the file may be a member of a tar archive).
public final class FileRegion: ByteSource {
    private let fd: Int32
    private var offset: Int64
    private let end: Int64
    private let what: String

    /// Takes its own descriptor for `path`; the whole file unless a range is given.
    public init(path: String, offset: Int64 = 0, length: Int64? = nil, what: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw errno == ENOENT ? ImageError.invalid(what: what, reason: "missing (\(path))") : ImageError.io(what: "cannot open \(path)", errno: errno)
        }
        var st = stat()
        fstat(fd, &st)
        self.offset = offset
        self.end = length.map { offset + $0 } ?? Int64(st.st_size)
        self.what = what
    }

    deinit { close(fd) }

    /// Bytes left to read.
    public var length: Int64 { end - offset }

    public func skip(_ count: Int64) throws {
        guard offset + count <= end else { throw ImageError.invalid(what: what, reason: "truncated") }
        offset += count
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let wanted = Int(min(Int64(buffer.count), end - offset))
        if wanted <= 0 { return 0 }
        while true {
            let n = pread(fd, buffer.baseAddress, wanted, off_t(offset))
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ImageError.io(what: "cannot read \(what)", errno: errno) }
            guard n > 0 else { throw ImageError.invalid(what: what, reason: "truncated") }
            offset += Int64(n)
            return n
        }
    }
}

/// Passes bytes through while computing their SHA-256 and counting them.
public final class DigestingSource: ByteSource {
    private let inner: ByteSource
    private let hasher = SHA256()
    public private(set) var count: Int64 = 0

    public init(_ inner: ByteSource) { self.inner = inner }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.read(into: buffer)
        hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        count += Int64(n)
        return n
    }

    public func finish() -> Digest { hasher.finish() }
}

/// Decodes gzip (one or more members, as `pigz` may write) with zlib.
public final class GzipSource: ByteSource {
    private let inner: ByteSource
    private var stream = z_stream()
    private let input: UnsafeMutableRawBufferPointer
    private var betweenMembers = false
    private var finished = false
    private let what: String

    public init(_ inner: ByteSource, what: String) throws {
        self.inner = inner
        self.what = what
        input = .allocate(byteCount: 65536, alignment: 16)
        // 16 + MAX_WBITS: expect a gzip header and trailer.
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            input.deallocate()
            throw ImageError.invalid(what: what, reason: "cannot start the gzip decoder")
        }
        // No CRC-32 of the output: every stream decoded here is checked against its SHA-256
        // (the layer's diff ID) as it is read, so the CRC would be paid for twice.
        inflateValidate(&stream, 0)
    }

    deinit {
        inflateEnd(&stream)
        input.deallocate()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if finished || buffer.count == 0 { return 0 }
        stream.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(buffer.count)
        while stream.avail_out > 0 {
            if stream.avail_in == 0 {
                let n = try inner.read(into: input)
                if n == 0 {
                    // The end of input is fine only right after a member's trailer.
                    guard betweenMembers else { throw ImageError.invalid(what: what, reason: "gzip stream is truncated") }
                    finished = true
                    break
                }
                stream.next_in = input.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_in = uInt(n)
            }
            if betweenMembers { inflateReset(&stream); betweenMembers = false }
            let rc = inflate(&stream, Z_NO_FLUSH)
            if rc == Z_STREAM_END { betweenMembers = true; continue }
            guard rc == Z_OK || rc == Z_BUF_ERROR else {
                throw ImageError.invalid(what: what, reason: "gzip data is corrupt (zlib error \(rc))")
            }
        }
        return buffer.count - Int(stream.avail_out)
    }
}
