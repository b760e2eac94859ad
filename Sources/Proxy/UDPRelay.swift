import CSocket
import Glibc
import Primitives

/// A UDP flow: one client (address, and the local address it sent to) and the connected
/// socket that speaks for it to the backend.
struct Flow {
    var inUse = false
    var backend: Int32 = -1
    var listener = 0
    var counters: Counters?
    var client = sockaddr_storage()
    var clientLength: socklen_t = 0
    /// The address the client sent to, when the listener is on all addresses: replies
    /// must leave from it, or the client drops them.
    var local = sockaddr_storage()
    var hasLocal = false
    var lastActive: UInt64 = 0
    /// The largest datagram sent to the backend in a UDP_SEGMENT run: what fits the path
    /// MTU unfragmented (segments must). 0: none.
    var segmentLimit = 0
    var key: FlowKey?
    /// Neighbours in the worker's list of flows from least to most recently active, so the
    /// flow to evict and the idle ones are found without scanning the table.
    var older = -1
    var newer = -1
}

struct FlowKey: Hashable {
    var listener: Int
    var client: SocketAddress
    var local: IPAddress?
}

/// Preallocated recvmmsg/sendmmsg state for one worker: `batch` datagrams of up to 64 KiB
/// each way. Nothing here is allocated per datagram.
final class UDPBuffers {
    static let datagram = 65536
    /// A UDP_SEGMENT message's limits: datagrams (the kernel's UDP_MAX_SEGMENTS, 64 before
    /// Linux 6.1) and bytes (one IP packet's payload, with room for headers).
    static let maxSegments = 64
    static let maxSegmentBytes = 65000
    let batch: Int
    let data: UnsafeMutableRawPointer
    let messages: UnsafeMutablePointer<csock_mmsghdr>
    let vectors: UnsafeMutablePointer<iovec>
    let names: UnsafeMutablePointer<sockaddr_storage>
    let controls: UnsafeMutableRawPointer
    var flowOf: [Int]
    /// Datagrams in each message sent (more than one: a UDP_SEGMENT run).
    let segments: UnsafeMutablePointer<Int>

    init(batch: Int) {
        self.batch = batch
        data = UnsafeMutableRawPointer.allocate(byteCount: batch * UDPBuffers.datagram, alignment: 16)
        messages = .allocate(capacity: batch)
        vectors = .allocate(capacity: batch)
        names = .allocate(capacity: batch)
        controls = UnsafeMutableRawPointer.allocate(byteCount: batch * Int(CSOCK_PKTINFO_SPACE), alignment: 16)
        flowOf = [Int](repeating: -1, count: batch)
        segments = .allocate(capacity: batch)
    }

    deinit {
        data.deallocate(); messages.deallocate(); vectors.deallocate(); names.deallocate(); controls.deallocate()
        segments.deallocate()
    }

    func control(_ i: Int) -> UnsafeMutableRawPointer { controls + i * Int(CSOCK_PKTINFO_SPACE) }

    /// Makes message k send `count` received datagrams from i on, on a connected socket (no
    /// name, no control).
    func send(_ k: Int, datagrams i: Int, count: Int) {
        messages[k].msg_hdr = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: vectors + i, msg_iovlen: count,
                                     msg_control: nil, msg_controllen: 0, msg_flags: 0)
        segments[k] = count
    }

    /// Readies every slot to receive: full-size buffers, room for the sender and packet info.
    func prepareReceive(withNames: Bool) {
        for i in 0..<batch {
            vectors[i] = iovec(iov_base: data + i * UDPBuffers.datagram, iov_len: UDPBuffers.datagram)
            messages[i].msg_len = 0
            messages[i].msg_hdr = msghdr(
                msg_name: withNames ? UnsafeMutableRawPointer(names + i) : nil,
                msg_namelen: withNames ? socklen_t(MemoryLayout<sockaddr_storage>.size) : 0,
                msg_iov: vectors + i, msg_iovlen: 1,
                msg_control: withNames ? control(i) : nil, msg_controllen: withNames ? Int(CSOCK_PKTINFO_SPACE) : 0,
                msg_flags: 0)
        }
    }
}

