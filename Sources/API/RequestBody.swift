import Hummingbird
import Sharding

/// A request's JSON object, read strictly: a body over ``maxBytes`` → 413; malformed JSON, nesting
/// deeper than ``StrictJSONParser/defaultMaxDepth`` → 400 `malformed_json`; a member named twice → 400
/// `duplicate_field`; a missing field, a field of the wrong type, an unknown field, money sent as a
/// JSON number or an account id sent as a string or a fraction → 422, each with a sentence.
struct RequestBody {
    /// The largest body any route accepts: its requests are a few short fields.
    static let maxBytes = 64 * 1024

    private let fields: [String: StrictJSON]

    static func read(_ request: Request, context: some RequestContext, allowed: Set<String>) async throws -> RequestBody {
        var buffer = ByteBuffer()
        var nesting = NestingScanner()
        for try await chunk in request.body {
            // Depth before size: `[[[[…` is refused as too deep at its 33rd byte, however long it is.
            if nesting.exceedsLimit(after: chunk.readableBytesView) { throw tooDeep(nesting.limit) }
            guard buffer.readableBytes + chunk.readableBytes <= maxBytes else {
                throw APIError(.contentTooLarge, "body_too_large", "the body is larger than \(maxBytes) bytes (64 KiB), the most this API accepts")
            }
            buffer.writeImmutableBuffer(chunk)
        }
        return try parse(Array(buffer.readableBytesView), allowed: allowed)
    }

    static func tooDeep(_ limit: Int) -> APIError {
        APIError(.badRequest, "malformed_json", "the body is nested too deep: arrays and objects may nest at most \(limit) deep")
    }

    /// The body's bytes → its fields, or the APIError that refuses them.
    static func parse(_ bytes: [UInt8], allowed: Set<String>) throws -> RequestBody {
        let value: StrictJSON
        do throws(StrictJSONError) { value = try StrictJSONParser.parse(bytes) } catch {
            switch error.kind {
            case .duplicateKey(let key):
                throw APIError(.badRequest, "duplicate_field", "field \"\(key.prefix(64))\" appears more than once; send each field once")
            case .tooDeep(let limit):
                throw tooDeep(limit)
            case .malformed:
                throw APIError(.badRequest, "malformed_json", "the body is not valid JSON: \(error.description)")
            }
        }
        guard case .object(let fields) = value else {
            throw APIError(.badRequest, "malformed_json", "the body must be a JSON object")
        }
        if let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw APIError(.unprocessableContent, "unknown_field", "unknown field \"\(unknown.prefix(64))\"; allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        return RequestBody(fields: fields)
    }

    /// Whether the body carries `name` (null counts as absent).
    func has(_ name: String) -> Bool {
        switch fields[name] {
        case nil, .null: return false
        default: return true
        }
    }

    /// A JSON boolean, or nil when absent.
    func bool(_ name: String) throws -> Bool? {
        switch fields[name] {
        case nil, .null: return nil
        case .bool(let b): return b
        default: throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be true or false")
        }
    }

    func string(_ name: String) throws -> String {
        switch fields[name] {
        case .string(let s): return s
        case nil, .null: throw APIError(.unprocessableContent, "missing_field", "field \"\(name)\" is required")
        default: throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be a string")
        }
    }

    /// An account id: a JSON integer. `"7"`, `7.0` and `7e0` are refused — an id is never text or a
    /// measurement, and accepting look-alikes hides client bugs.
    func int64(_ name: String) throws -> Int64 {
        let value = fields[name]
        switch value {
        case .number:
            guard let literal = value?.integerLiteral else {
                throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be a whole number such as 7, without a fraction or exponent")
            }
            guard let v = Int64(literal) else {
                throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" is too large for an account id")
            }
            return v
        case .string:
            throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be a whole number, not a string (send 7, not \"7\")")
        case nil, .null: throw APIError(.unprocessableContent, "missing_field", "field \"\(name)\" is required")
        default: throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be an account id (a whole number)")
        }
    }

    /// Money as a decimal string with at most two decimals; never a JSON number.
    func money(_ name: String) throws -> Money {
        switch fields[name] {
        case .string(let s):
            do { return try Money(parsing: s) } catch {
                throw APIError(.unprocessableContent, "invalid_amount", "field \"\(name)\": \(error.description)")
            }
        case .number:
            throw APIError(.unprocessableContent, "invalid_amount", "field \"\(name)\" must be a decimal string such as \"10.00\", not a JSON number (numbers lose cents)")
        case nil, .null: throw APIError(.unprocessableContent, "missing_field", "field \"\(name)\" is required")
        default: throw APIError(.unprocessableContent, "invalid_amount", "field \"\(name)\" must be a decimal string such as \"10.00\"")
        }
    }

    /// A customer's name, checked as MariaDB will store it: `VARCHAR(255)` in utf8mb4 counts code
    /// points, not the grapheme clusters `String.count` counts, so a short-looking name of combining
    /// marks could otherwise reach the database too long.
    func customerName(_ name: String) throws -> String {
        let text = try string(name)
        let length = text.unicodeScalars.count
        guard (1...255).contains(length) else {
            throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must have 1 to 255 characters (Unicode code points); it has \(length)")
        }
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must not contain control characters (U+0000–U+001F, U+007F)")
        }
        guard !text.unicodeScalars.allSatisfy(\.properties.isWhitespace) else {
            throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must not be only whitespace")
        }
        return text
    }
}
