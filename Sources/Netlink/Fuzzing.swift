/// For the fuzz target only (Fuzz/, `fuzz-inputs`): a datagram as a netlink socket would
/// return it, through the parser and every decoder of rtnetlink replies.
@_spi(Fuzzing) public enum NetlinkFuzzing {
    public static func exercise(_ datagram: [UInt8]) {
        guard let messages = try? NetlinkMessage.parse(datagram) else { return }
        for message in messages {
            _ = message.errorCode
            _ = Link(message)
            _ = InterfaceAddress(message)
            _ = Route(message)
        }
    }
}