extension Worker {
    /// Datagrams from clients: one recvmmsg takes a batch; consecutive datagrams of one flow
    /// go to the backend in one sendmmsg (see `send(_:on:)`).
    func receiveFromClients(listener slot: Int) {
        guard let listener = listeners[slot] else { return }
        let b = udp
        while true {
            b.prepareReceive(withNames: true)
            let count = Int(csock_recvmmsg(listener.fd, b.messages, UInt32(b.batch), Int32(MSG_DONTWAIT)))
            guard count > 0 else { return }
            let now = monotonicNanoseconds()
            var bytes: UInt64 = 0
            for i in 0..<count {
                b.flowOf[i] = flow(for: i, listener: slot, now: now) ?? -1
                b.vectors[i].iov_len = Int(b.messages[i].msg_len)
                bytes += UInt64(b.messages[i].msg_len)
            }
            listener.counters.add(.packetsIn, UInt64(count))
            listener.counters.add(.bytesIn, bytes)
            var start = 0
            while start < count {
                var end = start + 1
                while end < count && b.flowOf[end] == b.flowOf[start] { end += 1 }
                let flow = b.flowOf[start]
                if flow >= 0 {
                    let lost = send(start..<end, on: flow)
                    if lost > 0 { listener.counters.add(.failures, UInt64(lost)) }
                } else {
                    listener.counters.add(.failures, UInt64(end - start))
                }
                start = end
            }
            if count < b.batch { return }
        }
    }

    /// Sends received datagrams `range` (all of one flow) on the flow's connected socket, the
    /// same buffers; how many were not sent. A run of datagrams of one size (the last may be
    /// shorter) goes as one message with UDP_SEGMENT: the kernel routes, filters and
    /// bridges it once and cuts it into the same datagrams on the way in.
    private func send(_ range: Range<Int>, on flow: Int) -> Int {
        let b = udp
        let limit = udpSegmentation ? flows[flow].segmentLimit : 0
        // Messages are rewritten in place: message k is made from datagrams k and after.
        var out = range.lowerBound, i = range.lowerBound
        while i < range.upperBound {
            let size = b.vectors[i].iov_len
            var j = i + 1
            if size > 0 && size <= limit {
                var total = size
                while j < range.upperBound && j - i < UDPBuffers.maxSegments {
                    let next = b.vectors[j].iov_len
                    guard next > 0 && next <= size && total + next <= UDPBuffers.maxSegmentBytes else { break }
                    total += next
                    j += 1
                    if next < size { break }  // only the last may be shorter
                }
            }
            b.send(out, datagrams: i, count: j - i)
            if j - i > 1 { csock_set_udp_segment(&b.messages[out].msg_hdr, b.control(out), UInt16(size)) }
            out += 1
            i = j
        }
        let first = range.lowerBound
        let sent = Int(csock_sendmmsg(flows[flow].backend, b.messages + first, UInt32(out - first), Int32(MSG_DONTWAIT)))
        if (sent == -Int(EIO) || sent == -Int(EINVAL)) && b.segments[first] > 1 {
            // Refused (no checksum offload toward the backend, say): one message per
            // datagram, from now on.
            udpSegmentation = false
            for i in range { b.send(i, datagrams: i, count: 1) }
            return range.count - max(0, Int(csock_sendmmsg(flows[flow].backend, b.messages + first, UInt32(range.count), Int32(MSG_DONTWAIT))))
        }
        var delivered = 0
        for k in 0..<max(0, sent) { delivered += b.segments[first + k] }
        return range.count - delivered
    }

