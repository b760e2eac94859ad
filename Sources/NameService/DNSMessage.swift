import Primitives

/// The DNS wire format (RFC 1035, EDNS0 from RFC 6891) as the name server reads queries and
/// writes answers. Parsing reads the packet in place and writes the lower-cased name into a
/// caller's buffer, and answers are written into a caller's buffer: a query costs no
/// allocation.
enum DNS {
    static let headerSize = 12
    /// The largest name in wire form (RFC 1035 2.3.4).
    static let maxNameLength = 255
    /// The UDP payload netctl offers with EDNS (what DNS flag day 2020 recommends).
    static let ednsPayload: UInt16 = 1232

    enum RecordType {
        static let a: UInt16 = 1, ptr: UInt16 = 12, aaaa: UInt16 = 28, opt: UInt16 = 41, any: UInt16 = 255
    }

    enum Class {
        static let internet: UInt16 = 1, any: UInt16 = 255
    }

    enum RCode: UInt16 {
        case noError = 0, formatError = 1, serverFailure = 2, nameError = 3, notImplemented = 4, refused = 5
    }

    enum Flag {
        static let response: UInt16 = 0x8000, authoritative: UInt16 = 0x0400, truncated: UInt16 = 0x0200
        static let recursionDesired: UInt16 = 0x0100, recursionAvailable: UInt16 = 0x0080
        static let opcodeMask: UInt16 = 0x7800
    }
}

/// A query's parts the server needs. The question itself stays in the packet
/// (`questionEnd` marks its end), so an answer repeats it byte for byte, case included
/// (resolvers that randomise case check it).
struct DNSQuery: Equatable {
    var id: UInt16
    var flags: UInt16
    /// Length of the lower-cased name, in wire form, in the caller's name buffer.
    var nameLength: Int
    var type: UInt16
    var `class`: UInt16
    /// Offset just past the question.
    var questionEnd: Int
    /// The payload size the client offers with EDNS, or nil without an OPT record.
    var ednsPayload: UInt16?

    var opcode: UInt16 { (flags & DNS.Flag.opcodeMask) >> 11 }
    var isResponse: Bool { flags & DNS.Flag.response != 0 }

    enum Failure: Error, Equatable {
        /// Too short for a header, or a response: not worth an answer.
        case ignore
        /// A header was there: answer FORMERR with this ID.
        case malformed(id: UInt16, flags: UInt16)
    }

    /// Parses `packet[0..<length]`, writing the question's name, lower-cased and in wire
    /// form without compression, into `name` (at least `DNS.maxNameLength` bytes).
    static func parse(_ packet: UnsafeRawBufferPointer, name: UnsafeMutableRawBufferPointer) -> Result<DNSQuery, Failure> {
        guard packet.count >= DNS.headerSize else { return .failure(.ignore) }
        let id = packet.uint16(at: 0), flags = packet.uint16(at: 2)
        guard flags & DNS.Flag.response == 0 else { return .failure(.ignore) }
        let questions = packet.uint16(at: 4), answers = packet.uint16(at: 6)
        let authorities = packet.uint16(at: 8), additionals = packet.uint16(at: 10)
        let malformed = Result<DNSQuery, Failure>.failure(.malformed(id: id, flags: flags))
        guard questions == 1 else { return malformed }
        guard let (nameLength, afterName) = readName(packet, at: DNS.headerSize, into: name),
              afterName + 4 <= packet.count else { return malformed }
        var query = DNSQuery(id: id, flags: flags, nameLength: nameLength, type: packet.uint16(at: afterName),
                             class: packet.uint16(at: afterName + 2), questionEnd: afterName + 4, ednsPayload: nil)
        // Records after the question (a query has none but its OPT): skipped, the OPT read.
        var offset = query.questionEnd
        for index in 0..<(Int(answers) + Int(authorities) + Int(additionals)) {
            guard let end = skipName(packet, at: offset), end + 10 <= packet.count else { return malformed }
            let type = packet.uint16(at: end), dataLength = Int(packet.uint16(at: end + 8))
            guard end + 10 + dataLength <= packet.count else { return malformed }
            if type == DNS.RecordType.opt {
                // One OPT, in the additional section, with the root as its name.
                guard index >= Int(answers) + Int(authorities), end == offset + 1, query.ednsPayload == nil else { return malformed }
                query.ednsPayload = max(512, packet.uint16(at: end + 2))
            }
            offset = end + 10 + dataLength
        }
        return .success(query)
    }

