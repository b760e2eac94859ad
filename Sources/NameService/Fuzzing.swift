import NetCore
import Primitives

/// The way in for the fuzz target (Fuzz/, run by tools/fuzz) and for the unit tests that
/// replay its corpus: one datagram through everything the server does with a query, over
/// UDP and TCP, from a client of a network, a client of two, and a stranger, checking what
/// must hold for any input. A broken rule stops the process, which is how a fuzzer notices.
@_spi(Fuzzing) public enum DNSFuzzing {
    /// Two networks, a client on both, names with several addresses of each family,
    /// reverse names, and a client with servers of its own.
    static let names: CompiledNames = {
        var table = NameTable()
        func ip(_ text: String) -> IPAddress { IPAddress(text)! }
        table.zones["a"] = .init(network: "a", gateways: [ip("10.1.0.1"), ip("fd00:1::1")],
                                 subnets: [IPNetwork("10.1.0.0/24")!, IPNetwork("fd00:1::/64")!],
                                 names: ["web": [ip("10.1.0.2"), ip("fd00:1::2")], "db": [ip("10.1.0.3")],
                                         "many": (10...80).map { ip("10.1.0.\($0)") }, "both": [ip("10.1.0.4")]],
                                 reverse: [ip("10.1.0.2"): "web", ip("fd00:1::2"): "web", ip("10.1.0.3"): "db"])
        table.zones["b"] = .init(network: "b", gateways: [ip("10.2.0.1")], subnets: [IPNetwork("10.2.0.0/24")!],
                                 names: ["both": [ip("10.2.0.4")], "other": [ip("10.2.0.5")]],
                                 reverse: [ip("10.2.0.4"): "both"])
        table.clients[ip("10.1.0.2")] = .init(networks: ["a"], dnsServers: [])
        table.clients[ip("10.1.0.4")] = .init(networks: ["a", "b"], dnsServers: [ip("192.0.2.53")])
        table.clients[ip("10.2.0.4")] = .init(networks: ["a", "b"], dnsServers: [ip("192.0.2.53")])
        return CompiledNames(table)
    }()

    /// (client, the gateway it asks)
    static let askers: [(IPAddress, IPAddress)] = [
        (IPAddress("10.1.0.2")!, IPAddress("10.1.0.1")!), (IPAddress("10.2.0.4")!, IPAddress("10.2.0.1")!),
        (IPAddress("fd00:1::2")!, IPAddress("fd00:1::1")!), (IPAddress("192.0.2.9")!, IPAddress("10.1.0.1")!),
    ]

    public static func exercise(_ packet: UnsafeRawBufferPointer) {
        let nameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DNS.maxNameLength, alignment: 1)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 65535, alignment: 1)
        defer { nameBuffer.deallocate(); out.deallocate() }
        let query = DNSQuery.parse(packet, name: nameBuffer)
        for (client, gateway) in askers {
            // UDP answers go into the server's datagram buffer; TCP's into its 64 KiB one.
            for (size, limit) in [(NameServer.bufferSize, nil as Int?), (65535, 65535)] {
                let room = UnsafeMutableRawBufferPointer(rebasing: out[0..<size])
                let result = NameServer.resolve(packet, client: client, zone: names.listeners[gateway], names: names,
                                                nameBuffer: nameBuffer, out: room, limit: limit)
                guard case .answered(let length) = result else { continue }
                check(UnsafeRawBufferPointer(rebasing: room[0..<length]), answering: packet, query: query, limit: limit)
            }
        }
    }

    /// What any answer must be: no bigger than the transport takes, the query's ID, a
    /// response, and records that walk to exactly its end.
    static func check(_ answer: UnsafeRawBufferPointer, answering packet: UnsafeRawBufferPointer,
                      query: Result<DNSQuery, DNSQuery.Failure>, limit: Int?) {
        precondition(answer.count >= DNS.headerSize, "an answer shorter than a header")
        precondition(answer.uint16(at: 0) == packet.uint16(at: 0), "an answer with another ID")
        precondition(answer.uint16(at: 2) & DNS.Flag.response != 0, "an answer that is not a response")
        guard case .success(let parsed) = query else {
            precondition(answer.count == DNS.headerSize, "FORMERR is a header alone")
            return
        }
        precondition(answer.count <= limit ?? max(512, Int(parsed.ednsPayload ?? 512)), "an answer bigger than the client takes")
        var offset = DNS.headerSize
        for _ in 0..<answer.uint16(at: 4) {
            guard let end = DNSQuery.skipName(answer, at: offset) else { preconditionFailure("the question does not parse") }
            offset = end + 4
        }
        let records = Int(answer.uint16(at: 6)) + Int(answer.uint16(at: 8)) + Int(answer.uint16(at: 10))
        for _ in 0..<records {
            guard let end = DNSQuery.skipName(answer, at: offset), end + 10 <= answer.count else { preconditionFailure("a record does not parse") }
            offset = end + 10 + Int(answer.uint16(at: end + 8))
        }
        precondition(offset == answer.count, "the records end at \(offset), the answer at \(answer.count)")
    }
}
