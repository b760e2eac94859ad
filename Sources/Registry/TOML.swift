/// The part of TOML v1.0 that registries.conf uses: tables, arrays of tables, dotted and
/// quoted keys, strings (basic and literal, one line), booleans, integers, arrays and inline
/// tables. Anything else is refused with its line number rather than guessed at.
enum TOMLValue: Equatable {
    case string(String)
    case bool(Bool)
    case integer(Int)
    case array([TOMLValue])
    case table([String: TOMLValue])

    var string: String? { if case .string(let s) = self { return s } else { return nil } }
    var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    var array: [TOMLValue]? { if case .array(let a) = self { return a } else { return nil } }
    var table: [String: TOMLValue]? { if case .table(let t) = self { return t } else { return nil } }
}

struct TOMLError: Error, Equatable {
    let line: Int
    let reason: String
}

struct TOMLParser {
    private let bytes: [UInt8]
    private var i = 0
    private var line = 1

    static func parse(_ text: String) throws(TOMLError) -> [String: TOMLValue] {
        var parser = TOMLParser(bytes: Array(text.utf8))
        return try parser.document()
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private func fail(_ reason: String) -> TOMLError { TOMLError(line: line, reason: reason) }

    private mutating func document() throws(TOMLError) -> [String: TOMLValue] {
        var root: [String: TOMLValue] = [:]
        var current: [String] = []      // the table header in force
        var currentIsArray = false
        while true {
            skipBlank(newlines: true)
            guard i < bytes.count else { return root }
            if bytes[i] == UInt8(ascii: "[") {
                let isArray = i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "[")
                i += isArray ? 2 : 1
                skipBlank(newlines: false)
                let path = try key()
                guard expect("]") && (!isArray || expect("]")) else { throw fail("a table header is not closed") }
                current = path
                currentIsArray = isArray
                if isArray {
                    try update(&root, path[...]) { (value: inout TOMLValue?) throws(TOMLError) in
                        var items = value?.array ?? []
                        if value != nil && value?.array == nil { throw fail("\(path.joined(separator: ".")) is not an array of tables") }
                        items.append(.table([:]))
                        value = .array(items)
                    }
                } else {
                    try update(&root, path[...]) { (value: inout TOMLValue?) throws(TOMLError) in
                        if value == nil { value = .table([:]) } else if value?.table == nil { throw fail("\(path.joined(separator: ".")) is defined twice") }
                    }
                }
            } else {
                let path = try key()
                skipBlank(newlines: false)
                guard expect("=") else { throw fail("expected = after a key") }
                skipBlank(newlines: false)
                let v = try value()
                let full = current + path
                _ = currentIsArray
                try update(&root, full[...]) { (slot: inout TOMLValue?) throws(TOMLError) in
                    guard slot == nil else { throw fail("\(full.joined(separator: ".")) is defined twice") }
                    slot = v
                }
            }
            skipBlank(newlines: false)
            guard i >= bytes.count || bytes[i] == 10 else { throw fail("unexpected text after a value") }
        }
    }

    /// Applies `change` to the value at `path`, descending into the last table of an array
    /// of tables as TOML does.
    private func update(_ table: inout [String: TOMLValue], _ path: ArraySlice<String>,
                        _ change: (inout TOMLValue?) throws(TOMLError) -> Void) throws(TOMLError) {
        let head = path.first!
        if path.count == 1 { var slot = table[head]; try change(&slot); table[head] = slot; return }
        switch table[head] {
        case nil:
            var inner: [String: TOMLValue] = [:]
            try update(&inner, path.dropFirst(), change)
            table[head] = .table(inner)
        case .table(var inner)?:
            try update(&inner, path.dropFirst(), change)
            table[head] = .table(inner)
        case .array(var items)? where items.last?.table != nil:
            var inner = items.removeLast().table!
            try update(&inner, path.dropFirst(), change)
            items.append(.table(inner))
            table[head] = .array(items)
        default:
            throw fail("\(head) is not a table")
        }
    }

