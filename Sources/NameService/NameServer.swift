import CSocket
import Glibc
import Logging
import NetCore
import Primitives
import Synchronization

/// The current names, shared by the loop and TCP threads.
final class SharedNames: Sendable {
    let value = Mutex(CompiledNames(NameTable()))
}

/// netctl's name server: one process for every network with names. It listens on UDP and
/// TCP port 53 of those networks' gateway addresses only (never a wildcard address, so it
/// never answers the LAN), answers the names, aliases and reverse names of each client's
/// networks (and of no other), and forwards the rest to the host's upstream servers (or the
/// client's own, from `--dns`). Everything runs on one epoll loop but TCP connections, each
/// served on a thread of its own (they are rare: truncated answers retried).
///
/// It follows state: a "sync" on its control socket (`Agent.sync`, from any netctl process)
/// makes it reload at once and answers only after that, and it also looks at state's change
/// counter every second. It runs until its host says it is no longer needed (`needed`).
public final class NameServer {
    let stateDirectory: String
    let manager: NetworkManager
    let logger: Logger
    let epoll: Int32
    /// The names, shared with TCP threads.
    let shared = SharedNames()
    private var names: CompiledNames
    private var upstreams: [SocketAddress] = []
    private var version: Int64 = -1

    struct Listener {
        var address: IPAddress
        var udp: Int32
        var tcp: Int32
    }
    private var listeners: [Listener?] = []
    private let control: Int32
    private let tcpConnections = TCPConnection.Count()
    static let maxTCPConnections = 64

    /// Queries forwarded upstream, each on a connected socket of its own (a random source
    /// port, and the kernel drops replies from anyone but that server).
    struct Pending {
        var socket: Int32 = -1
        var generation: UInt32 = 0
        var listener = 0
        var client = sockaddr_storage()
        var clientLength: socklen_t = 0
        var upstreams: [SocketAddress] = []
        var tries = 0
        var deadline: UInt64 = 0
        var query: [UInt8] = []
    }
    private var pending: [Pending] = []
    private var freePending: [Int] = []
    static let maxPending = 1024
    /// Per upstream try; after `maxTries` the client gets SERVFAIL, well before its own
    /// resolver gives up.
    static let tryTimeout: UInt64 = 1_000_000_000
    static let maxTries = 3

    // Buffers for a batch of UDP queries and their answers, allocated once.
    static let batch = 32
    static let bufferSize = 4096
    private let receive: UnsafeMutableRawPointer
    private let send: UnsafeMutableRawPointer
    private let nameBuffer: UnsafeMutableRawBufferPointer
    private let messages: UnsafeMutablePointer<csock_mmsghdr>
    private let vectors: UnsafeMutablePointer<iovec>
    private let peers: UnsafeMutablePointer<sockaddr_storage>
    private let replies: UnsafeMutablePointer<csock_mmsghdr>
    private let replyVectors: UnsafeMutablePointer<iovec>

    enum Kind: UInt64 { case control = 1, udp = 2, tcp = 3, upstream = 4 }
    static func token(_ kind: Kind, _ index: Int, generation: UInt32 = 0) -> UInt64 {
        kind.rawValue << 56 | UInt64(generation & 0xff_ffff) << 32 | UInt64(index)
    }

    /// Whether the process is still wanted, asked after each reload (the agent's rule: any
    /// network exists).
    let needed: (NetworkManager) throws -> Bool

