import Netlink

/// For the fuzz target only (Fuzz/, `fuzz-inputs`): a datagram from nftables' notification
/// group or a conntrack dump, through the decoders that read them.
@_spi(Fuzzing) public enum FirewallFuzzing {
    public static func exercise(_ datagram: [UInt8]) {
        guard let messages = try? NetlinkMessage.parse(datagram) else { return }
        for message in messages {
            _ = NftMonitor.event(message)
            _ = ConntrackClient.entry(message)
        }
    }
}