    private mutating func key() throws(TOMLError) -> [String] {
        var parts: [String] = []
        repeat {
            skipBlank(newlines: false)
            guard i < bytes.count else { throw fail("expected a key") }
            if bytes[i] == UInt8(ascii: "\"") || bytes[i] == UInt8(ascii: "'") {
                parts.append(try quotedString())
            } else {
                let start = i
                while i < bytes.count, isBareKey(bytes[i]) { i += 1 }
                guard i > start else { throw fail("expected a key") }
                parts.append(String(decoding: bytes[start..<i], as: UTF8.self))
            }
            skipBlank(newlines: false)
        } while expect(".")
        return parts
    }

    private mutating func value() throws(TOMLError) -> TOMLValue {
        guard i < bytes.count else { throw fail("expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            return .string(try quotedString())
        case UInt8(ascii: "["):
            i += 1
            var items: [TOMLValue] = []
            while true {
                skipBlank(newlines: true)
                if expect("]") { return .array(items) }
                items.append(try value())
                skipBlank(newlines: true)
                if expect(",") { continue }
                guard expect("]") else { throw fail("expected , or ] in an array") }
                return .array(items)
            }
        case UInt8(ascii: "{"):
            i += 1
            var table: [String: TOMLValue] = [:]
            skipBlank(newlines: false)
            if expect("}") { return .table(table) }
            while true {
                let path = try key()
                guard expect("=") else { throw fail("expected = in an inline table") }
                skipBlank(newlines: false)
                let v = try value()
                try update(&table, path[...]) { (slot: inout TOMLValue?) throws(TOMLError) in slot = v }
                skipBlank(newlines: false)
                if expect(",") { skipBlank(newlines: false); continue }
                guard expect("}") else { throw fail("expected , or } in an inline table") }
                return .table(table)
            }
        default:
            let start = i
            while i < bytes.count, isBareKey(bytes[i]) || bytes[i] == UInt8(ascii: "+") { i += 1 }
            let word = String(decoding: bytes[start..<i], as: UTF8.self)
            if word == "true" { return .bool(true) }
            if word == "false" { return .bool(false) }
            if let n = Int(word.replacingOccurrences("_", "")) { return .integer(n) }
            throw fail(word.isEmpty ? "expected a value" : "\(word) is not a value this reader takes (string, boolean, integer, array, table)")
        }
    }

    private mutating func quotedString() throws(TOMLError) -> String {
        let quote = bytes[i]
        if i + 2 < bytes.count && bytes[i + 1] == quote && bytes[i + 2] == quote { throw fail("multi-line strings are not supported") }
        i += 1
        var out: [UInt8] = []
        while i < bytes.count {
            let c = bytes[i]
            i += 1
            if c == quote { return String(decoding: out, as: UTF8.self) }
            if c == 10 { break }
            if c == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") {
                guard i < bytes.count else { break }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "n"): out.append(10)
                case UInt8(ascii: "t"): out.append(9)
                case UInt8(ascii: "r"): out.append(13)
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(e)
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let count = e == UInt8(ascii: "u") ? 4 : 8
                    guard i + count <= bytes.count, let code = UInt32(String(decoding: bytes[i..<i + count], as: UTF8.self), radix: 16),
                          let scalar = Unicode.Scalar(code) else { throw fail("a bad \\u escape") }
                    out += Array(String(Character(scalar)).utf8)
                    i += count
                default: throw fail("an unknown escape \\\(Character(Unicode.Scalar(e)))")
                }
                continue
            }
            out.append(c)
        }
        throw fail("a string is not closed on its line")
    }

    private mutating func expect(_ c: Character) -> Bool {
        guard i < bytes.count, bytes[i] == c.asciiValue! else { return false }
        i += 1
        return true
    }

    /// Spaces, tabs and comments; line ends too when `newlines`.
    private mutating func skipBlank(newlines: Bool) {
        while i < bytes.count {
            switch bytes[i] {
            case 32, 9, 13: i += 1
            case 10 where newlines: i += 1; line += 1
            case UInt8(ascii: "#"): while i < bytes.count && bytes[i] != 10 { i += 1 }
            default: return
            }
        }
    }

    private func isBareKey(_ c: UInt8) -> Bool {
        (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 45 || c == 95
    }
}

extension String {
    func replacingOccurrences(_ target: Character, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
