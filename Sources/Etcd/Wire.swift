import Foundation

// The JSON shapes of etcd's v3 gateway (proto3 JSON of api/etcdserverpb/rpc.proto): keys and values
// in base64, 64-bit integers as strings, fields at their zero value left out of answers.

/// A proto3 JSON int64: a string on the wire, also accepted as a number.
struct WireInt64: Codable, Sendable {
    var value: Int64
    init(_ value: Int64) { self.value = value }
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            guard let v = Int64(s) ?? UInt64(s).map({ Int64(bitPattern: $0) }) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an int64")
            }
            value = v
        } else {
            value = try c.decode(Int64.self)
        }
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(String(value))
    }
}

func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
func base64(_ string: String) -> String { base64(Array(string.utf8)) }
func unbase64(_ string: String?) -> [UInt8] {
    guard let string, let d = Data(base64Encoded: string) else { return [] }
    return Array(d)
}

struct WireHeader: Codable { var revision: WireInt64?; var member_id: WireInt64? }

struct WireKV: Codable {
    var key: String?
    var value: String?
    var create_revision: WireInt64?
    var mod_revision: WireInt64?
    var version: WireInt64?
    var lease: WireInt64?

    var model: EtcdKeyValue {
        EtcdKeyValue(key: String(decoding: unbase64(key), as: UTF8.self), value: unbase64(value),
                     createRevision: create_revision?.value ?? 0, modRevision: mod_revision?.value ?? 0,
                     version: version?.value ?? 0, lease: lease?.value ?? 0)
    }
}

struct WireRangeRequest: Codable {
    var key: String
    var range_end: String?
    var limit: WireInt64?
    var serializable: Bool?
    var count_only: Bool?
}

struct WireRangeResponse: Codable {
    var header: WireHeader?
    var kvs: [WireKV]?
    var more: Bool?
    var count: WireInt64?

    var model: EtcdRangeResult {
        EtcdRangeResult(kvs: (kvs ?? []).map(\.model), revision: header?.revision?.value ?? 0,
                        count: count?.value ?? 0, more: more ?? false)
    }
}

struct WirePutRequest: Codable { var key: String; var value: String; var lease: WireInt64? }
struct WirePutResponse: Codable { var header: WireHeader? }
struct WireDeleteRequest: Codable { var key: String; var range_end: String? }
struct WireDeleteResponse: Codable { var header: WireHeader?; var deleted: WireInt64? }

struct WireCompare: Codable {
    var result: String
    var target: String
    var key: String
    var version: WireInt64?
    var create_revision: WireInt64?
    var mod_revision: WireInt64?
    var value: String?
    var lease: WireInt64?

    init(_ c: EtcdCompare) {
        result = c.result.rawValue
        key = base64(c.key)
        switch c.target {
        case .value(let v): target = "VALUE"; value = base64(v)
        case .version(let v): target = "VERSION"; version = WireInt64(v)
        case .createRevision(let v): target = "CREATE"; create_revision = WireInt64(v)
        case .modRevision(let v): target = "MOD"; mod_revision = WireInt64(v)
        case .lease(let v): target = "LEASE"; lease = WireInt64(v)
        }
    }
}

struct WireRequestOp: Codable {
    var request_range: WireRangeRequest?
    var request_put: WirePutRequest?
    var request_delete_range: WireDeleteRequest?

    init(_ op: EtcdOperation) {
        switch op {
        case .get(let s):
            request_range = WireRangeRequest(key: base64(s.key), range_end: s.rangeEnd.map(base64))
        case .put(let key, let value, let lease):
            request_put = WirePutRequest(key: base64(key), value: base64(value), lease: lease.map(WireInt64.init))
        case .delete(let s):
            request_delete_range = WireDeleteRequest(key: base64(s.key), range_end: s.rangeEnd.map(base64))
        }
    }
}

struct WireTxnRequest: Codable {
    var compare: [WireCompare]
    var success: [WireRequestOp]
    var failure: [WireRequestOp]
}

struct WireResponseOp: Codable {
    var response_range: WireRangeResponse?
    var response_put: WirePutResponse?
    var response_delete_range: WireDeleteResponse?

    var model: EtcdOperationResult {
        if let r = response_range { return .get(r.model) }
        if let d = response_delete_range { return .delete(deleted: d.deleted?.value ?? 0) }
        return .put
    }
}

struct WireTxnResponse: Codable {
    var header: WireHeader?
    var succeeded: Bool?
    var responses: [WireResponseOp]?
}

struct WireLeaseGrantRequest: Codable { var TTL: WireInt64; var ID: WireInt64 }
struct WireLeaseGrantResponse: Codable { var ID: WireInt64?; var TTL: WireInt64?; var error: String? }
struct WireLeaseIDRequest: Codable { var ID: WireInt64 }
struct WireEmpty: Codable {}
struct WireLeaseKeepAliveResponse: Codable {
    struct Result: Codable { var ID: WireInt64?; var TTL: WireInt64? }
    var result: Result?
}
struct WireAuthRequest: Codable { var name: String; var password: String }
struct WireAuthResponse: Codable { var token: String? }
struct WireStatusResponse: Codable {
    var header: WireHeader?
    var version: String?
    var dbSize: WireInt64?
    var leader: WireInt64?
}

struct WireWatchCreate: Codable {
    struct Create: Codable {
        var key: String
        var range_end: String?
        var start_revision: WireInt64?
        var prev_kv: Bool?
    }
    var create_request: Create
}

struct WireWatchMessage: Codable {
    struct Event: Codable { var type: String?; var kv: WireKV? }
    struct Result: Codable {
        var header: WireHeader?
        var created: Bool?
        var canceled: Bool?
        var compact_revision: WireInt64?
        var cancel_reason: String?
        var events: [Event]?
    }
    var result: Result?
    var error: WireErrorBody?
}

/// `{"error": "...", "code": N, "message": "..."}` (unary) or nested in a stream message.
struct WireErrorBody: Codable {
    var error: String?
    var code: Int?
    var message: String?
    var grpc_code: Int?
    var http_code: Int?
}
