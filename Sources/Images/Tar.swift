/// One member of a tar archive.
public struct TarEntry: Sendable {
    public enum Kind: Sendable, Equatable {
        case file, hardLink, symlink, characterDevice, blockDevice, directory, fifo
    }

    public var path: String
    public var kind: Kind
    public var size: Int64
    public var mode: UInt32
    public var uid: Int
    public var gid: Int
    public var mtime: Int64
    /// Target of a hard link or symlink.
    public var linkName: String
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    /// Where the member's data starts in the (uncompressed) archive.
    public var dataOffset: Int64
}

/// Reads ustar, GNU (long names) and PAX (path, linkpath, size, ids, mtime) archives as a
/// stream: headers are checked against their checksum, data is read or skipped in place.
public final class TarReader {
    private let source: ByteSource
    private let what: String
    private var offset: Int64 = 0
    /// Data bytes of the current member not read yet, and the padding after them.
    private var remaining: Int64 = 0
    private var padding: Int64 = 0
    private var header = [UInt8](repeating: 0, count: 512)

    public init(_ source: ByteSource, what: String) {
        self.source = source
        self.what = what
    }

    /// The next member, after skipping what is left of the current one; nil at the end.
    public func next() throws -> TarEntry? {
        try skip(remaining + padding)
        remaining = 0; padding = 0
        var paxPath: String?, paxLink: String?, paxSize: Int64?, paxUID: Int?, paxGID: Int?, paxMtime: Int64?
        var gnuPath: String?, gnuLink: String?
        while true {
            guard try readBlock() else { return nil }
            if header.allSatisfy({ $0 == 0 }) { return nil }  // end-of-archive marker
            try verifyChecksum()
            let type = header[156]
            let extended = type == UInt8(ascii: "x") || type == UInt8(ascii: "g") || type == UInt8(ascii: "L") || type == UInt8(ascii: "K")
            var size = try number(124, 12, "size")
            if let paxSize, !extended { size = paxSize }  // a PAX size is the next real member's
            guard size >= 0 else { throw invalid("negative size") }
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"):
                let records = try readSmallData(size)
                if type == UInt8(ascii: "x") {
                    for (key, value) in try parsePAX(records) {
                        switch key {
                        case "path": paxPath = value
                        case "linkpath": paxLink = value
                        case "size":
                            guard let v = Int64(value), v >= 0 else { throw invalid("bad PAX size \"\(value)\"") }
                            paxSize = v
                        case "uid": paxUID = Int(value)
                        case "gid": paxGID = Int(value)
                        case "mtime":
                            // Seconds, maybe with a fraction; anything unrepresentable is 0.
                            let seconds = Double(value) ?? 0
                            paxMtime = seconds.isFinite && abs(seconds) < 1e15 ? Int64(seconds) : 0
                        default: break  // xattrs, atime, ...: not needed to build a root filesystem
                        }
                    }
                }
                continue
            case UInt8(ascii: "L"):
                gnuPath = cString(try readSmallData(size)[...]); continue
            case UInt8(ascii: "K"):
                gnuLink = cString(try readSmallData(size)[...]); continue
            default: break
            }
            let kind: TarEntry.Kind
            switch type {
            case 0, UInt8(ascii: "0"), UInt8(ascii: "7"): kind = .file
            case UInt8(ascii: "1"): kind = .hardLink
            case UInt8(ascii: "2"): kind = .symlink
            case UInt8(ascii: "3"): kind = .characterDevice
            case UInt8(ascii: "4"): kind = .blockDevice
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "6"): kind = .fifo
            default:
                throw ImageError.unsupported(what: "tar member type '\(Character(Unicode.Scalar(type)))' in \(what)",
                                             reason: "only files, links, directories, devices and fifos are")
            }
            var path = cString(header[0..<100])
            let isUSTAR = header[257..<262].elementsEqual("ustar".utf8)
            if isUSTAR, header[345] != 0 { path = cString(header[345..<500]) + "/" + path }
            let entry = TarEntry(
                path: paxPath ?? gnuPath ?? path, kind: kind,
                size: kind == .file ? size : 0,
                mode: UInt32(truncatingIfNeeded: try number(100, 8, "mode")),
                uid: try paxUID ?? Int(number(108, 8, "uid")), gid: try paxGID ?? Int(number(116, 8, "gid")),
                mtime: try paxMtime ?? number(136, 12, "mtime"),
                linkName: paxLink ?? gnuLink ?? cString(header[157..<257]),
                deviceMajor: isUSTAR ? UInt32(truncatingIfNeeded: try number(329, 8, "devmajor")) : 0,
                deviceMinor: isUSTAR ? UInt32(truncatingIfNeeded: try number(337, 8, "devminor")) : 0,
                dataOffset: offset)
            // Only regular files carry data; a hard link's size field is ignored like GNU tar does.
            remaining = entry.size
            padding = (512 - entry.size % 512) % 512
            return entry
        }
    }

    /// Reads the current member's data; 0 at its end.
    public func readData(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard remaining > 0 else { return 0 }
        let wanted = Int(min(Int64(buffer.count), remaining))
        let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<wanted]))
        guard n > 0 else { throw invalid("truncated inside a member") }
        remaining -= Int64(n)
        offset += Int64(n)
        return n
    }

    // MARK: Private

    private func invalid(_ reason: String) -> ImageError { .invalid(what: what, reason: reason) }

    private func readBlock() throws -> Bool {
        var filled = 0
        while filled < 512 {
            let n = try header.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
            if n == 0 {
                if filled == 0 { return false }  // archives without the end marker exist
                throw invalid("truncated header")
            }
            filled += n
        }
        offset += 512
        return true
    }

    private func skip(_ count: Int64) throws {
        guard count > 0 else { return }
        try source.skip(count)
        offset += count
    }

    private func readSmallData(_ size: Int64) throws -> [UInt8] {
        guard size <= 1 << 20 else { throw invalid("extended header larger than 1 MiB") }
        var data = [UInt8](repeating: 0, count: Int(size))
        var filled = 0
        while filled < data.count {
            let n = try data.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
            guard n > 0 else { throw invalid("truncated extended header") }
            filled += n
        }
        offset += size
        try skip((512 - size % 512) % 512)
        return data
    }

    private func verifyChecksum() throws {
        var sum = 0
        for (i, byte) in header.enumerated() { sum += (148..<156).contains(i) ? 32 : Int(byte) }
        guard try number(148, 8, "checksum") == Int64(sum) else { throw invalid("header checksum mismatch at offset \(offset - 512)") }
    }

    /// An octal field, or base-256 when the high bit of its first byte is set.
    private func number(_ start: Int, _ length: Int, _ field: String) throws -> Int64 {
        let bytes = header[start..<(start + length)]
        if bytes.first! & 0x80 != 0 {
            var value: Int64 = Int64(bytes.first! & 0x7f)
            for byte in bytes.dropFirst() {
                guard value < (Int64.max >> 8) else { throw invalid("\(field) out of range") }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        var value: Int64 = 0
        for byte in bytes {
            if byte == 0 || byte == 32 { if value > 0 { break } else { continue } }
            guard byte >= 48 && byte <= 55 else { throw invalid("bad \(field) field") }
            value = value * 8 + Int64(byte - 48)
        }
        return value
    }

    private func cString(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    /// PAX records: "LEN key=value\n".
    private func parsePAX(_ data: [UInt8]) throws -> [(String, String)] {
        var result: [(String, String)] = []
        var index = 0
        while index < data.count {
            // "LEN key=value\n": LEN counts the whole record, so it must reach past the space
            // and leave room for at least "k=\n".
            guard let space = data[index...].firstIndex(of: 32), let length = Int(String(decoding: data[index..<space], as: UTF8.self)),
                  length > space - index + 3, index + length <= data.count else { throw invalid("bad PAX record") }
            let record = data[(space + 1)..<(index + length - 1)]
            guard let eq = record.firstIndex(of: UInt8(ascii: "=")) else { throw invalid("bad PAX record") }
            result.append((String(decoding: record[..<eq], as: UTF8.self), String(decoding: record[(eq + 1)...], as: UTF8.self)))
            index += length
        }
        return result
    }
}
