import CProcess
import Glibc

/// Runs `body` on a new joinable OS thread, never a Swift concurrency one: netctl's loops
/// block in the kernel, and some enter namespaces (`setns` is per thread). `what` names it
/// in the error.
public func startThread(_ what: String, _ body: @escaping @Sendable () -> Void) throws -> pthread_t {
    final class Work: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Work(body)).toOpaque()
    let rc = cproc_thread_start(&thread, { raw in
        Unmanaged<Work>.fromOpaque(raw!).takeRetainedValue().body()
    }, context)
    guard rc == 0 else {
        Unmanaged<Work>.fromOpaque(context).release()
        throw SystemError("starting a thread for \(what)", code: -rc)
    }
    return thread
}
