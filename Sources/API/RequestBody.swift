import Foundation
import Hummingbird
import Sharding

/// A request's JSON object, read strictly: malformed JSON → 400; a missing field, a field of the
/// wrong type, an unknown field or money sent as a JSON number → 422, each with a sentence.
struct RequestBody {
    private let fields: [String: JSONValue]

    static func read(_ request: Request, context: some RequestContext, allowed: Set<String>) async throws -> RequestBody {
        let buffer = try await request.body.collect(upTo: 64 * 1024)
        let value: JSONValue
        do { value = try JSONDecoder().decode(JSONValue.self, from: Data(buffer.readableBytesView)) } catch {
            throw APIError(.badRequest, "malformed_json", "the body is not valid JSON")
        }
        guard case .object(let fields) = value else {
            throw APIError(.badRequest, "malformed_json", "the body must be a JSON object")
        }
        if let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw APIError(.unprocessableContent, "unknown_field", "unknown field \"\(unknown.prefix(64))\"; allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        return RequestBody(fields: fields)
    }

    func string(_ name: String) throws -> String {
        switch fields[name] {
        case .string(let s): return s
        case nil, .null: throw APIError(.unprocessableContent, "missing_field", "field \"\(name)\" is required")
        default: throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be a string")
        }
    }

    func int64(_ name: String) throws -> Int64 {
        switch fields[name] {
        case .integer(let v): return v
        case .string(let s):
            guard let v = Int64(s) else { throw APIError(.unprocessableContent, "invalid_field", "field \"\(name)\" must be an account id") }
            return v
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
        case .integer, .number:
            throw APIError(.unprocessableContent, "invalid_amount", "field \"\(name)\" must be a decimal string such as \"10.00\", not a JSON number (numbers lose cents)")
        case nil, .null: throw APIError(.unprocessableContent, "missing_field", "field \"\(name)\" is required")
        default: throw APIError(.unprocessableContent, "invalid_amount", "field \"\(name)\" must be a decimal string such as \"10.00\"")
        }
    }
}
