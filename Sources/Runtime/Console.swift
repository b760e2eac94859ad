import CSocket
import Glibc
import Primitives
import Synchronization

/// `run -it`: the container's terminal, relayed to ours. runc makes the terminal and hands
/// its master end over a unix socket (`--console-socket`); the relay copies our input to it
/// and its output to us, with our terminal in raw mode (the container's line discipline does
/// the editing, as with `docker run -it`) and its window size following ours.
final class ConsoleSocket: Sendable {
    let path: String
    let listener: Int32
    private let directory: String

    /// In a private directory of its own under /tmp: a socket path must fit in 108 bytes,
    /// which one under the state directory may not.
    init() throws {
        do { directory = try makeTemporaryDirectory("/tmp/netctl-console-") } catch {
            throw RuntimeError.io(what: "cannot make a directory for the console socket", errno: (error as? SystemError)?.code ?? EIO)
        }
        let path = directory + "/socket"
        do { listener = try UnixSocket.listen(path, backlog: 1) } catch {
            rmdir(directory)
            throw RuntimeError.io(what: "cannot listen on \(path)", errno: (error as? SystemError)?.code ?? EIO)
        }
        self.path = path
    }

    deinit {
        close(listener)
        unlink(path)
        rmdir(directory)
    }

    /// Waits (at most `seconds`) for runc to connect and send the terminal's master.
    func receiveMaster(seconds: Int32 = 30) throws -> Int32 {
        var poll = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard Glibc.poll(&poll, 1, seconds * 1000) == 1 else {
            throw RuntimeError.io(what: "runc did not hand over the container's terminal", errno: ETIMEDOUT)
        }
        let connection = accept(listener, nil, nil)  // not inherited: Processes.spawn closes every other descriptor
        guard connection >= 0 else { throw RuntimeError.io(what: "cannot accept runc's console connection", errno: errno) }
        defer { close(connection) }
        let master = csock_recv_fd(connection)
        guard master >= 0 else { throw RuntimeError.io(what: "runc sent no terminal", errno: -master) }
        return master
    }
}

/// Copies between our terminal (or stdin/stdout) and the container's until told to stop,
/// and then what the container wrote last. Restores our terminal's settings when done.
final class TerminalRelay: Sendable {
    private let master: Int32
    private let forwardInput: Bool
    private let stopping = Mutex(false)
    private let saved: termios?

    init(master: Int32, forwardInput: Bool) {
        self.master = master
        self.forwardInput = forwardInput
        var settings = termios()
        if isatty(STDIN_FILENO) == 1 && tcgetattr(STDIN_FILENO, &settings) == 0 {
            saved = settings
            var raw = settings
            cfmakeraw(&raw)
            tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        } else {
            saved = nil
        }
        TerminalRelay.copyWindowSize(to: master)
    }

    /// Runs the relay on its own thread; `finish` stops it once the container has exited.
    func start() throws -> pthread_t {
        try startThread("the terminal relay") { [self] in relay() }
    }

    func finish(_ thread: pthread_t) {
        stopping.withLock { $0 = true }
        pthread_join(thread, nil)
        restore()
    }

    /// Our terminal as it was; the container's master closed.
    func restore() {
        if var saved { tcsetattr(STDIN_FILENO, TCSANOW, &saved) }
        close(master)
    }

    private func relay() {
        var buffer = [UInt8](repeating: 0, count: 32768)
        var inputOpen = forwardInput
        var size = TerminalRelay.windowSize()
        while true {
            var fds = [pollfd(fd: master, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: inputOpen ? STDIN_FILENO : -1, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, 100)
            if ready < 0 && errno != EINTR { return }
            // The window follows ours (checked each turn: a SIGWINCH handler would be per process).
            let now = TerminalRelay.windowSize()
            if now != size { size = now; TerminalRelay.copyWindowSize(to: master) }
            if fds[0].revents != 0 {
                let n = read(master, &buffer, buffer.count)
                if n <= 0 { return }  // EIO: every holder of the terminal's other end is gone
                _ = writeAll(STDOUT_FILENO, Array(buffer[0..<n]))
            }
            if inputOpen && fds[1].revents != 0 {
                let n = read(STDIN_FILENO, &buffer, buffer.count)
                if n <= 0 { inputOpen = false } else { _ = writeAll(master, Array(buffer[0..<n])) }
            }
            if ready == 0 && stopping.withLock({ $0 }) { return }  // exited, and nothing more to read
        }
    }

    private static func windowSize() -> [UInt16] {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 else { return [] }
        return [size.ws_row, size.ws_col]
    }

    private static func copyWindowSize(to master: Int32) {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 { _ = ioctl(master, UInt(TIOCSWINSZ), &size) }
    }
}
