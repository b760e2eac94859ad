import Glibc
import Netlink

/// A socket for unit tests: records every datagram sent and answers each message with an
/// acknowledgement, or with whatever `responder` returns for it.
public final class MockNetlinkSocket: NetlinkSocket {
    /// Each request message sent, in order.
    public private(set) var sent: [NetlinkMessage] = []
    /// Each datagram as sent (several messages may share one).
    public private(set) var datagrams: [[UInt8]] = []
    /// Each datagram handed to `sendDetached`: nothing answers them.
    public private(set) var detached: [[UInt8]] = []
    /// Returns the reply messages for one request; nil means a plain acknowledgement.
    public var responder: ((NetlinkMessage) -> [NetlinkMessage]?)?
    private var pending: [[UInt8]] = []

    public init() {}

    public func send(_ datagram: [UInt8]) throws {
        datagrams.append(datagram)
        for message in try NetlinkMessage.parse(datagram) {
            sent.append(message)
            let replies = responder?(message) ?? [MockNetlinkSocket.ack(message)]
            pending.append(replies.flatMap { $0.encoded() })
        }
    }

    public func sendDetached(_ datagram: [UInt8], lockDirectory: String) throws {
        detached.append(datagram)
    }

    public func receive() throws -> [UInt8] {
        guard !pending.isEmpty else { throw NetlinkError(operation: "mock socket has no reply", code: EAGAIN) }
        return pending.removeFirst()
    }

    public static func ack(_ request: NetlinkMessage, error: Int32 = 0) -> NetlinkMessage {
        var payload: [UInt8] = []
        withUnsafeBytes(of: -error) { payload.append(contentsOf: $0) }
        payload.append(contentsOf: [UInt8](repeating: 0, count: 16))
        return NetlinkMessage(type: NetlinkMessageType.error, flags: 0, sequence: request.sequence, payload: payload)
    }
}

extension NetlinkMessage {
    /// Encodes the message back into wire form (used by the mock socket).
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt32(16 + payload.count)) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: type) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: flags) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: sequence) { out.append(contentsOf: $0) }
        out.append(contentsOf: [0, 0, 0, 0])
        out.append(contentsOf: payload)
        while out.count % 4 != 0 { out.append(0) }
        return out
    }
}