    public init(stateDirectory: String, manager: NetworkManager, control: Int32, logger: Logger,
                needed: @escaping (NetworkManager) throws -> Bool) throws {
        self.needed = needed
        self.stateDirectory = stateDirectory
        self.manager = manager
        self.control = control
        self.logger = logger
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw SystemError("creating an event loop") }
        names = CompiledNames(NameTable())
        receive = .allocate(byteCount: NameServer.batch * NameServer.bufferSize, alignment: 16)
        send = .allocate(byteCount: NameServer.batch * NameServer.bufferSize, alignment: 16)
        nameBuffer = .allocate(byteCount: DNS.maxNameLength, alignment: 1)
        messages = .allocate(capacity: NameServer.batch)
        vectors = .allocate(capacity: NameServer.batch)
        peers = .allocate(capacity: NameServer.batch)
        replies = .allocate(capacity: NameServer.batch)
        replyVectors = .allocate(capacity: NameServer.batch)
        watch(control, NameServer.token(.control, 0))
    }

    private func watch(_ fd: Int32, _ token: UInt64) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = token
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
    }

    // MARK: State

    /// Reads state and listens where it says; whether the process is still needed.
    @discardableResult
    public func reload() throws -> Bool {
        version = try manager.stateVersion()
        let table = try manager.nameTable()
        names = CompiledNames(table)
        shared.value.withLock { $0 = names }
        upstreams = ResolverConfiguration.host().nameservers.compactMap { IPAddress($0).map { SocketAddress($0, 53) } }
        // Listeners follow the zones' gateway addresses.
        let wanted = Set(names.listeners.keys)
        for (index, listener) in listeners.enumerated() {
            guard let listener, !wanted.contains(listener.address) else { continue }
            close(listener.udp); close(listener.tcp)
            listeners[index] = nil
        }
        let open = Set(listeners.compactMap { $0?.address })
        for address in wanted.subtracting(open).sorted() {
            do {
                let udp = try NameServer.bind(address, udp: true)
                let tcp: Int32
                do { tcp = try NameServer.bind(address, udp: false) } catch { close(udp); throw error }
                let index = listeners.firstIndex(where: { $0 == nil }) ?? { listeners.append(nil); return listeners.count - 1 }()
                listeners[index] = Listener(address: address, udp: udp, tcp: tcp)
                watch(udp, NameServer.token(.udp, index))
                watch(tcp, NameServer.token(.tcp, index))
            } catch {
                logger.error("cannot listen on \(SocketAddress(address, 53)): \(error)")
            }
        }
        return try needed(manager)
    }

    static func bind(_ address: IPAddress, udp: Bool) throws -> Int32 {
        let target = SocketAddress(address, 53)
        let type = (udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue)) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(target.family, type, 0)
        guard fd >= 0 else { throw SystemError("opening a socket for \(target)") }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size)
        // The gateway address may still be on its way onto the bridge.
        setsockopt(fd, Int32(IPPROTO_IP), IP_FREEBIND, &one, size)
        if !address.isIPv4 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, size) }
        guard target.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0, udp || listen(fd, 128) == 0 else {
            let code = errno
            close(fd)
            throw SystemError("binding \(target)", code: code)
        }
        return fd
    }

    // MARK: The loop

    /// Serves until it is no longer needed, or its state is deleted.
    public func run() {
        let capacity = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var nextCheck = monotonicNanoseconds() + 1_000_000_000
        while true {
            let n = epoll_wait(epoll, events, Int32(capacity), 100)
            for i in 0..<max(0, Int(n)) {
                let token = events[i].data.u64
                let index = Int(token & 0xffff_ffff)
                switch Kind(rawValue: token >> 56) {
                case .control:
                    if !serveControl() { return }
                case .udp: receiveQueries(listener: index)
                case .tcp: acceptTCP(listener: index)
                case .upstream: receiveUpstream(slot: index, generation: UInt32((token >> 32) & 0xff_ffff))
                case nil: break
                }
            }
            let now = monotonicNanoseconds()
            sweepPending(now: now)
            if now >= nextCheck {
                nextCheck = now + 1_000_000_000
                // State removed under it (its directory deleted; the open database would
                // still read): nothing left to serve.
                guard fileExists(stateDirectory + "/state.db") else {
                    logger.notice("the state directory is gone; stopping")
                    return
                }
                // Changes no process told us about (gc, a crash's clean-up): picked up here.
                do {
                    if try manager.stateVersion() != version, try !reload() { return }
                } catch {
                    logger.error("reading state: \(error)")
                }
            }
        }
    }

    /// One control request: "sync" reloads and answers "ok" (or "stop", and the server
    /// ends, when nothing needs it). Whether to go on.
    private func serveControl() -> Bool {
        let client = csock_accept_nonblocking(control, nil)
        guard client >= 0 else { return true }
        defer { close(client) }
        _ = fcntl(client, F_SETFL, 0)  // blocking, under the timeouts below
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(client, &buffer, buffer.count, 0)
        guard n > 0, String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("sync") else { return true }
        let needed: Bool
        do {
            needed = try reload()
        } catch {
            logger.error("reading state: \(error)")
            writeAll(client, Array("error \(error)\n".utf8))
            return true
        }
        writeAll(client, Array((needed ? "ok\n" : "stop\n").utf8))
        return needed
    }

    // MARK: UDP

    private func receiveQueries(listener index: Int) {
        guard let listener = listeners[index] else { return }
        let zone = names.listeners[listener.address]
        while true {
            for i in 0..<NameServer.batch {
                vectors[i] = iovec(iov_base: receive + i * NameServer.bufferSize, iov_len: NameServer.bufferSize)
                messages[i].msg_hdr = msghdr(msg_name: peers + i, msg_namelen: socklen_t(MemoryLayout<sockaddr_storage>.size),
                                             msg_iov: vectors + i, msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0)
            }
            let count = csock_recvmmsg(listener.udp, messages, UInt32(NameServer.batch), Int32(MSG_DONTWAIT))
            guard count > 0 else { return }
            var answers = 0
            for i in 0..<Int(count) {
                let packet = UnsafeRawBufferPointer(start: receive + i * NameServer.bufferSize, count: Int(messages[i].msg_len))
                let out = UnsafeMutableRawBufferPointer(start: send + answers * NameServer.bufferSize, count: NameServer.bufferSize)
                let length = answer(packet, from: peers + i, peerLength: messages[i].msg_hdr.msg_namelen, zone: zone,
                                    listener: index, out: out, udp: true)
                guard length > 0 else { continue }
                replyVectors[answers] = iovec(iov_base: out.baseAddress, iov_len: length)
                replies[answers].msg_hdr = msghdr(msg_name: peers + i, msg_namelen: messages[i].msg_hdr.msg_namelen,
                                                  msg_iov: replyVectors + answers, msg_iovlen: 1, msg_control: nil,
                                                  msg_controllen: 0, msg_flags: 0)
                answers += 1
            }
            if answers > 0 { _ = csock_sendmmsg(listener.udp, replies, UInt32(answers), Int32(MSG_DONTWAIT)) }
            if Int(count) < NameServer.batch { return }
        }
    }

    /// The answer to one query into `out`: its length, or 0 for none now (dropped, or
    /// forwarded upstream).
    private func answer(_ packet: UnsafeRawBufferPointer, from peer: UnsafeMutablePointer<sockaddr_storage>, peerLength: socklen_t,
                        zone: Int?, listener: Int, out: UnsafeMutableRawBufferPointer, udp: Bool) -> Int {
        guard let client = SocketAddress(peer.pointee) else { return 0 }
        let result = NameServer.resolve(packet, client: client.ip, zone: zone, names: names, nameBuffer: nameBuffer, out: out,
                                        limit: udp ? nil : out.count)
        switch result {
        case .answered(let length): return length
        case .dropped: return 0
        case .forward(let upstreams):
            forward(packet, upstreams: upstreams.isEmpty ? self.upstreams : upstreams, listener: listener, client: peer, clientLength: peerLength)
            return 0
        }
    }

    enum Resolution: Equatable {
        case answered(Int)
        case dropped
        /// To these servers (empty: the host's).
        case forward([SocketAddress])
    }

    /// What to do with a query from `client` arriving at `zone`'s address: an answer written
    /// into `out`, nothing, or forwarding. `limit`: the size the transport takes (nil: UDP's,
    /// from the query's EDNS offer or 512). Shared by the UDP loop and TCP threads.
    static func resolve(_ packet: UnsafeRawBufferPointer, client: IPAddress, zone: Int?, names: CompiledNames,
                        nameBuffer: UnsafeMutableRawBufferPointer, out: UnsafeMutableRawBufferPointer, limit: Int?) -> Resolution {
        let query: DNSQuery
        switch DNSQuery.parse(packet, name: nameBuffer) {
        case .success(let parsed): query = parsed
        case .failure(.ignore): return .dropped
        case .failure(.malformed(let id, let flags)):
            // FORMERR with the header alone.
            guard out.count >= DNS.headerSize else { return .dropped }
            out.storeUInt16(id, at: 0)
            out.storeUInt16(DNS.Flag.response | (flags & (DNS.Flag.opcodeMask | DNS.Flag.recursionDesired)) | DNS.RCode.formatError.rawValue, at: 2)
            for offset in stride(from: 4, to: 12, by: 2) { out.storeUInt16(0, at: offset) }
            return .answered(DNS.headerSize)
        }
        let size = limit ?? Int(query.ednsPayload ?? 512)
        func reply(_ rcode: DNS.RCode, authoritative: Bool = true) -> Resolution {
            var writer = DNSAnswerWriter(into: out, query: query, packet: packet, rcode: rcode, authoritative: authoritative, limit: size)
            return .answered(writer.finish())
        }
        guard let zone, let zones = names.zones(for: client, askingAt: zone) else { return reply(.refused, authoritative: false) }
        guard query.opcode == 0 else { return reply(.notImplemented, authoritative: false) }
        guard query.class == DNS.Class.internet || query.class == DNS.Class.any else {
            return .forward(names.clients[client]?.upstreams ?? [])
        }
        let length = CompiledNames.stripSearchDomain(nameBuffer, length: query.nameLength)
        let name = UnsafeRawBufferPointer(rebasing: nameBuffer[0..<length])
        let candidates = names.candidates(name)
        if candidates.contains(where: { names.matches($0, name, in: zones) }) {
            var writer = DNSAnswerWriter(into: out, query: query, packet: packet, rcode: .noError, authoritative: true, limit: size)
            for index in candidates where names.matches(index, name, in: zones) {
                let entry = names.entries[index]
                if query.type == DNS.RecordType.a || query.type == DNS.RecordType.any {
                    for address in entry.v4 { address.withUnsafeBytes { writer.add(type: DNS.RecordType.a, ttl: 0, data: $0) } }
                }
                if query.type == DNS.RecordType.aaaa || query.type == DNS.RecordType.any {
                    for address in entry.v6 { address.withUnsafeBytes { writer.add(type: DNS.RecordType.aaaa, ttl: 0, data: $0) } }
                }
            }
            return .answered(writer.finish())  // no record of the type: NODATA
        }
        if query.type == DNS.RecordType.ptr || query.type == DNS.RecordType.any, let address = DNSName.reverseAddress(name),
           zones.contains(where: { names.zones[$0].subnets.contains { $0.contains(address) } }) {
            // A reverse name of one of the client's networks: ours to answer, or to deny.
            let targets = (names.reverse[address] ?? []).filter { zones.contains($0.zone) }
            guard !targets.isEmpty else { return reply(.nameError) }
            var writer = DNSAnswerWriter(into: out, query: query, packet: packet, rcode: .noError, authoritative: true, limit: size)
            for target in targets { target.name.withUnsafeBytes { writer.add(type: DNS.RecordType.ptr, ttl: 0, data: $0) } }
            return .answered(writer.finish())
        }
        // A single label is a container's name or nothing (and no upstream knows it); a
        // search domain of ours, the same.
        if DNSName.labelCount(name) <= 1 || length != query.nameLength { return reply(.nameError) }
        return .forward(names.clients[client]?.upstreams ?? [])
    }

    // MARK: Forwarding

    private func forward(_ packet: UnsafeRawBufferPointer, upstreams: [SocketAddress], listener: Int,
                         client: UnsafeMutablePointer<sockaddr_storage>, clientLength: socklen_t) {
        guard !upstreams.isEmpty, let slot = freePending.popLast() ?? (pending.count < NameServer.maxPending ? newSlot() : nil) else {
            failForward(packet, listener: listener, client: client, clientLength: clientLength)
            return
        }
        pending[slot].listener = listener
        pending[slot].client = client.pointee
        pending[slot].clientLength = clientLength
        pending[slot].upstreams = upstreams
        pending[slot].tries = 0
        // The slot's buffer is kept from one query to the next: no allocation once it has grown.
        pending[slot].query.removeAll(keepingCapacity: true)
        pending[slot].query.append(contentsOf: packet)
        tryUpstream(slot)
    }

    private func newSlot() -> Int {
        pending.append(Pending())
        return pending.count - 1
    }

    /// Sends the slot's query to its next upstream; SERVFAIL to the client when none is left.
    private func tryUpstream(_ slot: Int) {
        if pending[slot].socket >= 0 { close(pending[slot].socket); pending[slot].socket = -1 }
        while pending[slot].tries < NameServer.maxTries {
            let upstream = pending[slot].upstreams[pending[slot].tries % pending[slot].upstreams.count]
            pending[slot].tries += 1
            let fd = socket(upstream.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            let sent = upstream.withSockaddr { connect(fd, $0, $1) } == 0
                && pending[slot].query.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, 0) }) == pending[slot].query.count
            guard sent else { close(fd); continue }
            pending[slot].socket = fd
            pending[slot].generation &+= 1
            pending[slot].deadline = monotonicNanoseconds() + NameServer.tryTimeout
            watch(fd, NameServer.token(.upstream, slot, generation: pending[slot].generation))
            return
        }
        let item = pending[slot]
        item.query.withUnsafeBytes { query in
            var client = item.client
            failForward(query, listener: item.listener, client: &client, clientLength: item.clientLength)
        }
        release(slot)
    }

    private func receiveUpstream(slot: Int, generation: UInt32) {
        guard slot < pending.count, pending[slot].socket >= 0, pending[slot].generation & 0xff_ffff == generation else { return }
        let n = recv(pending[slot].socket, receive, NameServer.bufferSize, Int32(MSG_DONTWAIT))
        let reply = UnsafeRawBufferPointer(start: receive, count: max(0, n))
        // Only the answer to our query: same ID, a response.
        guard n >= DNS.headerSize, reply.uint16(at: 2) & DNS.Flag.response != 0,
              pending[slot].query.count >= 2, reply.uint16(at: 0) == UInt16(pending[slot].query[0]) << 8 | UInt16(pending[slot].query[1]) else {
            if n < 0 && errno == EAGAIN { return }
            return tryUpstream(slot)  // refused (ICMP) or garbage: the next upstream
        }
        if let listener = listeners[pending[slot].listener] {
            var client = pending[slot].client
            _ = withUnsafePointer(to: &client) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(listener.udp, receive, n, Int32(MSG_DONTWAIT), $0, pending[slot].clientLength)
                }
            }
        }
        release(slot)
    }

    private func sweepPending(now: UInt64) {
        for slot in pending.indices where pending[slot].socket >= 0 && pending[slot].deadline <= now { tryUpstream(slot) }
    }

    private func release(_ slot: Int) {
        if pending[slot].socket >= 0 { close(pending[slot].socket) }
        pending[slot].socket = -1
        pending[slot].upstreams = []
        freePending.append(slot)
    }

    /// SERVFAIL for a query no upstream answered.
    private func failForward(_ query: UnsafeRawBufferPointer, listener: Int, client: UnsafeMutablePointer<sockaddr_storage>,
                             clientLength: socklen_t) {
        guard let socket = listeners[listener]?.udp else { return }
        let out = UnsafeMutableRawBufferPointer(start: send, count: NameServer.bufferSize)
        guard case .success(let parsed) = DNSQuery.parse(query, name: nameBuffer) else { return }
        var writer = DNSAnswerWriter(into: out, query: parsed, packet: query, rcode: .serverFailure, authoritative: false,
                                     limit: Int(parsed.ednsPayload ?? 512))
        let length = writer.finish()
        _ = client.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socket, send, length, Int32(MSG_DONTWAIT), $0, clientLength) }
    }

    // MARK: TCP

    private func acceptTCP(listener index: Int) {
        guard let listener = listeners[index] else { return }
        while true {
            let fd = csock_accept_nonblocking(listener.tcp, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, 0)  // the connection's thread blocks, under timeouts
            guard tcpConnections.value.add(1, ordering: .relaxed).newValue <= NameServer.maxTCPConnections else {
                tcpConnections.value.subtract(1, ordering: .relaxed)
                close(fd)
                continue
            }
            let connection = TCPConnection(fd: fd, address: listener.address, shared: shared, upstreams: upstreams,
                                           count: tcpConnections)
            do {
                try connection.start()
            } catch {
                tcpConnections.value.subtract(1, ordering: .relaxed)
                close(fd)
            }
        }
    }
}
