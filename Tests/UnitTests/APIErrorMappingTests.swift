import API
import Ledger
import MariaDB
import Testing

/// ``APIError/from(_:requestID:)``, the one place where errors become HTTP: a 503 ("retry") only
/// where a retry can work, a 500 for what the API does not recognise, a 422 for values the database refuses.
@Suite("Errors → HTTP")
struct APIErrorMappingTests {
    struct Unrecognised: Error {}

    @Test("an error the API does not recognise is a 500 internal_error that points to the request id and never says retry")
    func unrecognisedIs500() {
        let answer = APIError.from(Unrecognised())
        #expect(answer.status == .internalServerError)
        #expect(answer.code == "internal_error")
        #expect(answer.retryAfter == nil)
        #expect(answer.message.contains("X-Request-Id"))
        #expect(!answer.message.lowercased().contains("retry"))
    }

    @Test("a MariaDB error that is not about the connection is a 500, one that is stays a 503")
    func mariaDBErrors() {
        let syntax = APIError.from(MariaDBError(code: .server, server: "node1 (127.0.0.1:3306)", errorNumber: 1064, message: "syntax"))
        #expect(syntax.status == .internalServerError)
        for broken in [MariaDBError(code: .connectionLost, server: "n", message: "lost"),
                       MariaDBError(code: .server, server: "n", errorNumber: 1213, message: "deadlock"),
                       MariaDBError(code: .poolTimeout, server: "n", message: "timeout")] {
            let answer = APIError.from(broken)
            #expect(answer.status == .serviceUnavailable)
            #expect(answer.retryAfter != nil)
        }
    }

    @Test("a balance past the ledger's ceiling is a 422 balance_limit that keeps the ledger's sentence (it names the limit)")
    func balanceLimit() {
        let answer = APIError.from(LedgerError(.balanceLimit, "account 7 would hold more than the ledger's limit of 1000000000000.00 per account"))
        #expect(answer.status == .unprocessableContent)
        #expect(answer.code == "balance_limit")
        #expect(answer.message.contains("1000000000000.00"))
        #expect(answer.retryAfter == nil)
    }

    @Test("the ledger's retryable codes stay 503 with Retry-After")
    func ledgerRetryable() {
        for code in [LedgerError.Code.aborted, .nodeUnavailable, .outcomeUnknown] {
            let answer = APIError.from(LedgerError(code, "x"))
            #expect(answer.status == .serviceUnavailable, "\(code)")
            #expect(answer.retryAfter != nil, "\(code)")
        }
    }

    @Test("a range still frozen for a move after the wait is 503 range_moving with Retry-After: 1")
    func rangeMoving() {
        let answer = APIError.from(LedgerError(.rangeMoving, "transfer k needs a range that is being moved"))
        #expect(answer.status == .serviceUnavailable)
        #expect(answer.code == "range_moving")
        #expect(answer.retryAfter == 1)
        #expect(answer.message.contains("being moved"))
    }

    @Test("a database refusal caused by the request's values is a 422 invalid_request, also inside an aborted transaction",
          arguments: [UInt32(1406), 1264, 4025, 1366])
    func inputErrorsAre422(_ number: UInt32) {
        let db = MariaDBError(code: .server, server: "node1 (127.0.0.1:3306)", errorNumber: number, sqlState: "22001", message: "Data too long for column 'customer_name'")
        for error in [db, LedgerError(.aborted, "rolled back: \(db)", underlying: db)] as [any Error] {
            let answer = APIError.from(error)
            #expect(answer.status == .unprocessableContent)
            #expect(answer.code == "invalid_request")
            #expect(!answer.message.contains("customer_name"))
            #expect(!answer.message.contains("127.0.0.1"))
        }
    }

    @Test("the request id is named in a 500's message when known")
    func internalErrorNamesRequestID() {
        #expect(APIError.from(Unrecognised(), requestID: "abc123").message.contains("abc123"))
    }
}