    /// The flow for received datagram i, made if new; nil if none can be made.
    private func flow(for i: Int, listener listenerSlot: Int, now: UInt64) -> Int? {
        guard let listener = listeners[listenerSlot], let client = SocketAddress(udp.names[i]) else { return nil }
        var local = sockaddr_storage()
        let hasLocal = listener.route.listen.isWildcard && csock_pktinfo_destination(&udp.messages[i].msg_hdr, &local) == 1
        let key = FlowKey(listener: listenerSlot, client: client, local: hasLocal ? SocketAddress(local)?.ip : nil)
        if let existing = flowIndex[key] {
            touch(existing, now: now)  // now, not after the send: this batch uses it
            return existing
        }
        // Full: the least recently used flow goes, unless it is in use by this very batch
        // (its slot would be reused under datagrams already routed to it): then drop this one.
        if flowIndex.count >= options.maxFlows && !evictOldestFlow(before: now) { return nil }
        // A flow keeps its descriptor: none while the reserve is out (see DescriptorReserve).
        guard let permit = reserve.permit() else { return nil }
        let fd = socket(listener.route.backend.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard reserve.kept(permit) else { close(fd); return nil }
        var target = listener.backend
        guard withUnsafePointer(to: &target, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, listener.backendLength) } }) == 0 else {
            close(fd)
            return nil
        }
        // Segments must each fit the path unfragmented: the MTU less the IP and UDP headers.
        let v6 = listener.route.backend.family == AF_INET6
        let mtu = Int(csock_path_mtu(fd, v6 ? 1 : 0))
        let slot = freeFlows.popLast() ?? { flows.append(Flow()); return flows.count - 1 }()
        flows[slot] = Flow(inUse: true, backend: fd, listener: listenerSlot, counters: listener.counters, client: udp.names[i], clientLength: udp.messages[i].msg_hdr.msg_namelen,
                           local: local, hasLocal: hasLocal, lastActive: now, segmentLimit: max(0, mtu - (v6 ? 48 : 28)), key: key)
        flowIndex[key] = slot
        appendNewest(slot)
        watch(fd, Worker.token(.flow, slot), Worker.edgeIn)
        listener.counters.add(.connections)
        listener.counters.add(.active)
        return slot
    }

    /// Replies from the backend, back to the client from the address it wrote to.
    func receiveFromBackend(flow slot: Int) {
        guard slot < flows.count, flows[slot].inUse, let listener = listeners[flows[slot].listener] else { return }
        let b = udp
        while true {
            b.prepareReceive(withNames: false)
            let count = Int(csock_recvmmsg(flows[slot].backend, b.messages, UInt32(b.batch), Int32(MSG_DONTWAIT)))
            if count == -Int(ECONNREFUSED) { continue }  // an ICMP error for an earlier datagram
            guard count > 0 else { return }
            // Every reply of the batch goes to the same client from the same address: one
            // destination and one packet-info block, shared by all the messages.
            b.names[0] = flows[slot].client
            if flows[slot].hasLocal {
                withUnsafePointer(to: &flows[slot].local) { csock_set_pktinfo_source(&b.messages[0].msg_hdr, b.control(0), $0) }
            }
            var bytes: UInt64 = 0
            for i in 0..<count {
                b.vectors[i].iov_len = Int(b.messages[i].msg_len)
                bytes += UInt64(b.messages[i].msg_len)
                b.messages[i].msg_hdr.msg_name = UnsafeMutableRawPointer(b.names)
                b.messages[i].msg_hdr.msg_namelen = flows[slot].clientLength
                if flows[slot].hasLocal && i > 0 {
                    b.messages[i].msg_hdr.msg_control = b.messages[0].msg_hdr.msg_control
                    b.messages[i].msg_hdr.msg_controllen = b.messages[0].msg_hdr.msg_controllen
                }
            }
            listener.counters.add(.packetsOut, UInt64(count))
            listener.counters.add(.bytesOut, bytes)
            let sent = csock_sendmmsg(listener.fd, b.messages, UInt32(count), Int32(MSG_DONTWAIT))
            if sent < count { listener.counters.add(.failures, UInt64(count - max(0, Int(sent)))) }
            touch(slot, now: monotonicNanoseconds())
            if count < b.batch { return }
        }
    }

    /// Closes the flows idle for the timeout: the oldest end of the list, up to the first
    /// that is not.
    func sweepIdleFlows(now: UInt64) {
        while oldestFlow >= 0 && flows[oldestFlow].lastActive + options.udpIdleTimeout <= now { closeFlow(oldestFlow) }
    }

    private func evictOldestFlow(before now: UInt64) -> Bool {
        guard oldestFlow >= 0, flows[oldestFlow].lastActive < now else { return false }
        flows[oldestFlow].counters?.add(.failures)
        closeFlow(oldestFlow)
        return true
    }

    /// Marks a flow active now: it moves to the newest end of the list. `now` never goes
    /// back, so the list stays in order of last activity.
    private func touch(_ slot: Int, now: UInt64) {
        flows[slot].lastActive = now
        guard slot != newestFlow else { return }
        unlink(slot)
        appendNewest(slot)
    }

    private func appendNewest(_ slot: Int) {
        flows[slot].older = newestFlow
        flows[slot].newer = -1
        if newestFlow >= 0 { flows[newestFlow].newer = slot } else { oldestFlow = slot }
        newestFlow = slot
    }

    private func unlink(_ slot: Int) {
        let older = flows[slot].older, newer = flows[slot].newer
        if older >= 0 { flows[older].newer = newer } else { oldestFlow = newer }
        if newer >= 0 { flows[newer].older = older } else { newestFlow = older }
        flows[slot].older = -1
        flows[slot].newer = -1
    }

    func closeFlow(_ slot: Int) {
        unlink(slot)
        close(flows[slot].backend)
        if let key = flows[slot].key { flowIndex[key] = nil }
        flows[slot].counters?.subtract(.active)
        flows[slot] = Flow()
        freeFlows.append(slot)
    }

    func closeFlows(of listener: Int) {
        for slot in flows.indices where flows[slot].inUse && flows[slot].listener == listener { closeFlow(slot) }
    }
}
