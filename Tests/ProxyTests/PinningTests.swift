import Glibc
@testable import Proxy
import Testing

@Suite("Workers bound to CPUs")
struct PinningTests {
    let allowed = ProxyServer.cpus(of: pthread_self())

    @Test("one worker per CPU: each bound to a CPU of its own, in order")
    func pinned() throws {
        let server = try ProxyServer(options: .init(workers: allowed.count))
        defer { server.stop(drainSeconds: 0) }
        #expect(server.workerCPUs == allowed.map { [$0] })
    }

    @Test("more workers than CPUs, or pinning turned off: left to the scheduler")
    func unpinned() throws {
        let more = try ProxyServer(options: .init(workers: allowed.count + 1))
        defer { more.stop(drainSeconds: 0) }
        #expect(more.workerCPUs == Array(repeating: allowed, count: allowed.count + 1))
        let off = try ProxyServer(options: .init(workers: allowed.count, pinWorkers: false))
        defer { off.stop(drainSeconds: 0) }
        #expect(off.workerCPUs == Array(repeating: allowed, count: allowed.count))
    }
}
