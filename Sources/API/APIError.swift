import ClusterMetadata
import Foundation
import HTTPTypes
import Hummingbird
import Ledger
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

    /// Maps any error to its answer. Messages never carry SQL, parameters or credentials.
    public static func from(_ error: any Error) -> APIError {
        switch error {
        case let e as APIError:
            return e
        case let e as LedgerError:
            switch e.code {
            case .notFound: return APIError(.notFound, "not_found", e.message)
            case .insufficientFunds: return APIError(.conflict, "insufficient_funds", e.message)
            case .idempotencyConflict: return APIError(.unprocessableContent, "idempotency_key_reused", e.message)
            case .invalid: return APIError(.unprocessableContent, "invalid_request", e.message)
            case .nodeUnavailable: return APIError(.serviceUnavailable, "node_unavailable", e.message, retryAfter: 1)
            case .outcomeUnknown:
                return APIError(.serviceUnavailable, "outcome_unknown", "the outcome is not known yet; retry with the same Idempotency-Key to learn it", retryAfter: 2)
            default:
                return APIError(.serviceUnavailable, e.code.rawValue, "nothing was changed; retry (with the same Idempotency-Key)", retryAfter: 1)
            }
        case let e as HTTPError:
            return APIError(e.status, "http_error", e.body ?? e.status.reasonPhrase)
        case is MetadataError:
            return APIError(.serviceUnavailable, "metadata_unavailable", "cluster metadata (etcd) does not answer: opening accounts and metadata changes wait for it, while movements between existing accounts go on; retry shortly", retryAfter: 1)
        default:
            return APIError(.serviceUnavailable, "unavailable", "a storage node or etcd did not answer; nothing is known to have changed — retry with the same Idempotency-Key", retryAfter: 1)
        }
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
            let answer = APIError.from(error)
            if answer.status.code >= 500 {
                context.logger.warning("request failed", metadata: ["code": "\(answer.code)", "error": "\(error)"])
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
