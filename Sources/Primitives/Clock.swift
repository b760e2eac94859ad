import Glibc

/// The monotonic clock in nanoseconds: for deadlines and intervals, never for dates.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// A moment in UTC, to the second: when a network, endpoint or container was made. Written
/// as ISO 8601 (2026-12-03T08:15:53Z) in JSON and in state, which is how every record has
/// always stored it.
public struct Timestamp: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let secondsSinceEpoch: Int64

    public init(secondsSinceEpoch: Int64) { self.secondsSinceEpoch = secondsSinceEpoch }

    public static func now() -> Timestamp { Timestamp(secondsSinceEpoch: Int64(time(nil))) }

    /// Parses 2026-12-03T08:15:53Z (fractional seconds, if any, are dropped).
    public init?(iso8601 text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.last == UInt8(ascii: "Z"), bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
              bytes[10] == UInt8(ascii: "T"), bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":") else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var value: Int64 = 0
            for byte in bytes[range] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
              let minute = number(14..<16), let second = number(17..<19), (1...12).contains(month), (1...31).contains(day),
              hour < 24, minute < 60, second < 61,
              bytes.count == 20 || (bytes[19] == UInt8(ascii: ".") && number(20..<(bytes.count - 1)) != nil) else { return nil }
        // Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's days_from_civil).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        secondsSinceEpoch = days * 86_400 + hour * 3_600 + minute * 60 + second
    }

    public var description: String {
        var seconds = time_t(secondsSinceEpoch)
        var tm = tm()
        gmtime_r(&seconds, &tm)
        var buffer = [CChar](repeating: 0, count: 32)
        strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &tm)
        return String(cBuffer: buffer)
    }

    /// Seconds from this moment until `later` (negative if `later` is earlier).
    public func seconds(until later: Timestamp) -> Int64 { later.secondsSinceEpoch - secondsSinceEpoch }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.secondsSinceEpoch < b.secondsSinceEpoch }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let parsed = Timestamp(iso8601: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an ISO 8601 time: \(text)"))
        }
        self = parsed
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// The phases of one operation and how long each took, for `--debug`: `mark` ends the
/// phase running since the last mark (or since `init`).
public struct Phases: Sendable, CustomStringConvertible {
    private var last = monotonicNanoseconds()
    private var done: [(name: String, nanoseconds: UInt64)] = []

    public init() {}

    public mutating func mark(_ name: String) {
        let now = monotonicNanoseconds()
        done.append((name, now - last))
        last = now
    }

    /// "image 1.2 ms, network 8.0 ms, ...": the phases in order.
    public var description: String {
        done.map { "\($0.name) \(Double($0.nanoseconds / 10_000) / 100) ms" }.joined(separator: ", ")
    }
}
