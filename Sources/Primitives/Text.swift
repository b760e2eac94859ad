/// `text` as a message may show it, whatever it holds: in double quotes, control characters,
/// quotes and backslashes escaped (a name with a newline stays on one line), and cut after
/// `limit` characters (an input of megabytes is not echoed back whole).
public func quoted<S: StringProtocol>(_ text: S, limit: Int = 80) -> String {
    var out = "\""
    var count = 0
    for character in text {
        if count == limit {
            out += "…\" (\(text.utf8.count) bytes)"
            return out
        }
        count += 1
        switch character {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if character.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || (0x80..<0xa0).contains($0.value) }) {
                out += character.unicodeScalars.map { "\\u{\(String($0.value, radix: 16))}" }.joined()
            } else {
                out.append(character)
            }
        }
    }
    return out + "\""
}
