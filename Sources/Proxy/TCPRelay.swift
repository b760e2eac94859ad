import CSocket
import Glibc
import Primitives

/// One relayed TCP connection. Lives in a slot array that is reused, so accepting a
/// connection allocates nothing.
struct Connection {
    /// One direction: bytes spliced from a socket into a pipe and on to the other socket.
    struct Direction {
        var pipe: (read: Int32, write: Int32)?
        /// Bytes in the pipe, not yet written on.
        var pending = 0
        /// The source said EOF (or the direction was cut).
        var ended = false
        /// EOF passed on with shutdown(SHUT_WR).
        var shut = false
        /// Moving by splice; until a read fills the copy buffer, small reads are copied.
        var splicing = false
    }

    var inUse = false
    /// Bumped each time the slot is reused: an event still queued for the slot's previous
    /// connection (same epoll batch) carries the old number and is ignored.
    var generation: UInt32 = 0
    var client: Int32 = -1
    var backend: Int32 = -1
    var listener = 0
    /// The route's counters (kept here: the listener may be closed while this drains).
    var counters: Counters?
    var proxyProtocol = false
    var establishing = false
    /// The client's epoll events that came before the backend answered (edges not yet acted
    /// on): whether it sent something, and whether its FIN came too.
    var clientWaiting: UInt32 = 0
    /// The client socket is watched for EPOLLOUT too (since a send to it first blocked).
    var clientWritable = false
    var deadline: UInt64 = 0
    /// Bytes moved (both ways) since the worker last looked (see `Worker.balanceBulk`).
    var moved = 0
    var up = Direction()    // client -> backend
    var down = Direction()  // backend -> client
    var peer = sockaddr_storage()
}

extension Worker {
    func acceptAll(listener slot: Int) {
        guard let listener = listeners[slot] else { return }
        while true {
            var peer = sockaddr_storage()
            let fd = csock_accept_nonblocking(listener.fd, &peer)
            if fd >= 0 {
                if options.balanceConnections, let other = lighterSibling() {
                    other.load.add(1, ordering: .relaxed)  // now, so a burst spreads instead of all following
                    if other.post(.adopt(client: fd, peer: peer, route: listener.route, from: self, returned: false)) { continue }
                    other.load.subtract(1, ordering: .relaxed)  // it has stopped
                }
                start(client: fd, peer: peer, listener: slot)
                continue
            }
            switch -fd {
            case EINTR, ECONNABORTED: continue
            case EMFILE, ENFILE:
                // Out of descriptors. Pooled pipes are worth less than a connection: they go
                // first. Else the connection is taken with the reserve and closed at once
                // (the client sees a close, not a hang).
                if closeSparePipes() { continue }
                switch reserve.shed(listener: listener.fd) {
                case .dropped: listener.counters.add(.failures); continue
                case .empty: return
                case .failed: retryAccept.insert(slot); return
                }
            case EAGAIN: return  // all taken
            default:
                // ENOBUFS, ENOMEM...: connections may still wait, and no new edge will say
                // so. The sweep tries again.
                retryAccept.insert(slot)
                return
            }
        }
    }

    /// A worker with more than `Worker.imbalance` fewer open connections than this one, if
    /// any, to take the connection just accepted. The kernel picks the worker on the CPU that
    /// took the SYN, which is right for each connection but not for the sum: when a client's
    /// threads happened to share a CPU while connecting, its long-lived connections all stayed
    /// on one worker while the other CPU idled.
    func lighterSibling() -> Worker? {
        guard !siblings.isEmpty else { return nil }
        var lightest: Worker? = nil
        var lowest = load.load(ordering: .relaxed) - Worker.imbalance
        for sibling in siblings {
            let other = sibling.load.load(ordering: .relaxed)
            if other < lowest { lightest = sibling; lowest = other }
        }
        return lightest
    }