    /// Reads a name at `start` (following compression pointers, at most as many as could fit
    /// in a packet, never forward past its end), lower-cased into `into`; its wire length and
    /// the offset just past it where it began.
    static func readName(_ packet: UnsafeRawBufferPointer, at start: Int, into out: UnsafeMutableRawBufferPointer) -> (Int, Int)? {
        var offset = start, written = 0, end: Int? = nil, jumps = 0
        while true {
            guard offset < packet.count else { return nil }
            let length = Int(packet[offset])
            switch length & 0xc0 {
            case 0x00:
                if length == 0 {
                    guard written + 1 <= DNS.maxNameLength else { return nil }
                    out[written] = 0
                    return (written + 1, end ?? offset + 1)
                }
                guard offset + 1 + length <= packet.count, written + 1 + length + 1 <= DNS.maxNameLength else { return nil }
                out[written] = UInt8(length)
                for i in 0..<length {
                    let byte = packet[offset + 1 + i]
                    out[written + 1 + i] = byte >= 0x41 && byte <= 0x5a ? byte | 0x20 : byte
                }
                written += 1 + length
                offset += 1 + length
            case 0xc0:
                guard offset + 1 < packet.count else { return nil }
                let target = (length & 0x3f) << 8 | Int(packet[offset + 1])
                jumps += 1
                // A pointer goes back to an earlier name; loops are cut by the count.
                guard target < offset, jumps <= 64 else { return nil }
                if end == nil { end = offset + 2 }
                offset = target
            default:
                return nil  // 0x40 and 0x80 label types are obsolete or unassigned
            }
        }
    }

    /// The offset just past a name (compressed or not) at `start`.
    static func skipName(_ packet: UnsafeRawBufferPointer, at start: Int) -> Int? {
        var offset = start
        while offset < packet.count {
            let length = Int(packet[offset])
            switch length & 0xc0 {
            case 0x00:
                if length == 0 { return offset + 1 }
                offset += 1 + length
            case 0xc0:
                return offset + 2 <= packet.count ? offset + 2 : nil
            default:
                return nil
            }
        }
        return nil
    }
}

/// Writes an answer to a query into a buffer: the header, the question copied from the
/// query, then answer records pointing at it (0xc00c), then an OPT record if the query had
/// one. Records that do not fit the client's size are left out and the answer marked
/// truncated.
struct DNSAnswerWriter {
    let out: UnsafeMutableRawBufferPointer
    private(set) var length = 0
    private var answers: UInt16 = 0
    private let limit: Int
    private var truncated = false
    private let edns: Bool

    /// `limit`: what the client takes (512 over UDP without EDNS, its offer with it).
    init(into out: UnsafeMutableRawBufferPointer, query: DNSQuery, packet: UnsafeRawBufferPointer, rcode: DNS.RCode,
         authoritative: Bool, limit: Int) {
        self.out = out
        self.edns = query.ednsPayload != nil
        self.limit = min(limit, out.count)
        var flags = DNS.Flag.response | (query.flags & (DNS.Flag.opcodeMask | DNS.Flag.recursionDesired)) | DNS.Flag.recursionAvailable
        if authoritative { flags |= DNS.Flag.authoritative }
        flags |= rcode.rawValue
        out.storeUInt16(query.id, at: 0)
        out.storeUInt16(flags, at: 2)
        out.storeUInt16(1, at: 4)
        out.storeUInt16(0, at: 6); out.storeUInt16(0, at: 8); out.storeUInt16(0, at: 10)
        let question = query.questionEnd - DNS.headerSize
        // The question as it came, if it fits at all (a name has at most 255 bytes).
        if DNS.headerSize + question <= out.count {
            out.baseAddress!.advanced(by: DNS.headerSize)
                .copyMemory(from: packet.baseAddress!.advanced(by: DNS.headerSize), byteCount: question)
            length = DNS.headerSize + question
        } else {
            out.storeUInt16(0, at: 4)
            length = DNS.headerSize
        }
    }

    /// Room kept for the OPT record at the end.
    private var reserve: Int { edns ? 11 : 0 }

