/// A JSON value as the API reads a request body. Numbers keep the text they were sent as, so `7`,
/// `7.0` and `7e0` stay apart and nothing passes through a binary floating-point value.
enum StrictJSON: Sendable, Hashable {
    case string(String)
    /// The number's literal, e.g. `7`, `-0.5`, `1e3`.
    case number(String)
    case bool(Bool)
    case null
    case array([StrictJSON])
    case object([String: StrictJSON])

    /// The literal of a number written as a whole number: no fraction and no exponent.
    var integerLiteral: String? {
        guard case .number(let text) = self, !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) else { return nil }
        return text
    }
}

/// Why a body is not JSON the API accepts, and where (a byte offset into the body).
struct StrictJSONError: Error, Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        /// Not JSON (RFC 8259), or not UTF-8.
        case malformed(String)
        /// Arrays and objects nested deeper than the limit.
        case tooDeep(limit: Int)
        /// An object names the same member twice.
        case duplicateKey(String)
    }

    var kind: Kind
    var offset: Int

    var description: String {
        switch kind {
        case .malformed(let reason): "\(reason) at byte \(offset)"
        case .tooDeep(let limit): "arrays and objects are nested more than \(limit) deep at byte \(offset)"
        case .duplicateKey(let key): "the member \"\(key.prefix(64))\" appears twice in one object at byte \(offset)"
        }
    }
}

/// Follows the nesting depth of a JSON text as its bytes arrive (brackets inside strings do not
/// count), so that a body nested too deep is refused at its first excess byte: before the rest of it
/// is read, and whatever its size. On malformed input it may misjudge; the parser refuses that anyway.
struct NestingScanner {
    let limit: Int
    private(set) var depth = 0
    private var inString = false
    private var escaped = false

    init(limit: Int = StrictJSONParser.defaultMaxDepth) {
        self.limit = limit
    }

