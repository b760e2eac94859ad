import Netlink
import Primitives

/// Address allocation within one subnet. The caller holds the state database's write lock,
/// so the leases it passes in are complete and the choice cannot race another process.
enum IPAM {
    /// The first free host address after `last` (wrapping round), so that an address just
    /// released is not handed out again at once while stale ARP or conntrack entries may
    /// still point at it. Skips the network and broadcast addresses and everything in `taken`.
    static func allocate(in subnet: IPNetwork, taken: Set<IPAddress>, after last: IPAddress?) -> IPAddress? {
        let first: UInt128 = 1
        let end: UInt128 = subnet.broadcast == nil ? subnet.size - 1 : subnet.size - 2  // last usable offset
        guard end >= first else { return nil }
        let usable = end - first + 1
        let takenInside = UInt128(taken.filter { subnet.contains($0) && $0 != subnet.address && $0 != subnet.broadcast }.count)
        guard takenInside < usable else { return nil }

        var offset = first
        if let last, subnet.contains(last), let lastOffset = position(of: last, in: subnet), lastOffset >= first, lastOffset < end {
            offset = lastOffset + 1
        }
        // Among takenInside + 1 consecutive candidates at least one is free.
        for _ in 0...takenInside {
            let candidate = subnet.address.advanced(by: offset)!
            if !taken.contains(candidate) { return candidate }
            offset = offset == end ? first : offset + 1
        }
        return nil
    }

    private static func position(of ip: IPAddress, in subnet: IPNetwork) -> UInt128? {
        switch (ip, subnet.address) {
        case (.v4(let a), .v4(let b)): return UInt128(a - b)
        case (.v6(let a), .v6(let b)): return a - b
        default: return nil
        }
    }

    /// Default pools for networks created without --subnet, as Docker's defaults:
    /// 172.17.0.0/16 to 172.31.0.0/16, then 192.168.0.0/16 in /20s.
    static var defaultPools: [IPNetwork] {
        (17...31).map { IPNetwork("172.\($0).0.0/16")! } + (0..<16).map { IPNetwork("192.168.\($0 * 16).0/20")! }
    }
}
