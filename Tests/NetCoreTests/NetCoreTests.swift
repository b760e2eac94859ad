import Glibc
import Netlink
import Primitives
import Testing
@testable import NetCore
import TestSupport

@Suite("IPAM")
struct IPAMTests {
    let subnet = IPNetwork("10.0.0.0/29")!  // hosts .1 to .6

    @Test("skips the network, broadcast and taken addresses")
    func skipsReserved() {
        let taken: Set<IPAddress> = [IPAddress("10.0.0.1")!, IPAddress("10.0.0.2")!]
        #expect(IPAM.allocate(in: subnet, taken: taken, after: nil) == IPAddress("10.0.0.3"))
    }

    @Test("continues after the last allocation and wraps round")
    func roundRobin() {
        #expect(IPAM.allocate(in: subnet, taken: [], after: IPAddress("10.0.0.4")) == IPAddress("10.0.0.5"))
        #expect(IPAM.allocate(in: subnet, taken: [], after: IPAddress("10.0.0.6")) == IPAddress("10.0.0.1"))
        #expect(IPAM.allocate(in: subnet, taken: [IPAddress("10.0.0.1")!], after: IPAddress("10.0.0.6")) == IPAddress("10.0.0.2"))
    }

    @Test("a full subnet yields nothing")
    func exhausted() {
        let all = Set((1...6).map { IPAddress("10.0.0.\($0)")! })
        #expect(IPAM.allocate(in: subnet, taken: all, after: nil) == nil)
    }

    @Test("IPv6 has no broadcast address to skip")
    func ipv6() {
        let v6 = IPNetwork("fd00::/126")!
        #expect(IPAM.allocate(in: v6, taken: [IPAddress("fd00::1")!, IPAddress("fd00::2")!], after: nil) == IPAddress("fd00::3"))
    }
}

@Suite("Input validation")
struct ValidationTests {
    @Test(arguments: ["", "abcdefghijklmnop", "br/0", "br 0", "a:b", ".", ".."])
    func badInterfaceNames(_ name: String) {
        #expect(throws: NetctlError.self) { try Validate.interfaceName(name) }
    }

    @Test(arguments: ["eth0", "abcdefghijklmno", "nc-web", "veth.1@x"])
    func goodInterfaceNames(_ name: String) throws {
        try Validate.interfaceName(name)
    }

    @Test func macs() throws {
        #expect(try Validate.mac("02:42:ac:11:00:02").bytes == [2, 0x42, 0xac, 0x11, 0, 2])
        for bad in ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:42:ac:11:00", "zz:42:ac:11:00:02", "2:42:ac:11:00:02"] {
            #expect(throws: NetctlError.invalidMAC(bad)) { try Validate.mac(bad) }
        }
    }

    @Test func subnets() throws {
        #expect(try Validate.subnet("10.1.0.0/16", ipv6: false) == IPNetwork("10.1.0.0/16"))
        let cases: [(String, Bool, SubnetProblem)] = [
            ("10.1.0.5/16", false, .hostBitsSet(masked: "10.1.0.0/16")), ("10.0.0.0/33", false, .notCIDR),
            ("banana", false, .notCIDR), ("10.0.0.0", false, .notCIDR), ("10.0.0.0/31", false, .tooSmall(prefix: 31, maxPrefix: 30)),
            ("10.0.0.0/7", false, .tooLarge(prefix: 7, minPrefix: 8)), ("fd00::/64", false, .wrongFamily),
            ("10.0.0.0/24", true, .wrongFamily), ("fd00::/127", true, .tooSmall(prefix: 127, maxPrefix: 126)),
        ]
        for (text, ipv6, problem) in cases {
            #expect(throws: NetctlError.invalidSubnet(text, field: ipv6 ? .subnet6 : .subnet, problem: problem)) {
                try Validate.subnet(text, ipv6: ipv6)
            }
        }
    }

    @Test func hostAddresses() throws {
        let subnet = IPNetwork("10.0.0.0/24")!
        #expect(try Validate.hostAddress("10.0.0.9", in: subnet, field: .ip) == IPAddress("10.0.0.9"))
        let cases: [(String, AddressProblem)] = [
            ("10.0.1.9", .outside(subnet: "10.0.0.0/24")), ("10.0.0.0", .networkAddress(subnet: "10.0.0.0/24")),
            ("10.0.0.255", .broadcastAddress(subnet: "10.0.0.0/24")), ("fd00::1", .notAnAddress(ipv4: true)),
            ("ten", .notAnAddress(ipv4: true)),
        ]
        for (bad, problem) in cases {
            #expect(throws: NetctlError.invalidAddress(bad, field: .gateway, problem: problem)) {
                try Validate.hostAddress(bad, in: subnet, field: .gateway)
            }
        }
        // The library names inputs in plain words; a front end in its own.
        let error = NetctlError.invalidAddress("10.0.1.9", field: .gateway6, problem: .needsSubnet)
        #expect(error.description == "invalid address \"10.0.1.9\": the IPv6 gateway needs the IPv6 subnet")
        #expect(error.message(naming: { "--\($0.rawValue)" }) == "invalid address \"10.0.1.9\": --gateway6 needs --subnet6")
    }

    @Test func names() throws {
        try Validate.objectName("web-1.prod_x", kind: "network")
        for bad in ["", "-web", "web/1", "web 1", String(repeating: "a", count: 65)] {
            #expect(throws: NetctlError.self) { try Validate.objectName(bad, kind: "network") }
        }
    }

    @Test("bridge names fit the kernel's 15 bytes")
    func bridgeNames() {
        #expect(NetworkRegistry.bridgeName(for: "web") == "nc-web")
        let long = NetworkRegistry.bridgeName(for: "a-very-long-network-name")
        #expect(long.hasPrefix("nc-") && long.utf8.count == 11)
        #expect(long == NetworkRegistry.bridgeName(for: "a-very-long-network-name"))
    }
}

