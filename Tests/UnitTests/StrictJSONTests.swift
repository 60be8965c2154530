@testable import API
import ClusterMetadata
import Sharding
import Testing

@Suite("Strict JSON parser and request checks")
struct StrictJSONTests {
    static func parse(_ text: String) throws(StrictJSONError) -> StrictJSON {
        try StrictJSONParser.parse(Array(text.utf8))
    }

    @Test("numbers keep their text: 7 is a whole number, 7.0, 7e0 and -0.5 are not")
    func numbers() throws {
        #expect(try Self.parse("7").integerLiteral == "7")
        #expect(try Self.parse("-12").integerLiteral == "-12")
        #expect(try Self.parse("7.0") == .number("7.0"))
        #expect(try Self.parse("7.0").integerLiteral == nil)
        #expect(try Self.parse("7e0").integerLiteral == nil)
        #expect(try Self.parse("-0.5E+3") == .number("-0.5E+3"))
        #expect(try Self.parse("\"7\"").integerLiteral == nil)
    }

    @Test("values, escapes and surrogate pairs decode")
    func values() throws {
        let value = try Self.parse(#" {"a":[true,false,null,{}],"b":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"} "#)
        #expect(value == .object(["a": .array([.bool(true), .bool(false), .null, .object([:])]),
                                  "b": .string("x\"\\/\u{8}\u{c}\n\r\té😀")]))
    }

    @Test("a member named twice is refused with its name, also when spelt with an escape")
    func duplicates() {
        for text in [#"{"amount":"1.00","amount":"1000.00"}"#, #"{"amount":1,"\u0061mount":2}"#, #"{"x":{"a":1,"a":1}}"#] {
            #expect(throws: StrictJSONError.self) { try Self.parse(text) }
            do throws(StrictJSONError) { _ = try Self.parse(text) } catch {
                if case .duplicateKey(let key) = error.kind { #expect(key == "amount" || key == "a") } else { Issue.record("\(error)") }
            }
        }
    }

    @Test("nesting is refused at the limit without descending further")
    func depth() {
        let depth = 100_000
        let bytes = Array(repeating: UInt8(ascii: "["), count: depth) + Array(repeating: UInt8(ascii: "]"), count: depth)
        do throws(StrictJSONError) { _ = try StrictJSONParser.parse(bytes); Issue.record("parsed") } catch {
            #expect(error.kind == .tooDeep(limit: StrictJSONParser.defaultMaxDepth))
            #expect(error.offset == StrictJSONParser.defaultMaxDepth)
        }
        let limit = StrictJSONParser.defaultMaxDepth
        #expect(throws: Never.self) { try StrictJSONParser.parse(Array((String(repeating: "[", count: limit) + String(repeating: "]", count: limit)).utf8)) }
        #expect(throws: StrictJSONError.self) { try StrictJSONParser.parse(Array((String(repeating: "[", count: limit + 1) + String(repeating: "]", count: limit + 1)).utf8)) }
    }

    @Test("the nesting scanner counts brackets outside strings only, across chunks")
    func nestingScanner() {
        var scanner = NestingScanner(limit: 2)
        let first = scanner.exceedsLimit(after: Array(#"{"a":"[[[{{{\"[[","b":["#.utf8))
        #expect(!first)
        #expect(scanner.depth == 2)
        let second = scanner.exceedsLimit(after: Array("]".utf8))
        #expect(!second)
        let third = scanner.exceedsLimit(after: Array("[[1]]}".utf8))
        #expect(third)
        var deep = NestingScanner()
        let deepExceeds = deep.exceedsLimit(after: Array(repeating: UInt8(ascii: "["), count: 100_000))
        #expect(deepExceeds)
        #expect(deep.depth == StrictJSONParser.defaultMaxDepth + 1)
    }

    @Test("not JSON, or not UTF-8, is malformed", arguments: [
        "", " ", "{", "}", "[1,]", "[01]", "[1.]", "[.5]", "[-]", "[1e]", "[+1]", "[tru]", "[nul]", "\"a", "\"\\x\"", "\"\\u12\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "{\"a\" 1}", "{a:1}", "[1 2]", "1 2", "[\"\u{1}\"]", "\u{FEFF}{}",
    ])
    func malformed(_ text: String) {
        #expect(throws: StrictJSONError.self) { try Self.parse(text) }
    }

    @Test("invalid UTF-8 inside a string is refused")
    func invalidUTF8() {
        for bad: [UInt8] in [[0xC3, 0x28], [0xED, 0xA0, 0x80], [0xC0, 0xAF], [0xFF]] {
            #expect(throws: StrictJSONError.self) { try StrictJSONParser.parse([UInt8(ascii: "\"")] + bad + [UInt8(ascii: "\"")]) }
        }
    }

    @Test("GET /v1/accounts: an unregistered node or unknown range is a 404 with a stable code; before the metadata loads it is not_ready")
    func listTarget() throws {
        let nodes = ["node1": NodeInfo(id: "node1", host: "127.0.0.1", port: 3306, database: "bank_db")]
        let map = try RangeMap(name: "accounts", keyKind: "balance", ranges: [ShardRange(id: "r1", lowerBound: 0, upperBound: nil, node: "node1")])
        func answer(node: String? = nil, range: String? = nil, accounts: RangeMap?) -> APIError? {
            do { try BankRoutes.checkListTarget(node: node, range: range, nodes: nodes, accounts: accounts); return nil } catch {
                return error as? APIError
            }
        }
        #expect(answer(node: "node1", accounts: map) == nil)
        #expect(answer(range: "r1", accounts: map) == nil)
        let node = answer(node: "nosuch", accounts: map)
        #expect(node?.status == .notFound)
        #expect(node?.code == "unknown_node")
        #expect(node?.message == "no node nosuch is registered; GET /v1/cluster lists the nodes")
        let range = answer(range: "r9", accounts: map)
        #expect(range?.status == .notFound)
        #expect(range?.code == "unknown_range")
        #expect(answer(node: "nosuch", accounts: nil)?.code == "not_ready")
    }

    @Test("customer_name: 255 code points are fine, 256 are not, whatever String.count says")
    func customerName() throws {
        func check(_ name: String) throws -> String {
            let json = "{\"customer_name\":\"\(name)\"}"
            return try RequestBody.parse(Array(json.utf8), allowed: ["customer_name"]).customerName("customer_name")
        }
        let ok = "e" + String(repeating: "\u{301}", count: 254)
        #expect(try check(ok) == ok)
        #expect(throws: APIError.self) { try check(ok + "\u{301}") }
        #expect(try check(String(repeating: "é", count: 255)).unicodeScalars.count == 255)
        #expect(throws: APIError.self) { try check("") }
    }
}
