import Foundation
import Glibc
@_spi(Fuzzing) @testable import NameService
import NetCore
import Primitives
import Testing

/// Queries as real resolvers sent them (captured on this machine from dig 9.18, glibc's
/// getaddrinfo, busybox nslookup and musl's getaddrinfo), and what the server makes of them.
@Suite("DNS messages: real resolvers' queries, answers, and malformed input")
struct DNSMessageTests {
    static func bytes(_ hex: String) -> [UInt8] {
        stride(from: 0, to: hex.count, by: 2).map { i in
            UInt8(hex[hex.index(hex.startIndex, offsetBy: i)..<hex.index(hex.startIndex, offsetBy: i + 2)], radix: 16)!
        }
    }

    /// dig +tries=1 @127.0.0.1 Web.Example. (EDNS with a cookie, AD set)
    static let digMixedCase = bytes("3b220120000100000000000103576562074578616d706c65000001000100002904d000000000000c000a00087e4e112b2ef6f9c8")
    /// dig -x 10.60.0.2
    static let digReverse = bytes("d753012000010000000000010132013002363002313007696e2d61646472046172706100000c000100002904d000000000000c000a00083e6e3ea3c7548440")
    /// glibc getaddrinfo("mysql"): A, then AAAA.
    static let glibcA = bytes("919d01000001000000000000056d7973716c0000010001")
    static let glibcAAAA = bytes("8a9901000001000000000000056d7973716c00001c0001")
    /// busybox nslookup mysql 127.0.0.1
    static let busyboxA = bytes("7aaf01000001000000000000056d7973716c0000010001")
    /// musl getaddrinfo("mysql")
    static let muslAAAA = bytes("ba7701000001000000000000056d7973716c00001c0001")

    /// Network todo (10.60.0.0/24): db at .2 with alias mysql, app at .3; network other
    /// (10.61.0.0/24): web at .2.
    static let names: CompiledNames = {
        var table = NameTable()
        table.zones["todo"] = .init(network: "todo", gateways: [IPAddress("10.60.0.1")!], subnets: [IPNetwork("10.60.0.0/24")!],
                                    names: ["db": [IPAddress("10.60.0.2")!], "mysql": [IPAddress("10.60.0.2")!],
                                            "app": [IPAddress("10.60.0.3")!, IPAddress("fd00:60::3")!]],
                                    reverse: [IPAddress("10.60.0.2")!: "db", IPAddress("10.60.0.3")!: "app"])
        table.zones["other"] = .init(network: "other", gateways: [IPAddress("10.61.0.1")!], subnets: [IPNetwork("10.61.0.0/24")!],
                                     names: ["web": [IPAddress("10.61.0.2")!]], reverse: [IPAddress("10.61.0.2")!: "web"])
        table.clients[IPAddress("10.60.0.3")!] = .init(networks: ["todo"], dnsServers: [])
        table.clients[IPAddress("10.61.0.2")!] = .init(networks: ["other"], dnsServers: [IPAddress("192.0.2.53")!])
        return CompiledNames(table)
    }()

    struct Outcome {
        var resolution: NameServer.Resolution
        var answer: [UInt8]
    }

