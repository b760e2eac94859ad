import Proxy
import Testing

@Suite("ProxyServer options")
struct OptionsTests {
    @Test("a copy threshold above the pipe size is refused before any worker starts (what a slow destination leaves of a copied read waits in a pipe); at the pipe size it starts")
    func copyThresholdAbovePipe() throws {
        let error = #expect(throws: ProxyError.self) { try ProxyServer(options: .init(pipeSize: 65536, copyThreshold: 65537)) }
        #expect(error?.description.contains("copy threshold 65537 is above the pipe size 65536") == true)
        let server = try ProxyServer(options: .init(pipeSize: 65536, copyThreshold: 65536))
        server.stop(drainSeconds: 0)
    }

    @Test("connections stay with the worker that accepted them unless balancing is asked for")
    func balancingOff() {
        #expect(!ProxyServer.Options().balanceConnections)
    }
}
