import Foundation
import Glibc
import Netlink
@testable import Proxy
import Testing

@Suite("End to end: the proxy's hand-over of connections between workers", .enabled(if: Sandbox.isRoot, "needs root for namespaces"))
struct ProxyHandOverTests {
    @Test("a worker not serving the route (its listener not there yet, or draining) gives a handed-over connection back, and it is served",
          .enabled(if: ProxyServer.allowedCPUs.count >= 2, "needs two CPUs"))
    func handedBack() throws {
        let cpus = ProxyServer.allowedCPUs
        let s = try ProxyRelayTests.Setup(workers: cpus.count, balanceConnections: true)
        try #require(s.proxy.workerCPUs == cpus.map { [$0] }, "workers could not be bound to CPUs")
        let route = ProxyRelayTests.route(listen: "0.0.0.0", 18031, s.backend.port)
        try s.serve([route])
        // Every worker but the first (the one on the CPU the client connects from) stops
        // serving the route, as if its listener had not arrived yet.
        for worker in s.proxy.workers.dropFirst() { worker.post(.remove(route)) }
        s.proxy.barrier()  // applied
        let count = 2 * ProxyServer.connectionImbalance + 4  // enough that the first worker hands some over
        let fds = try s.connectEchoing(port: 18031, count: count, fromCPU: cpus[0])
        #expect(s.proxy.workerConnections == [count] + Array(repeating: 0, count: cpus.count - 1))
        fds.forEach { close($0) }
        #expect(eventually { s.proxy.workerConnections.allSatisfy { $0 == 0 } })
    }
}