    /// How many more connections a worker may hold than another before it hands new ones over.
    /// Small differences come and go with short connections; moving those would cost the
    /// locality of the worker on the SYN's CPU for nothing.
    static let imbalance = ProxyServer.connectionImbalance

    /// `counted`: the connection is in `load` already (handed over by another worker).
    func start(client: Int32, peer: sockaddr_storage, listener listenerSlot: Int, counted: Bool = false) {
        let listener = listeners[listenerSlot]!
        let route = listener.route
        if !counted { load.add(1, ordering: .relaxed) }
        // A connection keeps its descriptors: none while the reserve is out (see
        // DescriptorReserve), or a queued client could be left with no way to be told.
        let permit = reserve.permit()
        let backend = permit == nil ? -1 : socket(route.backend.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard backend >= 0, let permit, reserve.kept(permit) else {
            if backend >= 0 { close(backend) }
            load.subtract(1, ordering: .relaxed)
            listener.counters.add(.failures)
            abort(client)
            return
        }
        var one: Int32 = 1, zero: Int32 = 0
        let size = socklen_t(MemoryLayout<Int32>.size)
        setsockopt(backend, Int32(IPPROTO_TCP), TCP_NODELAY, &one, size)
        if let algorithm = backendCongestionControl {
            setsockopt(backend, Int32(IPPROTO_TCP), TCP_CONGESTION, algorithm, socklen_t(algorithm.count - 1))
        }
        // When the client has spoken already, the handshake's last ACK to the backend can
        // ride on those bytes (two segments fewer per connection, counted with nstat). Not
        // otherwise: a server that speaks first (SMTP, SSH, MySQL)
        // would wait for a delayed ACK before its accept returns.
        var byte: UInt8 = 0
        if recv(client, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0 {
            setsockopt(backend, Int32(IPPROTO_TCP), TCP_QUICKACK, &zero, size)
        }
        var target = listener.backend
        let rc = withUnsafePointer(to: &target) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(backend, $0, listener.backendLength) } }
        if rc != 0 && errno != EINPROGRESS {
            load.subtract(1, ordering: .relaxed)
            listener.counters.add(.failures)
            close(backend)
            abort(client)
            return
        }
        let slot = freeConnections.popLast() ?? { connections.append(Connection()); return connections.count - 1 }()
        let generation = connections[slot].generation &+ 1
        connections[slot] = Connection(inUse: true, generation: generation, client: client, backend: backend, listener: listenerSlot,
                                       counters: listener.counters, proxyProtocol: route.proxyProtocol, establishing: true, deadline: monotonicNanoseconds() + options.connectTimeout, peer: peer)
        watch(client, Worker.connectionToken(slot: slot, generation: generation, backend: false), Worker.edgeRead)
        watch(backend, Worker.connectionToken(slot: slot, generation: generation, backend: true), Worker.edgeAll)
        listener.counters.add(.connections)
        listener.counters.add(.active)
        if rc == 0 {
            // Connected at once: nothing is known of either side, so both are read to EAGAIN.
            connections[slot].clientWaiting = EPOLLIN.rawValue | Worker.hangupEvents
            established(slot, backendEvents: EPOLLIN.rawValue | Worker.hangupEvents, assumed: true)
        } else {
            connecting.insert(slot)
        }
    }