    func resolve(_ packet: [UInt8], from client: String = "10.60.0.3", at gateway: String = "10.60.0.1", limit: Int? = nil) -> Outcome {
        let names = DNSMessageTests.names
        let nameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DNS.maxNameLength, alignment: 1)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { nameBuffer.deallocate(); out.deallocate() }
        let resolution = packet.withUnsafeBytes {
            NameServer.resolve($0, client: IPAddress(client)!, zone: names.listeners[IPAddress(gateway)!], names: names,
                               nameBuffer: nameBuffer, out: out, limit: limit)
        }
        if case .answered(let length) = resolution { return Outcome(resolution: resolution, answer: Array(out[0..<length])) }
        return Outcome(resolution: resolution, answer: [])
    }

    /// Header fields of an answer: ID, rcode, counts, flags.
    func header(_ answer: [UInt8]) -> (id: UInt16, rcode: UInt16, answers: UInt16, additionals: UInt16, flags: UInt16) {
        let word = { (i: Int) in UInt16(answer[i]) << 8 | UInt16(answer[i + 1]) }
        return (word(0), word(2) & 0xf, word(6), word(10), word(2))
    }

    @Test("each resolver's query parses: the name lower-cased, the type, EDNS when offered")
    func parsesRealQueries() throws {
        let name = UnsafeMutableRawBufferPointer.allocate(byteCount: DNS.maxNameLength, alignment: 1)
        defer { name.deallocate() }
        for (packet, expectedName, type, edns) in [(DNSMessageTests.digMixedCase, "web.example", DNS.RecordType.a, UInt16?(1232)),
                                                    (DNSMessageTests.glibcA, "mysql", DNS.RecordType.a, nil),
                                                    (DNSMessageTests.glibcAAAA, "mysql", DNS.RecordType.aaaa, nil),
                                                    (DNSMessageTests.busyboxA, "mysql", DNS.RecordType.a, nil),
                                                    (DNSMessageTests.muslAAAA, "mysql", DNS.RecordType.aaaa, nil)] {
            let query = try packet.withUnsafeBytes { try DNSQuery.parse($0, name: name).get() }
            #expect(Array(name[0..<query.nameLength]) == DNSName.wire(expectedName))
            #expect(query.type == type && query.class == DNS.Class.internet && query.ednsPayload == edns)
            #expect(query.questionEnd == 12 + DNSName.wire(expectedName)!.count + 4)
        }
    }

    @Test("a name of the client's network: its addresses, the question echoed as asked, no AAAA is NODATA")
    func localNames() throws {
        for packet in [DNSMessageTests.glibcA, DNSMessageTests.busyboxA] {
            let outcome = resolve(packet)
            let h = header(outcome.answer)
            #expect(h.id == UInt16(packet[0]) << 8 | UInt16(packet[1]) && h.rcode == 0 && h.answers == 1)
            #expect(h.flags & DNS.Flag.authoritative != 0 && h.flags & DNS.Flag.response != 0)
            #expect(Array(outcome.answer[12..<packet.count]) == Array(packet[12...]), "the question, byte for byte")
            #expect(Array(outcome.answer.suffix(4)) == [10, 60, 0, 2], "mysql is db's address")
        }
        let aaaa = resolve(DNSMessageTests.muslAAAA)
        #expect(header(aaaa.answer).rcode == 0 && header(aaaa.answer).answers == 0, "NODATA: mysql has no IPv6 address")
        // Case from the question is kept (0x20 randomisation), the lookup is not case-sensitive.
        var mixed = DNSMessageTests.glibcA
        mixed.replaceSubrange(13..<18, with: Array("MySqL".utf8))
        let upper = resolve(mixed)
        #expect(header(upper.answer).answers == 1 && Array(upper.answer[13..<18]) == Array("MySqL".utf8))
    }

    @Test("PTR of the network's addresses; NXDOMAIN for a free one; a name of another network is not answered")
    func reverseAndIsolation() throws {
        let reverse = resolve(DNSMessageTests.digReverse)
        #expect(header(reverse.answer).answers == 1 && header(reverse.answer).additionals == 1, "the PTR, and an OPT back")
        #expect(reverse.answer.contains(subsequence: [2, 0x64, 0x62, 0]), "db")
        var free = DNSMessageTests.digReverse
        free[13] = 0x39  // 9.0.60.10.in-addr.arpa
        #expect(header(resolve(free).answer).rcode == DNS.RCode.nameError.rawValue)
        // "web" is on network other: from todo's client it does not exist.
        let web = DNSMessageTests.bytes("000101000001000000000000037765620000010001")
        #expect(header(resolve(web).answer).rcode == DNS.RCode.nameError.rawValue)
        #expect(header(resolve(web, from: "10.61.0.2", at: "10.61.0.1").answer).answers == 1)
        // A stranger outside the network's subnet, asking at its address: refused.
        #expect(header(resolve(DNSMessageTests.glibcA, from: "192.0.2.7").answer).rcode == DNS.RCode.refused.rawValue)
        // One on the subnet but unknown to state: that network's names.
        #expect(header(resolve(DNSMessageTests.glibcA, from: "10.60.0.200").answer).answers == 1)
        // The search domain Podman writes is answered like the bare name.
        let searched = DNSMessageTests.bytes("00020100000100000000000005" + "6d7973716c" + "03646e7306706f646d616e" + "0000010001")
        #expect(Array(resolve(searched).answer.suffix(4)) == [10, 60, 0, 2])
    }

    @Test("other names go upstream: the host's, or the client's own servers")
    func forwarding() throws {
        #expect(resolve(DNSMessageTests.digMixedCase).resolution == .forward([]))
        let other = DNSMessageTests.bytes("00030100000100000000000007" + "6578616d706c65" + "03636f6d" + "0000010001")
        #expect(resolve(other, from: "10.61.0.2", at: "10.61.0.1").resolution == .forward([SocketAddress(IPAddress("192.0.2.53")!, 53)]))
        // A single label no network knows: NXDOMAIN here, not a trip upstream.
        let single = DNSMessageTests.bytes("00040100000100000000000006" + "6e6f73756368" + "0000010001")
        #expect(header(resolve(single).answer).rcode == DNS.RCode.nameError.rawValue)
    }

    @Test("answers larger than the client takes are truncated and say so")
    func truncation() throws {
        var table = NameTable()
        table.zones["big"] = .init(network: "big", gateways: [IPAddress("10.62.0.1")!], subnets: [IPNetwork("10.62.0.0/16")!],
                                   names: ["many": (1...60).map { IPAddress("10.62.1.\($0)")! }], reverse: [:])
        let names = CompiledNames(table)
        let query = DNSMessageTests.bytes("00050100000100000000000004" + "6d616e79" + "0000010001")
        let nameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DNS.maxNameLength, alignment: 1)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { nameBuffer.deallocate(); out.deallocate() }
        for (limit, truncated) in [(nil as Int?, true), (65535, false)] {
            let result = query.withUnsafeBytes {
                NameServer.resolve($0, client: IPAddress("10.62.0.9")!, zone: 0, names: names, nameBuffer: nameBuffer, out: out, limit: limit)
            }
            guard case .answered(let length) = result else { Issue.record("no answer"); continue }
            let answer = Array(out[0..<length])
            #expect(length <= (limit ?? 512))
            #expect((header(answer).flags & DNS.Flag.truncated != 0) == truncated)
            #expect(header(answer).answers == (truncated ? 30 : 60), "(512 - 22) / 16: \(header(answer).answers) records in \(length) bytes")
        }
    }

    @Test("malformed input: every prefix of every query, pointer loops, bad labels, responses: FORMERR or nothing, never a crash")
    func malformed() throws {
        for packet in [DNSMessageTests.digMixedCase, DNSMessageTests.digReverse, DNSMessageTests.glibcA] {
            for length in 0..<packet.count {
                let outcome = resolve(Array(packet.prefix(length)))
                if length < 12 {
                    #expect(outcome.resolution == .dropped)
                } else {
                    #expect(outcome.resolution == .answered(12) && header(outcome.answer).rcode == DNS.RCode.formatError.rawValue,
                            "prefix of \(length)")
                }
            }
        }
        let loop = DNSMessageTests.bytes("00060100000100000000000003616263c00c0001")  // abc -> itself
        #expect(header(resolve(loop).answer).rcode == DNS.RCode.formatError.rawValue)
        let forward = DNSMessageTests.bytes("000701000001000000000000c0200001000100")  // pointer ahead of itself
        #expect(header(resolve(forward).answer).rcode == DNS.RCode.formatError.rawValue)
        let badLabel = DNSMessageTests.bytes("00080100000100000000000041610000010001")  // 0x41: a reserved label type
        #expect(header(resolve(badLabel).answer).rcode == DNS.RCode.formatError.rawValue)
        let long = DNSMessageTests.bytes("0009010000010000000000" + String(repeating: "3f" + String(repeating: "61", count: 63), count: 4) + "00" + "00010001")
        #expect(header(resolve(long).answer).rcode == DNS.RCode.formatError.rawValue, "a name over 255 bytes")
        let twoQuestions = DNSMessageTests.bytes("000a01000002000000000000056d7973716c0000010001056d7973716c0000010001")
        #expect(header(resolve(twoQuestions).answer).rcode == DNS.RCode.formatError.rawValue)
        var response = DNSMessageTests.glibcA
        response[2] |= 0x80
        #expect(resolve(response).resolution == .dropped, "a response is never answered")
        let status = DNSMessageTests.bytes("000b11000001000000000000056d7973716c0000010001")  // opcode 2 (STATUS)
        #expect(header(resolve(status).answer).rcode == DNS.RCode.notImplemented.rawValue)
    }

    /// The fuzz target's seeds (Fuzz/seeds/dns.txt).
    static let seeds: [[UInt8]] = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Fuzz/seeds/dns.txt").path
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.isEmpty }.map { bytes(String($0)) }
    }()

    @Test("the fuzz target's checks hold for its seeds, every prefix of them and 20,000 seeded mutations")
    func fuzzHarness() throws {
        #expect(DNSMessageTests.seeds.count >= 10)
        var random = SplitMix(seed: 0x6e657463746c)
        for seed in DNSMessageTests.seeds {
            for length in 0...seed.count { seed.prefix(length).withUnsafeBytes { DNSFuzzing.exercise($0) } }
        }
        for _ in 0..<20_000 {
            var packet = DNSMessageTests.seeds[Int(random.next() % UInt64(DNSMessageTests.seeds.count))]
            for _ in 0...(random.next() % 4) {
                let at = Int(random.next() % UInt64(packet.count))
                switch random.next() % 3 {
                case 0: packet[at] = UInt8(truncatingIfNeeded: random.next())
                case 1: packet.insert(UInt8(truncatingIfNeeded: random.next()), at: at)
                default: packet[at] ^= 0xc0  // a label length into a pointer and back
                }
            }
            packet.withUnsafeBytes { DNSFuzzing.exercise($0) }
        }
    }

    @Test("reverse names: IPv4 and IPv6, both ways; anything else is not one")
    func reverseNames() throws {
        for text in ["10.60.0.2", "fd00:60::3", "::1"] {
            let address = IPAddress(text)!
            let wire = DNSName.reverse(address)
            #expect(wire.withUnsafeBytes { DNSName.reverseAddress($0) } == address)
        }
        for name in ["60.10.in-addr.arpa", "256.0.60.10.in-addr.arpa", "a.b.c.d.in-addr.arpa", "example.com"] {
            #expect(DNSName.wire(name)!.withUnsafeBytes { DNSName.reverseAddress($0) } == nil, "\(name)")
        }
    }
}

/// A small deterministic generator (SplitMix64), so a failure replays.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e3779b97f4a7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58476d1ce4e5b9
        z = (z ^ (z >> 27)) &* 0x94d049bb133111eb
        return z ^ (z >> 31)
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard subsequence.count <= count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<$0 + subsequence.count]) == subsequence }
    }
}
