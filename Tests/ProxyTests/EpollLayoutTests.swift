import CSocket
import Testing

@Suite("C layout the event loop relies on")
struct EpollLayoutTests {
    @Test("struct epoll_event is packed: 12 bytes apart, as the kernel writes them")
    func packed() {
        #expect(MemoryLayout<epoll_event>.size == 12)
        #expect(MemoryLayout<epoll_event>.stride == 12)
    }
}