    func connectionEvent(slot: Int, generation: UInt32, backend: Bool, events: UInt32) {
        guard slot < connections.count, connections[slot].inUse, connections[slot].generation & 0x7fff_ffff == generation else { return }
        if connections[slot].establishing {
            // Client events wait: whatever the client sent is relayed once the backend answers.
            // A client reset (or closed both ways) before that is gone: so is the attempt.
            guard backend else {
                if events & Worker.goneEvents != 0 { return reset(slot, both: true) }
                connections[slot].clientWaiting |= events
                return
            }
            // Writable without an error means connected (a refused or failed connect raises
            // EPOLLERR), so no getsockopt(SO_ERROR) per connection.
            if events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
                refuse(slot)
            } else if events & EPOLLOUT.rawValue != 0 {
                connecting.remove(slot)
                established(slot, backendEvents: events)
            }
            return
        }
        // Only the direction the event concerns: readable (or hung up) means data to move
        // from this side; writable matters only while bytes wait for this side. Writable
        // edges come with every ACK, so pumping everything on each would spend four
        // splice calls per ACK for nothing.
        let readable = events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0
        let writable = events & EPOLLOUT.rawValue != 0
        let into = backend ? connections[slot].up : connections[slot].down
        let hangup = events & Worker.hangupEvents != 0
        let closed = events & EPOLLHUP.rawValue != 0  // both ways: pump everything
        // The peer's FIN is here (and no error): what is read now is its last data.
        let finishing = events & (EPOLLRDHUP.rawValue | EPOLLERR.rawValue) == EPOLLRDHUP.rawValue
        pump(slot, up: closed || (backend ? (writable && into.pending > 0) : readable),
             down: closed || (backend ? readable : (writable && into.pending > 0)), hangup: hangup,
             finishing: finishing ? (backend ? .down : .up) : nil)
        if events & Worker.goneEvents != 0 { dropIfGone(slot, generation: connections[slot].generation, backend: backend) }
    }

    /// A side that reported EPOLLHUP or EPOLLERR while bytes could still go to it was reset
    /// (HUP without our own FIN sent to it means its state is CLOSE): nothing more can reach
    /// it, so the other side gets a reset now instead of being held open. Without this, a
    /// client that resets while its backend stays silent kept both descriptors for good.
    private func dropIfGone(_ slot: Int, generation: UInt32, backend: Bool) {
        guard connections[slot].inUse, connections[slot].generation == generation else { return }  // finished meanwhile
        if backend ? !connections[slot].up.shut : !connections[slot].down.shut {
            reset(slot, toBackend: !backend)
        }
    }

    /// `assumed`: the events are a guess (a connect that completed at once), not the kernel's.
    private func established(_ slot: Int, backendEvents: UInt32, assumed: Bool = false) {
        connections[slot].establishing = false
        if connections[slot].proxyProtocol {
            guard sendProxyHeader(slot) else { return reset(slot, both: true) }
        }
        // Only what is known to be waiting: no calls that would just say EAGAIN. A short read
        // ends a side's reading unless its FIN (or an error) was among the edges that came.
        let client = connections[slot].clientWaiting
        let generation = connections[slot].generation
        pump(slot, up: client != 0, down: backendEvents & EPOLLIN.rawValue != 0,
             hangup: (client | backendEvents) & Worker.hangupEvents != 0)
        if !assumed && backendEvents & Worker.goneEvents != 0 { dropIfGone(slot, generation: generation, backend: true) }
    }

    /// The backend refused or never answered: the client gets a reset at once.
    private func refuse(_ slot: Int) {
        connecting.remove(slot)
        connections[slot].counters?.add(.failures)
        reset(slot, both: true)
    }

    func sweepConnectTimeouts(now: UInt64) {
        for slot in connecting where connections[slot].deadline <= now { refuse(slot) }
    }

    /// Moves what can move in both directions; passes EOFs and resets on; closes the
    /// connection when both directions are done.
    enum Side { case up, down }

    private func pump(_ slot: Int, up: Bool = true, down: Bool = true, hangup: Bool = true, finishing: Side? = nil) {
        let client = connections[slot].client, backend = connections[slot].backend
        let counters = connections[slot].counters
        if up {
            switch pump(&connections[slot].up, from: client, to: backend, hangup: hangup, otherShut: connections[slot].down.shut,
                        last: finishing == .up, boundFIN: true) {
            case .moved(let bytes): if bytes > 0 { counters?.add(.bytesIn, UInt64(bytes)); connections[slot].moved += bytes }
            case .sourceFailed: return reset(slot, toBackend: true)
            case .destinationFailed: return reset(slot, toBackend: false)
            }
        }
        if down {
            switch pump(&connections[slot].down, from: backend, to: client, hangup: hangup, otherShut: connections[slot].up.shut,
                        last: finishing == .down) {
            case .moved(let bytes): if bytes > 0 { counters?.add(.bytesOut, UInt64(bytes)); connections[slot].moved += bytes }
            case .sourceFailed: return reset(slot, toBackend: false)
            case .destinationFailed: return reset(slot, toBackend: true)
            }
            if connections[slot].down.pending > 0 && !connections[slot].clientWritable {
                // Bytes wait for the client: from now on its writable edges matter.
                connections[slot].clientWritable = true
                watch(client, Worker.connectionToken(slot: slot, generation: connections[slot].generation, backend: false),
                      Worker.edgeAll, change: true)
            }
        }
        if connections[slot].up.shut && connections[slot].down.shut { finish(slot) }
    }

    enum PumpResult { case moved(Int), sourceFailed, destinationFailed }

    /// Splices source -> pipe -> destination until neither step makes progress. Bulk bytes
    /// never enter user space. Backpressure: with the pipe full and the destination not
    /// writable, the source is left unread until EPOLLOUT on the destination.
    /// `hangup`: the event said the peer may have closed, so read on to EOF even after a
    /// short read (otherwise a short read means the socket is empty, and the next byte or
    /// FIN brings a new edge). `otherShut`: the other direction is done, so this one's EOF
    /// closes the connection and needs no shutdown(2) of its own. `last`: the source's FIN
    /// has arrived, so the bytes moved now are its last; they are sent with MSG_MORE and the
    /// FIN that follows at once leaves in the same segment.
    private func pump(_ d: inout Connection.Direction, from source: Int32, to destination: Int32,
                      hangup: Bool = true, otherShut: Bool = false, last: Bool = false, boundFIN: Bool = false) -> PumpResult {
        var moved = 0
        let capacity = options.pipeSize
        let threshold = options.copyThreshold
        var drained = false
        while true {
            var progress = false
            if drained {
                // Nothing more to read now; only the pipe may still hold bytes.
            } else if !d.ended && d.pending == 0 && !d.splicing && threshold > 0 {
                // Small transfers (requests, replies): one recv and one send beat two splices
                // through a pipe. A read that fills the buffer marks a bulk transfer, which
                // splices from then on.
                let n = recv(source, scratch, threshold, Int32(MSG_DONTWAIT))
                if n > 0 {
                    moved += n; progress = true
                    if n == threshold { d.splicing = true } else if !hangup { drained = true }
                    let sent = send(destination, scratch, n, Int32(MSG_NOSIGNAL | MSG_DONTWAIT) | (last ? Int32(MSG_MORE) : 0))
                    if sent < 0 && errno != EAGAIN && errno != EINTR { return .destinationFailed }
                    let done = max(0, sent)
                    if done < n {
                        // The rest waits in a pipe, as spliced bytes would (the pipe is empty).
                        if d.pipe == nil { d.pipe = takePipe() }
                        d.pending = n - done  // also on failure: a pipe holding bytes is never pooled
                        guard let pipe = d.pipe, write(pipe.write, scratch + done, n - done) == n - done else { return .destinationFailed }
                    }
                } else if n == 0 {
                    d.ended = true; progress = true
                } else if errno != EAGAIN && errno != EINTR {
                    return .sourceFailed
                }
            } else if !d.ended && d.pending < capacity {
                if d.pipe == nil { d.pipe = takePipe() }
                guard let pipe = d.pipe else { return .sourceFailed }
                let room = capacity - d.pending
                let n = csock_splice(source, pipe.write, room, UInt32(CSOCK_SPLICE_F_MOVE | CSOCK_SPLICE_F_NONBLOCK))
                if n > 0 {
                    // (A short splice doesn't prove the socket empty: the pipe may have run
                    // out of slots first. So no `drained` here.)
                    d.pending += n; moved += n; progress = true
                } else if n == 0 {
                    d.ended = true; progress = true
                } else if n != -Int(EAGAIN) && n != -Int(EINTR) {
                    return .sourceFailed
                }
            }
            if d.pending > 0, let pipe = d.pipe {
                let n = csock_splice(pipe.read, destination, d.pending,
                                     UInt32(CSOCK_SPLICE_F_MOVE | CSOCK_SPLICE_F_NONBLOCK | (last ? CSOCK_SPLICE_F_MORE : 0)))
                if n > 0 {
                    d.pending -= n; progress = true
                } else if n != -Int(EAGAIN) && n != -Int(EINTR) {
                    return .destinationFailed
                }
            }
            if !progress { break }
        }
        if d.pending == 0, let pipe = d.pipe {
            givePipe(pipe, empty: true)
            d.pipe = nil
        }
        if d.ended && d.pending == 0 && !d.shut {
            if !otherShut {
                shutdown(destination, Int32(SHUT_WR))  // else close(2) sends the FIN
                if boundFIN {
                    // A backend whose kernel never acknowledges this FIN (or the bytes before
                    // it) would hold the connection's descriptors for good: the socket fails
                    // after this long instead, and the client is reset.
                    var limit = Worker.unacknowledgedLimitMilliseconds
                    setsockopt(destination, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &limit, socklen_t(MemoryLayout<UInt32>.size))
                }
            }
            d.shut = true
        }
        return .moved(moved)
    }

    /// A side failed (reset, or gone): the other side gets a reset too, as a peer of a real
    /// connection would.
    private func reset(_ slot: Int, toBackend: Bool) {
        let other = toBackend ? connections[slot].backend : connections[slot].client
        abort(other)
        if toBackend { connections[slot].backend = -1 } else { connections[slot].client = -1 }
        finish(slot)
    }

    func reset(_ slot: Int, both: Bool) {
        abort(connections[slot].client)
        abort(connections[slot].backend)
        connections[slot].client = -1
        connections[slot].backend = -1
        finish(slot)
    }

    /// Closes with SO_LINGER 0: the peer gets RST, not FIN.
    func abort(_ fd: Int32) {
        guard fd >= 0 else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
    }

    private func finish(_ slot: Int) {
        let c = connections[slot]
        if c.client >= 0 { close(c.client) }
        if c.backend >= 0 { close(c.backend) }
        // A pipe still holding bytes can't be reused.
        if let pipe = c.up.pipe { givePipe(pipe, empty: c.up.pending == 0) }
        if let pipe = c.down.pipe { givePipe(pipe, empty: c.down.pending == 0) }
        connecting.remove(slot)
        c.counters?.subtract(.active)
        load.subtract(1, ordering: .relaxed)
        connections[slot] = Connection(generation: c.generation)  // kept: the next use bumps it
        freeConnections.append(slot)
    }

    func closeConnections(of listener: Int) {
        for slot in connections.indices where connections[slot].inUse && connections[slot].listener == listener {
            reset(slot, both: true)
        }
    }

    // MARK: Moving bulk connections between workers

    /// Counts this worker's bulk connections (those that moved `Worker.bulkBytes` since the
    /// last look) and, if it has two or more more than the least loaded sibling, hands one
    /// of them over whole. One per look, so a few looks even out a client's parallel streams.
    func balanceBulk() {
        var bulky: [Int] = []
        for slot in connections.indices where connections[slot].inUse {
            if !connections[slot].establishing && connections[slot].moved >= Worker.bulkBytes { bulky.append(slot) }
            connections[slot].moved = 0
        }
        bulk.store(bulky.count, ordering: .relaxed)
        guard bulky.count >= 2, drainDeadline == nil,
              let target = siblings.filter({ !$0.draining.load(ordering: .relaxed) })
                  .min(by: { $0.bulk.load(ordering: .relaxed) < $1.bulk.load(ordering: .relaxed) }),
              target.bulk.load(ordering: .relaxed) + 2 <= bulky.count,
              let slot = bulky.last, listeners.indices.contains(connections[slot].listener),
              let route = listeners[connections[slot].listener]?.route else { return }
        let c = connections[slot]
        epoll_ctl(epoll, EPOLL_CTL_DEL, c.client, nil)
        epoll_ctl(epoll, EPOLL_CTL_DEL, c.backend, nil)
        target.load.add(1, ordering: .relaxed)
        guard target.post(.migrate(c, route: route)) else {
            target.load.subtract(1, ordering: .relaxed)
            watchConnection(slot)  // it stopped: keep it here
            return
        }
        // Counted where it went (its estimate too, until that worker looks itself). A worker's
        // counters have one writer, itself: the other worker counts it in its own from now on.
        c.counters?.subtract(.active)
        target.bulk.add(1, ordering: .relaxed)
        bulk.subtract(1, ordering: .relaxed)
        load.subtract(1, ordering: .relaxed)
        connections[slot] = Connection(generation: c.generation)  // its descriptors and pipes went with it
        freeConnections.append(slot)
    }

    /// A connection another worker moved here: watched from now on, and pumped both ways at
    /// once (edges that came while it moved were taken by the other epoll set).
    func adoptMoved(_ moved: Connection, route: ProxyRoute) {
        var c = moved
        let listener = listeners.firstIndex(where: { $0?.route == route })
        if listener == nil && drainDeadline == nil {
            // The route went meanwhile: so does the connection, as a removed mapping's would.
            abort(c.client); abort(c.backend)
            for pipe in [c.up.pipe, c.down.pipe].compactMap({ $0 }) { close(pipe.read); close(pipe.write) }
            load.subtract(1, ordering: .relaxed)
            return
        }
        // Draining (its listeners let go, the move crossing the drain): it finishes here anyway.
        let slot = freeConnections.popLast() ?? { connections.append(Connection()); return connections.count - 1 }()
        c.generation = connections[slot].generation &+ 1
        c.listener = listener ?? -1
        c.counters = listener.flatMap { listeners[$0]?.counters }
        c.counters?.add(.active)
        c.moved = 0
        connections[slot] = c
        watchConnection(slot)
        pump(slot, up: true, down: true, hangup: false)
    }

    private func watchConnection(_ slot: Int) {
        let c = connections[slot]
        watch(c.client, Worker.connectionToken(slot: slot, generation: c.generation, backend: false),
              c.clientWritable ? Worker.edgeAll : Worker.edgeRead)
        watch(c.backend, Worker.connectionToken(slot: slot, generation: c.generation, backend: true), Worker.edgeAll)
    }

    /// PROXY protocol v2: the client's address and the address it connected to, binary.
    private func sendProxyHeader(_ slot: Int) -> Bool {
        var local = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getsockname(connections[slot].client, $0, &length) } }
        guard let source = SocketAddress(connections[slot].peer), let destination = SocketAddress(local) else { return false }
        let header = ProxyProtocol.header(source: source, destination: destination)
        let sent = header.withUnsafeBytes { send(connections[slot].backend, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        return sent == header.count
    }
}

enum ProxyProtocol {
    static let signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]

    /// A v2 PROXY header for a TCP connection. Mixed families (an IPv4 client on an IPv6
    /// listener cannot happen here: listeners are IPv6-only) fall back to LOCAL.
    static func header(source: SocketAddress, destination: SocketAddress) -> [UInt8] {
        guard source.ip.isIPv4 == destination.ip.isIPv4 else { return signature + [0x20, 0x00, 0x00, 0x00] }
        let v4 = source.ip.isIPv4
        let body = source.ip.bytes + destination.ip.bytes +
            [UInt8(source.port >> 8), UInt8(source.port & 0xff), UInt8(destination.port >> 8), UInt8(destination.port & 0xff)]
        return signature + [0x21, v4 ? 0x11 : 0x21, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
    }
}
