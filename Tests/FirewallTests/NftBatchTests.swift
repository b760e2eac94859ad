import Glibc
import Netlink
import Primitives
import TestSupport
import Testing
@testable import Firewall

@Suite("nftables batches over a mock socket")
struct NftBatchTests {
    let mappings = [
        DNATMapping(hostIP: nil, proto: .tcp, hostPort: 8080, containerIP: IPAddress("10.0.0.2")!, containerPort: 80),
        DNATMapping(hostIP: IPAddress("127.0.0.1")!, proto: .udp, hostPort: 53, containerIP: IPAddress("10.0.0.3")!, containerPort: 5353),
    ]

    @Test("a batch is one datagram: begin, the messages, end; each message is acknowledged")
    func framing() throws {
        let socket = MockNetlinkSocket()
        let client = NftClient(socket: socket)
        var batch = NftBatch()
        PublishRuleset.add(mappings, to: &batch)
        try client.commit(batch, "publishing")
        #expect(socket.datagrams.count == 1)
        let types = socket.sent.map(\.type)
        #expect(types.first == 0x10 && types.last == 0x11)  // NFNL_MSG_BATCH_BEGIN / END
        // NFT_MSG_NEWSETELEM in the nf_tables subsystem (10 << 8 | 12), one per map touched.
        #expect(Array(types.dropFirst().dropLast()) == [0x0a0c, 0x0a0c])
        let sequences = socket.sent.map(\.sequence)
        #expect(sequences == Array(sequences[0]...(sequences[0] + 3)))
    }

    @Test("a batch that deletes anything says so (its socket's close then waits for the kernel), one that only adds does not")
    func removes() {
        var adds = NftBatch()
        PublishRuleset.add(mappings, to: &adds)
        #expect(!adds.removes)
        var removals = NftBatch()
        PublishRuleset.remove(mappings, to: &removals)
        #expect(removals.removes)
        var table = NftBatch()
        table.deleteTable("netctl")
        #expect(table.removes)
        var nothing = NftBatch()
        nothing.setElements(table: "netctl", set: "m", [], delete: true)
        #expect(!nothing.removes)
    }

    @Test("element keys and values: fields padded to 4 bytes, ports in network order")
    func elementEncoding() {
        #expect(PublishRuleset.key(mappings[0]) == [6, 0, 0, 0, 0x1f, 0x90, 0, 0])
        #expect(PublishRuleset.data(mappings[0]) == [10, 0, 0, 2, 0, 80, 0, 0])
        #expect(PublishRuleset.key(mappings[1]) == [127, 0, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0])
        #expect(NftType.concat(.ipv4, .inetProto, .inetService) == NftType(id: (7 << 12) | (12 << 6) | 13, length: 12))
    }

    @Test("a rejected batch names the operation")
    func rejected() throws {
        let socket = MockNetlinkSocket()
        socket.responder = { [MockNetlinkSocket.ack($0, error: $0.type == 0x0a0c ? EEXIST : 0)] }
        var batch = NftBatch()
        PublishRuleset.add(Array(mappings.prefix(1)), to: &batch)
        #expect(throws: NetlinkError(operation: "publishing 8080/tcp", code: EEXIST)) {
            try NftClient(socket: socket).commit(batch, "publishing 8080/tcp")
        }
    }
}
