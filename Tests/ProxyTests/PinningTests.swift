import Proxy
import Testing

@Suite("Workers bound to CPUs")
struct PinningTests {
    let allowed = ProxyServer.allowedCPUs

    @Test("by default one worker per CPU the process may use, each bound to a CPU of its own, in order")
    func pinned() throws {
        #expect(ProxyServer.Options().workers == allowed.count)
        let server = try ProxyServer(options: .init())
        defer { server.stop(drainSeconds: 0) }
        #expect(server.workerCPUs == allowed.map { [$0] })
    }

    @Test("more or fewer workers than CPUs, or pinning turned off: left to the scheduler")
    func unpinned() throws {
        for count in Set([allowed.count + 1, max(1, allowed.count - 1)]) where count != allowed.count {
            let server = try ProxyServer(options: .init(workers: count))
            defer { server.stop(drainSeconds: 0) }
            #expect(server.workerCPUs == Array(repeating: allowed, count: count))
        }
        let off = try ProxyServer(options: .init(workers: allowed.count, pinWorkers: false))
        defer { off.stop(drainSeconds: 0) }
        #expect(off.workerCPUs == Array(repeating: allowed, count: allowed.count))
    }
}
