import Primitives
import Testing

@Suite("JSON")
struct JSONTests {
    @Test("Parses and prints every kind of value, keeping key order and escapes")
    func roundTrip() throws {
        let text = #"{"b":1,"a":[true,false,null,-1.5e3,"x\"y\\z\n\u00e9\ud83d\ude00"],"c":{}}"#
        let value = try JSON.parse(text)
        #expect(value["b"]?.int == 1)
        #expect(value["a"]?.array?.count == 5)
        #expect(value["a"]?.array?[4].string == "x\"y\\z\né😀")
        #expect(value.text == #"{"b":1,"a":[true,false,null,-1.5e3,"x\"y\\z\né😀"],"c":{}}"#)
        #expect(try JSON.parse(value.text) == value)
        #expect(JSON.number("8080.0").int == 8080 && JSON.number("80.5").int == nil)
    }

    @Test("Refuses malformed text", arguments: ["", "{", "{\"a\":}", "[1,]", "{\"a\":1} x", "'a'", "01", "\"\\x\"", "\"\\ud800\"", "tru", "{1:2}", "\"a\nb\""])
    func malformed(_ text: String) {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(text) }
    }
}

@Suite("Echoing input in messages")
struct QuotedTests {
    @Test("one line, escaped, bounded")
    func quoting() {
        #expect(quoted("web") == #""web""#)
        #expect(quoted("a\nb\t\"c\"\\") == #""a\nb\t\"c\"\\""#)
        #expect(quoted("bell\u{7}") == #""bell\u0007""#)
        let long = quoted(String(repeating: "x", count: 10_000), limit: 8)
        #expect(long == #""xxxxxxxx…" (10000 bytes)"#)
        #expect(quoted("") == #""""#)
    }
}