    /// Adds one answer record for the question's name.
    mutating func add(type: UInt16, ttl: UInt32, data: UnsafeRawBufferPointer) {
        guard !truncated else { return }
        let size = 2 + 2 + 2 + 4 + 2 + data.count
        guard length + size + reserve <= limit else {
            truncated = true
            return
        }
        out.storeUInt16(0xc00c, at: length)
        out.storeUInt16(type, at: length + 2)
        out.storeUInt16(DNS.Class.internet, at: length + 4)
        out.storeUInt16(UInt16(ttl >> 16), at: length + 6)
        out.storeUInt16(UInt16(ttl & 0xffff), at: length + 8)
        out.storeUInt16(UInt16(data.count), at: length + 10)
        if data.count > 0 {
            out.baseAddress!.advanced(by: length + 12).copyMemory(from: data.baseAddress!, byteCount: data.count)
        }
        length += size
        answers += 1
    }

    /// Ends the answer; its length.
    mutating func finish() -> Int {
        out.storeUInt16(answers, at: 6)
        if truncated {
            out.storeUInt16(out.uint16(at: 2) | DNS.Flag.truncated, at: 2)
        }
        if edns && length + 11 <= out.count {
            out[length] = 0  // root name
            out.storeUInt16(DNS.RecordType.opt, at: length + 1)
            out.storeUInt16(DNS.ednsPayload, at: length + 3)
            out.storeUInt16(0, at: length + 5); out.storeUInt16(0, at: length + 7)  // extended rcode, version, flags
            out.storeUInt16(0, at: length + 9)
            length += 11
            out.storeUInt16(1, at: 10)
        }
        return length
    }
}

/// Names in wire form: building them, and reading the address a reverse name stands for.
enum DNSName {
    /// "web.b" -> [3]web[1]b[0], lower-cased; nil if it cannot be a name.
    static func wire(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        let trimmed = text.hasSuffix(".") ? String(text.dropLast()) : text
        guard !trimmed.isEmpty else { return [0] }
        for label in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.lowercased().utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else { return nil }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        return out.count <= DNS.maxNameLength ? out : nil
    }

    /// The number of labels of a wire name.
    static func labelCount(_ name: UnsafeRawBufferPointer) -> Int {
        var offset = 0, count = 0
        while offset < name.count, name[offset] != 0 {
            count += 1
            offset += 1 + Int(name[offset])
        }
        return count
    }

    /// The address a reverse name (4.3.2.1.in-addr.arpa, or 32 nibbles .ip6.arpa) stands for;
    /// nil for any other name, partial ones included.
    static func reverseAddress(_ name: UnsafeRawBufferPointer) -> IPAddress? {
        var labels: [(Int, Int)] = []  // (offset, length); at most 34 kept
        var offset = 0
        while offset < name.count, name[offset] != 0 {
            let length = Int(name[offset])
            guard labels.count < 34 else { return nil }
            labels.append((offset + 1, length))
            offset += 1 + length
        }
        func label(_ i: Int) -> UnsafeRawBufferPointer.SubSequence { name[labels[i].0..<(labels[i].0 + labels[i].1)] }
        func equals(_ i: Int, _ text: String) -> Bool { label(i).elementsEqual(text.utf8) }
        if labels.count == 6, equals(4, "in-addr"), equals(5, "arpa") {
            var value: UInt32 = 0
            for i in (0..<4).reversed() {
                guard labels[i].1 >= 1, labels[i].1 <= 3, let byte = UInt8(String(decoding: label(i), as: UTF8.self)) else { return nil }
                value = value << 8 | UInt32(byte)
            }
            return .v4(value)
        }
        if labels.count == 34, equals(32, "ip6"), equals(33, "arpa") {
            var value: UInt128 = 0
            for i in (0..<32).reversed() {
                guard labels[i].1 == 1, let nibble = UInt8(String(decoding: label(i), as: UTF8.self), radix: 16) else { return nil }
                value = value << 4 | UInt128(nibble)
            }
            return .v6(value)
        }
        return nil
    }

    /// The reverse name of an address, in wire form.
    static func reverse(_ address: IPAddress) -> [UInt8] {
        let text: String
        switch address {
        case .v4:
            text = address.bytes.reversed().map(String.init).joined(separator: ".") + ".in-addr.arpa"
        case .v6:
            text = address.bytes.reversed().flatMap { [String($0 & 0xf, radix: 16), String($0 >> 4, radix: 16)] }
                .joined(separator: ".") + ".ip6.arpa"
        }
        return wire(text)!
    }
}

extension UnsafeRawBufferPointer {
    func uint16(at offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }
}

extension UnsafeMutableRawBufferPointer {
    func uint16(at offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }

    func storeUInt16(_ value: UInt16, at offset: Int) {
        self[offset] = UInt8(value >> 8)
        self[offset + 1] = UInt8(value & 0xff)
    }
}
