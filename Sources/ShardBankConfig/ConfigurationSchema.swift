import Foundation
import Sharding

/// The fields a configuration file may hold, and their JSON types. A file with an unknown field (a
/// typo) or a value of the wrong type is refused with the field's name, before anything runs.
enum ConfigurationSchema {
    enum Kind: String { case string = "a string", integer = "a whole number", strings = "a list of strings", boolean = "true or false" }

    /// Dotted paths; `*` stands for a node id.
    static let fields: [String: Kind] = [
        "logging.level": .string,
        "etcd.endpoints": .strings, "etcd.prefix": .string, "etcd.username": .string, "etcd.password_file": .string,
        "etcd.connect_timeout_ms": .integer, "etcd.request_timeout_ms": .integer, "etcd.tls_ca_file": .string,
        "mysql.user": .string, "mysql.password_file": .string, "mysql.connect_timeout_s": .integer,
        "mysql.read_timeout_s": .integer, "mysql.write_timeout_s": .integer, "mysql.tls_mode": .string, "mysql.tls_ca_file": .string,
        "mysql.pool.max_connections": .integer, "mysql.pool.acquire_timeout_ms": .integer,
        "cluster.nodes": .strings,
        "nodes.*.host": .string, "nodes.*.port": .integer, "nodes.*.database": .string, "nodes.*.tls_mode": .string,
        "nodes.*.user": .string, "nodes.*.password_file": .string,
        "http.host": .string, "http.port": .integer, "http.admin_routes": .boolean,
        "ledger.max_balance": .string, "ledger.move_wait_ms": .integer,
    ]

    /// Checks every field of the file; returns the node ids of its `nodes` section.
    @discardableResult
    static func validate(_ data: Data, file: String) throws(ConfigurationError) -> [String] {
        let root: JSONValue
        do { root = try JSONDecoder().decode(JSONValue.self, from: data) } catch {
            throw ConfigurationError(file: file, field: nil, "is not valid JSON: \(describe(error))")
        }
        guard case .object(let object) = root else {
            throw ConfigurationError(file: file, field: nil, "must hold a JSON object at the top level")
        }
        try walk(object, path: [], file: file)
        guard case .object(let nodes)? = object["nodes"] else { return [] }
        return nodes.keys.filter { !$0.hasPrefix("_") && !$0.hasPrefix("$") }.sorted()
    }

    private static func walk(_ object: [String: JSONValue], path: [String], file: String) throws(ConfigurationError) {
        for (key, value) in object.sorted(by: { $0.key < $1.key }) {
            if key.hasPrefix("_") || key.hasPrefix("$") { continue } // comments
            let fieldPath = path + [key]
            let dotted = fieldPath.joined(separator: ".")
            let pattern = (fieldPath.first == "nodes" && fieldPath.count >= 2 ? ["nodes", "*"] + fieldPath.dropFirst(2) : fieldPath).joined(separator: ".")
            if case .object(let nested) = value {
                guard fields.keys.contains(where: { $0.hasPrefix(pattern + ".") }) else {
                    throw ConfigurationError(file: file, field: dotted, "is not a known section; known fields: \(fields.keys.sorted().joined(separator: ", "))")
                }
                try walk(nested, path: fieldPath, file: file)
                continue
            }
            guard let kind = fields[pattern] else {
                throw ConfigurationError(file: file, field: dotted, "is not a known field; known fields: \(fields.keys.sorted().joined(separator: ", "))")
            }
            let ok: Bool
            switch (kind, value) {
            case (.string, .string), (.integer, .integer), (.boolean, .bool): ok = true
            case (.strings, .array(let items)): ok = items.allSatisfy { if case .string = $0 { true } else { false } }
            default: ok = false
            }
            guard ok else { throw ConfigurationError(file: file, field: dotted, "must be \(kind.rawValue)") }
        }
    }

    private static func describe(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error {
            let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return underlying ?? context.debugDescription
        }
        return "\(error)"
    }
}
