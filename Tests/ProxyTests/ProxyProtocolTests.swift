import Primitives
import Testing
@testable import Proxy

@Suite("PROXY protocol v2 headers")
struct ProxyProtocolTests {
    @Test("an IPv4 connection: signature, PROXY command, TCP over IPv4, 12 address bytes")
    func ipv4() {
        let header = ProxyProtocol.header(source: SocketAddress(IPAddress("192.0.2.7")!, 40000),
                                          destination: SocketAddress(IPAddress("198.51.100.1")!, 8080))
        #expect(header == ProxyProtocol.signature + [0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x1f, 0x90])
    }

    @Test("an IPv6 connection carries 36 address bytes")
    func ipv6() {
        let header = ProxyProtocol.header(source: SocketAddress(IPAddress("2001:db8::7")!, 1),
                                          destination: SocketAddress(IPAddress("2001:db8::1")!, 443))
        #expect(Array(header[12..<16]) == [0x21, 0x21, 0, 36])
        #expect(header.count == 16 + 36)
        #expect(Array(header.suffix(4)) == [0, 1, 0x01, 0xbb])
    }

    @Test("socket addresses round-trip through sockaddr_storage")
    func addresses() {
        for address in [SocketAddress(IPAddress("10.1.2.3")!, 80), SocketAddress(IPAddress("fd00::5")!, 65535)] {
            #expect(SocketAddress(address.storage) == address)
        }
        #expect(SocketAddress(IPAddress("::")!, 1).isWildcard && !SocketAddress(IPAddress("::1")!, 1).isWildcard)
    }
}