    /// Reads more bytes; true once the depth has gone over the limit.
    mutating func exceedsLimit(after bytes: some Sequence<UInt8>) -> Bool {
        for byte in bytes {
            if inString {
                if escaped { escaped = false }
                else if byte == UInt8(ascii: "\\") { escaped = true }
                else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > limit { return true }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return false
    }
}

/// A small RFC 8259 parser that is stricter than Foundation's decoder where a bank needs it: an object
/// that names a member twice is refused (instead of one of the values silently winning), nesting has a
/// low limit that is checked before descending (so `[[[[…` cannot exhaust the stack), strings must be
/// valid UTF-8 with well-formed escapes, and numbers are kept as text.
struct StrictJSONParser {
    /// Deep enough for any request this API defines, shallow enough that recursion is harmless.
    static let defaultMaxDepth = 32

    private let bytes: [UInt8]
    private let maxDepth: Int
    private var index = 0

    private init(bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    /// Parses exactly one JSON value, optionally surrounded by whitespace.
    static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(StrictJSONError) -> StrictJSON {
        var parser = StrictJSONParser(bytes: bytes, maxDepth: maxDepth)
        parser.skipWhitespace()
        guard parser.index < bytes.count else { throw parser.failure(.malformed("the body is empty")) }
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.failure(.malformed("unexpected data after the JSON value")) }
        return value
    }

    private func failure(_ kind: StrictJSONError.Kind) -> StrictJSONError {
        StrictJSONError(kind: kind, offset: index)
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 || bytes[index] == 0x0A || bytes[index] == 0x0D {
            index += 1
        }
    }

    /// `depth` counts the arrays and objects around the value.
    private mutating func value(depth: Int) throws(StrictJSONError) -> StrictJSON {
        skipWhitespace()
        guard index < bytes.count else { throw failure(.malformed("the body ends where a value should be")) }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw failure(.malformed("unexpected character"))
        }
    }

    private mutating func literal(_ word: String) throws(StrictJSONError) {
        for byte in word.utf8 {
            guard index < bytes.count, bytes[index] == byte else { throw failure(.malformed("unexpected character")) }
            index += 1
        }
    }

    private mutating func object(depth: Int) throws(StrictJSONError) -> StrictJSON {
        guard depth <= maxDepth else { throw failure(.tooDeep(limit: maxDepth)) }
        index += 1
        var members: [String: StrictJSON] = [:]
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw failure(.malformed("expected a member name in quotes")) }
            let keyOffset = index
            let key = try string()
            // Swift compares strings by canonical equivalence, so "é" and "e\u{301}" count as the
            // same name: refusing both is safer than letting either win.
            guard members[key] == nil else { throw StrictJSONError(kind: .duplicateKey(key), offset: keyOffset) }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw failure(.malformed("expected ':' after a member name")) }
            index += 1
            members[key] = try value(depth: depth)
            skipWhitespace()
            guard index < bytes.count else { throw failure(.malformed("the body ends inside an object")) }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"): index += 1; return .object(members)
            default: throw failure(.malformed("expected ',' or '}' in an object"))
            }
        }
    }

    private mutating func array(depth: Int) throws(StrictJSONError) -> StrictJSON {
        guard depth <= maxDepth else { throw failure(.tooDeep(limit: maxDepth)) }
        index += 1
        var elements: [StrictJSON] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            elements.append(try value(depth: depth))
            skipWhitespace()
            guard index < bytes.count else { throw failure(.malformed("the body ends inside an array")) }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"): index += 1; return .array(elements)
            default: throw failure(.malformed("expected ',' or ']' in an array"))
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, returned as its text.
    private mutating func number() throws(StrictJSONError) -> String {
        let start = index
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, isDigit(bytes[index]) else { throw failure(.malformed("a number needs a digit")) }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if index < bytes.count, isDigit(bytes[index]) { throw failure(.malformed("a number cannot have a leading zero")) }
        } else {
            skipDigits()
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else { throw failure(.malformed("a digit must follow the decimal point")) }
            skipDigits()
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, isDigit(bytes[index]) else { throw failure(.malformed("an exponent needs a digit")) }
            skipDigits()
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func skipDigits() {
        while index < bytes.count, isDigit(bytes[index]) { index += 1 }
    }

    /// A quoted string: escapes decoded, raw control characters refused, the result validated as UTF-8.
    private mutating func string() throws(StrictJSONError) -> String {
        let start = index
        index += 1
        var utf8: [UInt8] = []
        while true {
            guard index < bytes.count else { throw failure(.malformed("the body ends inside a string")) }
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let text = String(validating: utf8, as: UTF8.self) else {
                    throw StrictJSONError(kind: .malformed("a string is not valid UTF-8"), offset: start)
                }
                return text
            case UInt8(ascii: "\\"):
                index += 1
                guard index < bytes.count else { throw failure(.malformed("the body ends inside a string")) }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "u"):
                    let scalar = try unicodeEscape()
                    UTF8.encode(scalar) { utf8.append($0) }
                default: throw failure(.malformed("unknown escape in a string"))
                }
            case 0x00..<0x20:
                throw failure(.malformed("a control character in a string must be escaped"))
            default:
                utf8.append(byte)
                index += 1
            }
        }
    }

    /// The scalar of `\uXXXX` (the `\u` already read), joining a surrogate pair; a lone surrogate is refused.
    private mutating func unicodeEscape() throws(StrictJSONError) -> Unicode.Scalar {
        let first = try hex4()
        switch first {
        case 0xD800...0xDBFF:
            guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                throw failure(.malformed("a high surrogate escape must be followed by a low one"))
            }
            index += 2
            let second = try hex4()
            guard (0xDC00...0xDFFF).contains(second) else { throw failure(.malformed("a high surrogate escape must be followed by a low one")) }
            return Unicode.Scalar(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))!
        case 0xDC00...0xDFFF:
            throw failure(.malformed("a low surrogate escape without a high one"))
        default:
            return Unicode.Scalar(first)!
        }
    }

    private mutating func hex4() throws(StrictJSONError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw failure(.malformed("\\u needs four hex digits")) }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw failure(.malformed("\\u needs four hex digits"))
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }
}
