import API
import ClusterMetadata
import Etcd
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Ledger
import Logging
import Testing

/// The API's answers that are decided before the bank is asked, driven through the real router and
/// middleware in-process. The bank here has no nodes (every call to it fails as "node unavailable"),
/// so a request that wrongly reaches it shows up as a 503.
@Suite("API edge: bodies, parsing and error answers")
struct APIEdgeTests {
    struct ErrorAnswer: Decodable {
        struct Inner: Decodable { var code: String; var message: String }
        var error: Inner
    }

    struct Answer: Sendable {
        var status: Int
        var code: String?
        var message: String?
        var requestID: String?
    }

    /// Sends one request through the router and returns the status and error body.
    static func send(_ method: HTTPRequest.Method, _ uri: String, body: [UInt8]? = nil) async throws -> Answer {
        // A handler that keeps metadata: Hummingbird reads the request id back from the logger.
        var logger = Logger(label: "test", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = .critical
        return try await withOfflineRouter(logger: logger) { router in
            let app = Application(router: router, logger: logger)
            return try await app.test(.router) { client in
                try await client.execute(uri: uri, method: method, headers: [.contentType: "application/json"],
                                         body: body.map { ByteBuffer(bytes: $0) }) { response in
                    let decoded = try? JSONDecoder().decode(ErrorAnswer.self, from: Data(response.body.readableBytesView))
                    return Answer(status: response.status.code, code: decoded?.error.code, message: decoded?.error.message,
                                  requestID: response.headers[HTTPField.Name("X-Request-Id")!])
                }
            }
        }
    }

    static func post(_ uri: String, _ json: String) async throws -> Answer {
        try await send(.post, uri, body: Array(json.utf8))
    }

    // MARK: admin routes

    @Test("a move asked of an unknown map is a 404 unknown_map; without \"to\" a 422 missing_field; a field not in the route's schema a 422 unknown_field — before anything is read or written")
    func moveRouteInput() async throws {
        let unknownMap = try await Self.post("/v1/cluster/ranges/nosuch/a1/move", #"{"to":"node2"}"#)
        #expect(unknownMap.status == 404 && unknownMap.code == "unknown_map")
        let missing = try await Self.post("/v1/cluster/ranges/accounts/a1/move", "{}")
        #expect(missing.status == 422 && missing.code == "missing_field")
        let unknown = try await Self.post("/v1/cluster/ranges/accounts/a1/move", #"{"to":"node2","at":"1.00"}"#)
        #expect(unknown.status == 422 && unknown.code == "unknown_field")
    }

    @Test("a split's key is checked before anything is read: more than two decimals, the other map's field, a hash that is not a number, an unknown field")
    func splitRouteInput() async throws {
        let decimals = try await Self.post("/v1/cluster/ranges/accounts/a1/split", #"{"at":"10.001"}"#)
        #expect(decimals.status == 422 && decimals.code == "invalid_amount")
        let hashForAccounts = try await Self.post("/v1/cluster/ranges/accounts/a1/split", #"{"at_hash":"5"}"#)
        #expect(hashForAccounts.status == 422 && hashForAccounts.code == "invalid_field" && hashForAccounts.message?.contains("balance") == true)
        let amountForDirectory = try await Self.post("/v1/cluster/ranges/directory/d1/split", #"{"at":"5.00"}"#)
        #expect(amountForDirectory.status == 422 && amountForDirectory.code == "invalid_field")
        let notNumber = try await Self.post("/v1/cluster/ranges/directory/d1/split", #"{"at_hash":"12x"}"#)
        #expect(notNumber.status == 422 && notNumber.code == "invalid_field")
        let unknown = try await Self.post("/v1/cluster/ranges/accounts/a1/split", #"{"to":"node2"}"#)
        #expect(unknown.status == 422 && unknown.code == "unknown_field")
        let unknownMap = try await Self.post("/v1/cluster/ranges/nosuch/a1/split", "{}")
        #expect(unknownMap.status == 404 && unknownMap.code == "unknown_map")
    }

    @Test("a rebalance's settings and a job request's body are checked before anything is read: tolerance outside 1–100, max_range_rows below 2, dry_run not a boolean, unknown fields")
    func rebalanceAndJobRequestInput() async throws {
        let tolerance = try await Self.post("/v1/cluster/rebalance", #"{"tolerance":0}"#)
        #expect(tolerance.status == 422 && tolerance.code == "invalid_field" && tolerance.message?.contains("1 to 100") == true)
        let rows = try await Self.post("/v1/cluster/rebalance", #"{"max_range_rows":1}"#)
        #expect(rows.status == 422 && rows.code == "invalid_field")
        let dry = try await Self.post("/v1/cluster/rebalance", #"{"dry_run":"yes"}"#)
        #expect(dry.status == 422 && dry.code == "invalid_field")
        let unknown = try await Self.post("/v1/cluster/rebalance", #"{"to":"node2"}"#)
        #expect(unknown.status == 422 && unknown.code == "unknown_field")
        for verb in ["resume", "cancel"] {
            let extra = try await Self.post("/v1/cluster/jobs/job-1/\(verb)", #"{"force":true}"#)
            #expect(extra.status == 422 && extra.code == "unknown_field", "\(verb)")
        }
    }

    @Test("adding a node: missing fields, a port outside 1–65535 and unknown fields are 422 before anything is asked; the admission's refusal is 422 invalid_node, a node registered without a healthy beat 409 node_not_healthy; a drain's body takes no field")
    func nodeRoutesInput() async throws {
        let missing = try await Self.post("/v1/cluster/nodes", #"{"id":"node4","host":"127.0.0.1","database":"bank_db"}"#)
        #expect(missing.status == 422 && missing.code == "missing_field")
        let port = try await Self.post("/v1/cluster/nodes", #"{"id":"node4","host":"127.0.0.1","port":70000,"database":"bank_db"}"#)
        #expect(port.status == 422 && port.code == "invalid_field")
        let unknown = try await Self.post("/v1/cluster/nodes", #"{"id":"node4","host":"h","port":3306,"database":"d","password":"x"}"#)
        #expect(unknown.status == 422 && unknown.code == "unknown_field")
        let refused = try await Self.post("/v1/cluster/nodes", #"{"id":"node4","host":"h","port":3306,"database":"d"}"#)
        #expect(refused.status == 422 && refused.code == "invalid_node" && refused.message == "refused node4")
        let slow = try await Self.post("/v1/cluster/nodes", #"{"id":"slow","host":"h","port":3306,"database":"d","tls_mode":"required"}"#)
        #expect(slow.status == 409 && slow.code == "node_not_healthy")
        let drain = try await Self.post("/v1/cluster/nodes/node1/drain", #"{"force":true}"#)
        #expect(drain.status == 422 && drain.code == "unknown_field")
    }

    // MARK: body limits

    @Test("a body over 64 KiB is a 413 body_too_large naming the limit, not a 503 retry")
    func bodyTooLarge() async throws {
        let name = String(repeating: "a", count: 64 * 1024)
        let answer = try await Self.post("/v1/accounts", #"{"customer_name":"\#(name)","balance":"1.00"}"#)
        #expect(answer.status == 413)
        #expect(answer.code == "body_too_large")
        #expect(answer.message?.contains("65536") == true)
    }

    @Test("a body of exactly 64 KiB is read (and then judged on its fields)")
    func bodyAtLimit() async throws {
        let prefix = #"{"customer_name":""#, suffix = #"","balance":"1.00"}"#
        let name = String(repeating: "a", count: 64 * 1024 - prefix.utf8.count - suffix.utf8.count)
        let answer = try await Self.post("/v1/accounts", prefix + name + suffix)
        #expect(answer.status == 422)
        #expect(answer.code == "invalid_field")
    }

    @Test("JSON nested 32,000 deep (inside the size limit) or 100,000 deep (beyond it) is a 400 malformed_json that says it is too deep",
          arguments: [32_000, 100_000])
    func nestedTooDeep(_ depth: Int) async throws {
        let answer = try await Self.send(.post, "/v1/accounts",
                                         body: Array(repeating: UInt8(ascii: "["), count: depth) + Array(repeating: UInt8(ascii: "]"), count: depth))
        #expect(answer.status == 400)
        #expect(answer.code == "malformed_json")
        #expect(answer.message?.contains("deep") == true)
    }

    @Test("a field nested 33 deep (counting the body's object) is too deep, 32 deep is fine")
    func depthLimit() async throws {
        func body(_ depth: Int) -> String {
            #"{"customer_name":"Ann","balance":"1.00","x":"# + String(repeating: "[", count: depth - 1) + String(repeating: "]", count: depth - 1) + "}"
        }
        let tooDeep = try await Self.post("/v1/accounts", body(33))
        #expect(tooDeep.status == 400)
        #expect(tooDeep.message?.contains("deep") == true)
        // Within the limit, parsing succeeds and the unknown field is what is refused.
        let fine = try await Self.post("/v1/accounts", body(32))
        #expect(fine.status == 422)
        #expect(fine.code == "unknown_field")
    }

    @Test("unparseable JSON is a 400 malformed_json", arguments: [
        "", "{", #"{"amount":"1.00",}"#, #"{"amount":01}"#, #"{"amount":"1.00"} x"#, #"{'amount':'1.00'}"#, "{\"amount\":\"1\u{01}\"}",
        #"{"amount":"\ud800"}"#, #"{"amount":1.}"#, #"{"amount":-}"#,
    ])
    func malformed(_ json: String) async throws {
        let answer = try await Self.post("/v1/accounts/1/deposit", json)
        #expect(answer.status == 400)
        #expect(answer.code == "malformed_json")
    }

    @Test("a string that is not UTF-8 is a 400 malformed_json")
    func notUTF8() async throws {
        let answer = try await Self.send(.post, "/v1/accounts/1/deposit", body: Array(#"{"amount":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8))
        #expect(answer.status == 400)
        #expect(answer.code == "malformed_json")
    }

    // MARK: strict fields

    @Test("a field sent twice is a 400 duplicate_field naming it, whichever value comes first")
    func duplicateKeys() async throws {
        for json in [#"{"from":1,"to":2,"amount":"1.00","amount":"1000.00"}"#, #"{"from":1,"to":2,"amount":"1000.00","amount":"1.00"}"#,
                     #"{"from":1,"to":2,"amount":"1.00","\u0061mount":"1000.00"}"#] {
            let answer = try await Self.post("/v1/transfers", json)
            #expect(answer.status == 400, "\(json)")
            #expect(answer.code == "duplicate_field", "\(json)")
            #expect(answer.message?.contains("\"amount\"") == true, "\(json)")
        }
    }

    @Test("an account id sent as a string, a fraction or with an exponent is a 422 invalid_field",
          arguments: [#""7""#, "7.0", "7e0", "7E+0", "7.5"])
    func accountIDMustBeAnInteger(_ from: String) async throws {
        let answer = try await Self.post("/v1/transfers", #"{"from":\#(from),"to":2,"amount":"1.00"}"#)
        #expect(answer.status == 422)
        #expect(answer.code == "invalid_field")
        #expect(answer.message?.contains("whole number") == true)
    }

    @Test("an account id beyond Int64 is a 422, not a rounded number")
    func accountIDOutOfRange() async throws {
        let answer = try await Self.post("/v1/transfers", #"{"from":9223372036854775808,"to":2,"amount":"1.00"}"#)
        #expect(answer.status == 422)
        #expect(answer.code == "invalid_field")
    }

    // MARK: customer_name

    @Test("customer_name counts code points as MariaDB does: 256 in one grapheme cluster is refused")
    func nameCountsCodePoints() async throws {
        let name = "e" + String(repeating: "\u{301}", count: 255)
        #expect(name.count == 1)
        let answer = try await Self.post("/v1/accounts", #"{"customer_name":"\#(name)","balance":"1.00"}"#)
        #expect(answer.status == 422)
        #expect(answer.code == "invalid_field")
    }

    @Test("customer_name with a control character or only whitespace is refused",
          arguments: [#"Ann\u0000"#, #"Ann\nBob"#, #"\u007f"#, "Ann\\tX", "   ", #"\u00a0\u2003"#])
    func nameCharacters(_ name: String) async throws {
        let answer = try await Self.post("/v1/accounts", #"{"customer_name":"\#(name)","balance":"1.00"}"#)
        #expect(answer.status == 422)
        #expect(answer.code == "invalid_field")
    }

    // MARK: listing

    @Test("?node= of a node that is not registered is never a 503 retry")
    func unknownNodeIsNotRetry() async throws {
        // The cache here never loads, so the honest answer is "not ready"; the 404 for a loaded
        // registry is checked in StrictJSONTests against BankRoutes.checkListTarget.
        let answer = try await Self.send(.get, "/v1/accounts?node=nosuch")
        #expect(answer.code == "not_ready")
    }

    @Test("an error answer from the middleware carries X-Request-Id, the id a 500's message points to")
    func errorAnswersCarryRequestID() async throws {
        let answer = try await Self.send(.get, "/v1/nosuch")
        #expect(answer.status == 404)
        #expect(answer.requestID?.isEmpty == false)
    }
}
