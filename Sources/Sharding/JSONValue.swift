/// A JSON value that keeps strings, integers and other numbers apart, for the edges that read
/// input strictly: request bodies (money must be a string) and configuration files (types by field).
public enum JSONValue: Decodable, Sendable, Hashable {
    case string(String), bool(Bool), integer(Int64), number(Double), array([JSONValue]), object([String: JSONValue]), null

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int64.self) { self = .integer(v) }
        else if let v = try? c.decode(Double.self) { self = .number(v) }
        else if let v = try? c.decode([JSONValue].self) { self = .array(v) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }
}
