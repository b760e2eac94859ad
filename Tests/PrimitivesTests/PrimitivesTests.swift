import Glibc
import Primitives
import Testing

@Suite("Shared value types and OS helpers")
struct PrimitivesTests {
    @Test("a process identity tells a process from a later one with its PID")
    func processIdentity() throws {
        let own = ProcessIdentity.current()
        #expect(own.pid == getpid() && own.startTime > 0 && own.isAlive)
        #expect(!ProcessIdentity(pid: own.pid, startTime: own.startTime + 1).isAlive, "same PID, another start: another process")
        #expect(!ProcessIdentity(pid: 0, startTime: 0).isAlive)
        #expect(ProcessIdentity(encoded: own.encoded) == own)
        #expect(ProcessIdentity(encoded: "12") == nil && ProcessIdentity(encoded: "x:1") == nil)
    }

    @Test("timestamps read and write ISO 8601 in UTC, as state and records hold them")
    func timestamps() throws {
        let t = try #require(Timestamp(iso8601: "2026-12-03T08:15:53Z"))
        #expect(t.secondsSinceEpoch == 1_796_285_753)
        #expect(t.description == "2026-12-03T08:15:53Z")
        #expect(Timestamp(iso8601: "1970-01-01T00:00:00Z")?.secondsSinceEpoch == 0)
        #expect(Timestamp(iso8601: "2024-02-29T23:59:59.123Z")?.description == "2024-02-29T23:59:59Z")
        for bad in ["", "2026-12-03", "2026-12-03T08:15:53", "2026-13-03T08:15:53Z", "2026-12-03T08:15:5xZ"] {
            #expect(Timestamp(iso8601: bad) == nil, "\(bad)")
        }
        let now = Timestamp.now()
        #expect(Timestamp(iso8601: now.description) == now)
        #expect(t.seconds(until: Timestamp(secondsSinceEpoch: t.secondsSinceEpoch + 90)) == 90)
    }

    @Test("MAC addresses parse six hex octets and print them in lower case")
    func macAddresses() throws {
        let mac = try #require(MACAddress("02:42:AC:11:00:02"))
        #expect(mac.bytes == [2, 0x42, 0xac, 0x11, 0, 2] && mac.description == "02:42:ac:11:00:02" && mac.isAssignable)
        for bad in ["", "02:42:ac:11:00", "02:42:ac:11:00:02:03", "0g:42:ac:11:00:02", "2:42:ac:11:00:02"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        #expect(MACAddress("01:00:5e:00:00:01")?.isAssignable == false, "multicast")
        #expect(MACAddress("00:00:00:00:00:00")?.isAssignable == false)
        let random = MACAddress.random()
        #expect(random.isAssignable && random.bytes[0] & 2 == 2, "locally administered unicast")
    }

    @Test("files: atomic writes, sorted listings, and a tree removal that never follows a symlink")
    func files() throws {
        let directory = try makeTemporaryDirectory("/tmp/netctl-primitives-")
        defer { try? removeTree(directory) }
        try writeFile(directory + "/a", "one", atomically: true)
        try writeFile(directory + "/a", "two", atomically: true)
        #expect(readFile(directory + "/a") == "two" && !fileExists(directory + "/a.tmp"))
        try makeDirectories(directory + "/d/e/f")
        try writeFile(directory + "/d/e/f/g", [1, 2, 3])
        #expect(readBytes(directory + "/d/e/f/g") == [1, 2, 3])
        #expect(listDirectory(directory) == ["a", "d"])
        // A symlink inside the tree to a directory outside it: the link goes, the target stays.
        let outside = try makeTemporaryDirectory("/tmp/netctl-primitives-outside-")
        defer { try? removeTree(outside) }
        try writeFile(outside + "/keep", "x")
        symlink(outside, directory + "/d/link")
        try removeTree(directory + "/d")
        #expect(!fileExists(directory + "/d") && readFile(outside + "/keep") == "x")
        try removeTree(directory + "/missing")  // nothing to do is no error
    }

    @Test("socket addresses round-trip through sockaddr_storage")
    func socketAddresses() throws {
        for text in ["10.1.2.3", "fd00::5", "::ffff:10.0.0.1"] {
            let address = SocketAddress(try #require(IPAddress(text)), 8080)
            #expect(SocketAddress(address.storage) == address)
        }
        #expect(SocketAddress(IPAddress("::1")!, 80).description == "[::1]:80")
        #expect(SocketAddress(IPAddress("0.0.0.0")!, 1).isWildcard)
    }
}