@Suite("State store")
struct StateStoreTests {

    func network(_ name: String = "web") -> Network {
        Network(name: name, bridge: "nc-\(name)", subnet: "10.0.0.0/24", gateway: "10.0.0.1",
                subnet6: nil, gateway6: nil, mtu: 1500, created: .now())
    }

    func endpoint(_ name: String, ip: String) -> Endpoint {
        Endpoint(id: name, name: name, network: "web", hostInterface: "nc\(name)", interface: "eth0",
                 mac: "02:00:00:00:00:01", ipv4: "\(ip)/24", ipv6: nil, gateway: "10.0.0.1", gateway6: nil,
                 netns: "/x", pid: nil, ownsNetns: false, state: .active, created: .now(), owner: .current())
    }

    @Test("the database refuses to lease one address twice")
    func uniqueLeases() throws {
        let directory = try makeTemporaryDirectory("/tmp/netctl-state-")
        defer { try? removeTree(directory) }
        let store = try StateStore(path: directory + "/state.db", bootID: "boot-a")
        try store.insert(network())
        try store.insert(endpoint("a", ip: "10.0.0.2"))
        #expect(throws: SQLiteConstraintViolation.self) { try store.insert(endpoint("b", ip: "10.0.0.2")) }
        #expect(try store.leases(network: "web") == [IPAddress("10.0.0.2")!: "a"])
        let loaded = try #require(try store.endpoint(named: "a"))
        #expect(loaded.ipv4 == "10.0.0.2/24" && loaded.owner == .current())
    }

    @Test("state from before a reboot is recognised as gone; networks stay")
    func bootID() throws {
        let directory = try makeTemporaryDirectory("/tmp/netctl-state-")
        defer { try? removeTree(directory) }
        do {
            let store = try StateStore(path: directory + "/state.db", bootID: "boot-a")
            try store.insert(network())
            try store.insert(endpoint("a", ip: "10.0.0.2"))
        }
        let same = try StateStore(path: directory + "/state.db", bootID: "boot-a")
        #expect(!same.discardedPreviousBoot)
        #expect(try same.endpoints().count == 1)
        let rebooted = try StateStore(path: directory + "/state.db", bootID: "boot-b")
        #expect(rebooted.discardedPreviousBoot)
        #expect(try rebooted.endpoints().isEmpty)
        #expect(try rebooted.networks().map(\.name) == ["web"])
    }

    @Test("a process identity survives PID checks and dies with its process")
    func processIdentity() {
        #expect(ProcessIdentity.current().isAlive)
        #expect(!ProcessIdentity(pid: ProcessIdentity.current().pid, startTime: 1).isAlive)
        #expect(ProcessIdentity(encoded: ProcessIdentity.current().encoded) == .current())
    }
}

@Suite("Orchestration over a mock netlink socket")
struct ManagerMockTests {
    @Test("a bridge name held by someone else's interface is refused before anything changes")
    func bridgeNotOurs() throws {
        let mock = try MockManager(), socket = mock.host, manager = mock.manager
        defer { mock.remove() }
        socket.responder = { request in
            request.type == NetlinkMessageType.getLink ? linkReply(to: request, index: 9, name: "docker0") : nil
        }
        #expect(throws: NetctlError.bridgeNotOurs("docker0")) {
            try manager.createNetwork(NetworkSpec(name: "web", bridge: "docker0"))
        }
        #expect(try manager.networks().isEmpty)
        // Only the lookup went out: no request that changes the kernel.
        #expect(socket.sent.map(\.type) == [NetlinkMessageType.getLink])
    }
}
