/// `text` as a message may show it, whatever it holds: quoted and escaped as a JSON string
/// (a name with a newline stays on one line), and cut after `limit` characters (an input of
/// megabytes is not echoed back whole).
public func quoted<S: StringProtocol>(_ text: S, limit: Int = 80) -> String {
    var out = ""
    guard text.count > limit else {
        JSON.quote(String(text), into: &out)
        return out
    }
    JSON.quote(String(text.prefix(limit)), into: &out)
    return out.dropLast() + "…\" (\(text.utf8.count) bytes)"
}

extension String {
    /// Without leading and trailing whitespace (a line read from a file, a field of a list).
    public var trimmed: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
