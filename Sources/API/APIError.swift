import ClusterMetadata
import Foundation
import HTTPTypes
import Hummingbird
import Ledger
import Mover
import Logging
import MariaDB
import Sharding

/// The API's error answer: `{"error": {"code", "message"}}` with a status, and `Retry-After` on
/// retryable ones. ``APIError/from(_:)`` is the one place where domain errors become HTTP.
public struct APIError: HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    /// Seconds, for 503 answers.
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(ErrorBody(error: .init(code: code, message: message)))
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Maps any error to its answer: the one place where errors become HTTP. Messages never carry
    /// SQL, parameters or credentials.
    ///
    /// A 503 tells a client to retry, so it is only answered where a retry can succeed and nothing
    /// changed (or the outcome will be learnt). An error this switch does not recognise is a 500 that
    /// says no such thing: a client obeying "retry" on a deterministic failure would retry forever.
    /// `requestID` (the `X-Request-Id` of the answer) is named in a 500's message.
    public static func from(_ error: any Error, requestID: String? = nil) -> APIError {
        switch error {
        case let e as APIError:
            return e
        case let e as LedgerError where e.code == .outcomeUnknown:
            return APIError(.serviceUnavailable, "outcome_unknown", "the outcome is not known yet; retry with the same Idempotency-Key to learn it", retryAfter: 2)
        case _ where rejectedInput(error) != nil:
            // The database refused a value of the request: the same request fails the same way.
            return APIError(.unprocessableContent, "invalid_request", "\(rejectedInput(error)!); nothing was changed")
        case let e as LedgerError:
            switch e.code {
            case .notFound: return APIError(.notFound, "not_found", e.message)
            case .insufficientFunds: return APIError(.conflict, "insufficient_funds", e.message)
            case .balanceLimit: return APIError(.unprocessableContent, "balance_limit", e.message)
            case .idempotencyConflict: return APIError(.unprocessableContent, "idempotency_key_reused", e.message)
            case .invalid: return APIError(.unprocessableContent, "invalid_request", e.message)
            case .nodeUnavailable: return APIError(.serviceUnavailable, "node_unavailable", e.message, retryAfter: 1)
            case .rangeMoving: return APIError(.serviceUnavailable, "range_moving", e.message, retryAfter: 1)
            case .aborted:
                return APIError(.serviceUnavailable, "aborted", "nothing was changed; retry (with the same Idempotency-Key)", retryAfter: 1)
            default:
                return internalError(requestID: requestID)
            }
        case let e as NodeRefused:
            return e.registered ? APIError(.conflict, "node_not_healthy", e.message) : APIError(.unprocessableContent, "invalid_node", e.message)
        case let e as MoveError:
            switch e.code {
            case .notFound: return APIError(.notFound, "unknown_job", e.message)
            case .invalid: return APIError(.unprocessableContent, "invalid_move", e.message)
            case .conflict, .mismatch: return APIError(.conflict, "move_conflict", e.message)
            case .superseded: return APIError(.conflict, "job_busy", e.message)
            }
        case let e as MariaDBError where e.isConnectionBroken || e.isRetryable:
            return APIError(.serviceUnavailable, "unavailable", "a storage node did not answer; nothing is known to have changed — retry with the same Idempotency-Key", retryAfter: 1)
        case is MetadataError:
            return APIError(.serviceUnavailable, "metadata_unavailable", "cluster metadata (etcd) does not answer: opening accounts and metadata changes wait for it, while movements between existing accounts go on; retry shortly", retryAfter: 1)
        case let e as HTTPError:
            return APIError(e.status, "http_error", e.body ?? e.status.reasonPhrase)
        default:
            return internalError(requestID: requestID)
        }
    }

    /// The answer to an error the API does not recognise (``ErrorMiddleware`` logs its cause).
    static func internalError(requestID: String?) -> APIError {
        let id = requestID.map { " \($0)" } ?? ""
        return APIError(.internalServerError, "internal_error",
                        "the server failed in a way it does not recognise; the failure was logged with this answer's request id (X-Request-Id)\(id) — give it when reporting the problem")
    }

    /// MariaDB error numbers that mean a value of the request does not fit: data too long, out of
    /// range, a check constraint, a string the column's character set cannot hold.
    static let inputErrorNumbers: [UInt32: String] = [
        1406: "a value of the request is too long for the ledger",
        1264: "a number of the request is out of the ledger's range",
        4025: "a value of the request breaks a rule of the ledger",
        1366: "a text value of the request cannot be stored",
    ]

    /// The sentence for a database refusal caused by the request's values, searched through the
    /// errors that wrap it.
    static func rejectedInput(_ error: any Error) -> String? {
        var current: (any Error)? = error
        // Bounded: wrapping chains are short, and a cycle must not hang a request.
        for _ in 0..<8 {
            switch current {
            case let e as MariaDBError:
                if let n = e.errorNumber, let sentence = inputErrorNumbers[n] { return sentence }
                current = e.underlying
            case let e as LedgerError:
                current = e.underlying
            default:
                return nil
            }
        }
        return nil
    }
}

/// `{"error": {"code", "message"}}`.
private struct ErrorBody: Encodable {
    struct Inner: Encodable { var code: String; var message: String }
    var error: Inner
}

/// Turns every error thrown by a route into an ``APIError`` answer.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let answer = APIError.from(error, requestID: context.id)
            if answer.status == .internalServerError {
                // The logger carries the request id, which the answer's message points to.
                context.logger.error("request failed with an error the API does not recognise",
                                     metadata: ["code": "\(answer.code)", "error": "\(String(reflecting: error))", "error_type": "\(type(of: error))"])
            } else if answer.status.code >= 500 {
                var metadata: Logger.Metadata = ["code": "\(answer.code)", "error": "\(error)"]
                if let cause = (error as? LedgerError)?.underlying { metadata["cause"] = "\(cause)" }
                context.logger.warning("request failed", metadata: metadata)
            }
            return try answer.response(from: request, context: context)
        }
    }
}

/// Adds `X-Request-Id` (the id in every log line of the request) to every answer.
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        response.headers[HTTPField.Name("X-Request-Id")!] = context.id
        return response
    }
}
