import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// A client of etcd's v3 API through its JSON gateway (HTTP/1.1 keep-alive).
///
/// Failover: a call goes to the preferred member; when that member refuses, times out or has no
/// leader, the call moves on to the next member. Reads move on freely. A mutation moves on only when
/// it certainly did not reach the member (connect failure, no leader); when it may have been applied,
/// the call fails with `.outcomeUnknown` and is never replayed.
public final class EtcdClient: Sendable {
    public let configuration: EtcdConfiguration
    let http: HTTPClient
    let logger: Logger
    private let state: Mutex<State>

    private struct State {
        var selector: EndpointSelector
        var token: String?
        var isShutDown = false
        var authentications = 0
    }

    /// How many times the client obtained a token (1 at first use; more after expiries).
    public var authentications: Int { state.withLock { $0.authentications } }

    public init(configuration: EtcdConfiguration, eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .nanoseconds(configuration.connectTimeout.nanoseconds), read: nil)
        config.httpVersion = .http1Only
        config.connectionPool = .init(idleTimeout: .seconds(60))
        config.redirectConfiguration = .disallow
        if let caFile = configuration.tlsCAFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(caFile)
            config.tlsConfiguration = tls
        }
        self.http = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: config)
        self.state = Mutex(State(selector: EndpointSelector(endpoints: configuration.endpoints)))
    }

    /// Closes every connection. Call once, before the client is dropped.
    public func shutdown() async throws {
        state.withLock { $0.isShutDown = true }
        try await http.shutdown()
    }

    // MARK: KV

    /// Reads one key; nil when absent.
    public func get(_ key: String, consistency: EtcdConsistency = .linearizable) async throws(EtcdError) -> EtcdKeyValue? {
        try await range(.key(key), consistency: consistency).kvs.first
    }

    /// Reads a key or every key under a prefix, in key order.
    public func range(_ selector: EtcdKeySelector, limit: Int64 = 0, consistency: EtcdConsistency = .linearizable) async throws(EtcdError) -> EtcdRangeResult {
        let request = WireRangeRequest(key: base64(selector.key), range_end: selector.rangeEnd.map(base64),
                                       limit: limit > 0 ? WireInt64(limit) : nil,
                                       serializable: consistency == .serializable ? true : nil)
        let response: WireRangeResponse = try await unary("/v3/kv/range", request, mutation: false)
        return response.model
    }

    /// Writes a value; returns the store revision of the write.
    @discardableResult
    public func put(_ key: String, value: [UInt8], lease: Int64? = nil) async throws(EtcdError) -> Int64 {
        let request = WirePutRequest(key: base64(key), value: base64(value), lease: lease.map(WireInt64.init))
        let response: WirePutResponse = try await unary("/v3/kv/put", request, mutation: true)
        return response.header?.revision?.value ?? 0
    }

    @discardableResult
    public func put(_ key: String, _ value: String, lease: Int64? = nil) async throws(EtcdError) -> Int64 {
        try await put(key, value: Array(value.utf8), lease: lease)
    }

    /// Deletes a key or a prefix; returns how many keys went.
    @discardableResult
    public func delete(_ selector: EtcdKeySelector) async throws(EtcdError) -> Int64 {
        let request = WireDeleteRequest(key: base64(selector.key), range_end: selector.rangeEnd.map(base64))
        let response: WireDeleteResponse = try await unary("/v3/kv/deleterange", request, mutation: true)
        return response.deleted?.value ?? 0
    }

    /// An atomic transaction: if every compare holds, `success` runs, else `failure`.
    public func transaction(compare: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []) async throws(EtcdError) -> EtcdTxnResult {
        let request = WireTxnRequest(compare: compare.map(WireCompare.init), success: success.map(WireRequestOp.init), failure: failure.map(WireRequestOp.init))
        let readOnly = (success + failure).allSatisfy { if case .get = $0 { true } else { false } }
        let response: WireTxnResponse = try await unary("/v3/kv/txn", request, mutation: !readOnly)
        return EtcdTxnResult(succeeded: response.succeeded ?? false, revision: response.header?.revision?.value ?? 0,
                             results: (response.responses ?? []).map(\.model))
    }

    // MARK: leases

    /// Grants a lease of `ttl` seconds (etcd's minimum is 2 with its default election timeout).
    /// A grant whose answer is lost only leaves an unused lease that expires by itself, so it is retried.
    public func grantLease(ttl: Int64) async throws(EtcdError) -> EtcdLease {
        let response: WireLeaseGrantResponse = try await unary("/v3/lease/grant", WireLeaseGrantRequest(TTL: WireInt64(ttl), ID: WireInt64(0)), mutation: false)
        guard let id = response.ID?.value, id != 0 else {
            throw EtcdError(code: .server, message: "lease grant refused: \(response.error ?? "no lease id in the answer")")
        }
        return EtcdLease(id: id, ttl: response.TTL?.value ?? ttl)
    }

    /// Revokes a lease; every key attached to it is deleted at once.
    public func revokeLease(_ id: Int64) async throws(EtcdError) {
        let _: WireEmpty = try await unary("/v3/lease/revoke", WireLeaseIDRequest(ID: WireInt64(id)), mutation: false)
    }

    /// Renews a lease once; returns its remaining TTL, or nil when the lease no longer exists.
    public func keepAliveOnce(_ id: Int64) async throws(EtcdError) -> Int64? {
        let response: WireLeaseKeepAliveResponse = try await unary("/v3/lease/keepalive", WireLeaseIDRequest(ID: WireInt64(id)), mutation: false)
        guard let ttl = response.result?.TTL?.value, ttl > 0 else { return nil }
        return ttl
    }

    // MARK: maintenance

    /// The status of member `endpoint` (one of the configured URLs), asked of that member only.
    public func status(endpoint: String, timeout: Duration? = nil) async throws(EtcdError) -> EtcdMemberStatus {
        let bytes = try await send(endpoint: endpoint, path: "/v3/maintenance/status", body: Data("{}".utf8),
                                   token: state.withLock { $0.token }, timeout: timeout ?? configuration.requestTimeout)
        guard bytes.status == .ok else { throw serverError(bytes.body, endpoint: endpoint) }
        let s: WireStatusResponse = try decode(bytes.body, endpoint: endpoint)
        return EtcdMemberStatus(endpoint: endpoint, version: s.version ?? "", dbSize: s.dbSize?.value ?? 0,
                                leader: UInt64(bitPattern: s.leader?.value ?? 0), memberID: UInt64(bitPattern: s.header?.member_id?.value ?? 0),
                                revision: s.header?.revision?.value ?? 0)
    }

    // MARK: transport

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    func currentEndpointIndex() -> Int { state.withLock { $0.selector.current(now: Self.now()) } }

    func endpointFailed(_ index: Int) {
        let q = configuration.quarantine.nanoseconds
        state.withLock { $0.selector.failed(index, now: Self.now(), quarantineNanoseconds: UInt64(q)) }
    }

    func tokenSnapshot() -> String? { state.withLock { $0.token } }

    func endpointSucceeded(_ index: Int) { state.withLock { $0.selector.succeeded(index) } }

    /// One unary call with failover, re-authentication and the outcome-unknown rule.
    func unary<Request: Encodable, Response: Decodable>(_ path: String, _ request: Request, mutation: Bool) async throws(EtcdError) -> Response {
        let body: Data
        do { body = try JSONEncoder().encode(request) } catch {
            throw EtcdError(code: .protocolError, message: "cannot encode request for \(path)", underlying: error)
        }
        var reauthenticated = false
        var lastError: EtcdError?
        let clock = ContinuousClock()
        let start = clock.now
        var attempts = 0
        // A member that answers "unavailable" (no leader: an election is under way) is alive, so the
        // call goes round the members again until `leaderElectionWait` runs out. A read that timed
        // out may have waited on a leader that is gone (a linearizable read blocks through the
        // election), and reads are safe to repeat, so reads go round again too — unless there is one
        // member, which holds no election. Members that refuse connections get one try each: an
        // unreachable etcd fails fast.
        var sawLiveMember = false
        var readTimedOut = false
        while true {
            if attempts >= configuration.endpoints.count {
                guard sawLiveMember || readTimedOut, clock.now - start < configuration.leaderElectionWait else { break }
                try? await Task.sleep(for: .milliseconds(100))
                attempts = 0
                sawLiveMember = false
                readTimedOut = false
            }
            attempts += 1
            if state.withLock({ $0.isShutDown }) { throw EtcdError(code: .shutDown, message: "the etcd client is shut down") }
            let index = currentEndpointIndex()
            let endpoint = configuration.endpoints[index]
            let token: String?
            do { token = try await tokenForRequest() } catch {
                if error.code == .authenticationFailed { throw error }
                lastError = error
                continue
            }
            let answer: (status: HTTPResponseStatus, body: Data)
            do {
                answer = try await send(endpoint: endpoint, path: path, body: body, token: token, timeout: configuration.requestTimeout)
            } catch {
                endpointFailed(index)
                if error.code == .unavailable || !mutation {
                    if error.code == .outcomeUnknown && configuration.endpoints.count > 1 { readTimedOut = true }
                    logger.debug("etcd member failed; trying another", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                    lastError = error
                    continue
                }
                throw EtcdError(code: .outcomeUnknown, message: "the request \(path) reached \(endpoint) but its answer was lost; it may or may not have been applied — read the state before acting again",
                                endpoint: endpoint, underlying: error)
            }
            if answer.status == .ok {
                endpointSucceeded(index)
                return try decode(answer.body, endpoint: endpoint)
            }
            let error = serverError(answer.body, endpoint: endpoint)
            switch error.grpcCode {
            case 16 where !reauthenticated && configuration.username != nil:
                // The token expired: authenticate again, once. The request was refused, so it is safe to resend.
                logger.debug("etcd token no longer valid; authenticating again", metadata: ["endpoint": "\(endpoint)"])
                reauthenticated = true
                state.withLock { $0.token = nil }
                attempts -= 1
                continue
            case 14:
                endpointFailed(index)
                sawLiveMember = true
                if mutation && !error.message.contains("no leader") {
                    throw EtcdError(code: .outcomeUnknown, message: "etcd at \(endpoint) answered \"\(error.message)\" to \(path); the change may or may not have been applied",
                                    endpoint: endpoint, grpcCode: 14)
                }
                lastError = EtcdError(code: .unavailable, message: error.message, endpoint: endpoint, grpcCode: 14)
                continue
            default:
                throw error
            }
        }
        throw EtcdError(code: .unavailable, message: "no etcd member answered (tried \(configuration.endpoints.joined(separator: ", ")); check etcd.endpoints and that etcd runs): \(lastError?.message ?? "unknown error")",
                        endpoint: lastError?.endpoint, underlying: lastError)
    }

    /// The token to send, authenticating first when credentials are configured and there is none.
    private func tokenForRequest() async throws(EtcdError) -> String? {
        guard let username = configuration.username else { return nil }
        if let token = state.withLock({ $0.token }) { return token }
        let request = WireAuthRequest(name: username, password: configuration.password ?? "")
        let body = try! JSONEncoder().encode(request)
        var lastError: EtcdError?
        for _ in 0..<configuration.endpoints.count {
            let index = currentEndpointIndex()
            let endpoint = configuration.endpoints[index]
            do throws(EtcdError) {
                let answer = try await send(endpoint: endpoint, path: "/v3/auth/authenticate", body: body, token: nil, timeout: configuration.requestTimeout)
                guard answer.status == .ok else {
                    let error = serverError(answer.body, endpoint: endpoint)
                    if error.grpcCode == 3 || error.grpcCode == 16 || error.grpcCode == 9 {
                        throw EtcdError(code: .authenticationFailed, message: "etcd refused the credentials of user \"\(username)\": \(error.message); check etcd.username and the etcd password file",
                                        endpoint: endpoint, grpcCode: error.grpcCode)
                    }
                    if error.grpcCode == 14 { endpointFailed(index); lastError = error; continue }
                    throw error
                }
                let auth: WireAuthResponse = try decode(answer.body, endpoint: endpoint)
                guard let token = auth.token else { throw EtcdError(code: .protocolError, message: "authenticate answered without a token", endpoint: endpoint) }
                state.withLock {
                    $0.token = token
                    $0.authentications += 1
                }
                endpointSucceeded(index)
                return token
            } catch {
                if error.code == .authenticationFailed || error.code == .server { throw error }
                endpointFailed(index)
                lastError = error
            }
        }
        throw EtcdError(code: .unavailable, message: "no etcd member answered the authentication: \(lastError?.message ?? "")", underlying: lastError)
    }

    /// POSTs `body` to one member. Throws `.unavailable` when the request certainly did not reach
    /// it (connect failure), `.outcomeUnknown` otherwise.
    func send(endpoint: String, path: String, body: Data, token: String?, timeout: Duration) async throws(EtcdError) -> (status: HTTPResponseStatus, body: Data) {
        var request = HTTPClientRequest(url: endpoint + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let token { request.headers.add(name: "Authorization", value: token) }
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await http.execute(request, deadline: .now() + .nanoseconds(timeout.nanoseconds), logger: logger)
            let buffer = try await response.body.collect(upTo: 64 << 20)
            return (response.status, Data(buffer.readableBytesView))
        } catch {
            let notSent = Self.certainlyNotSent(error)
            throw EtcdError(code: notSent ? .unavailable : .outcomeUnknown, message: "\(path) on \(endpoint) failed: \(Self.describe(error))",
                            endpoint: endpoint, underlying: error)
        }
    }

    /// Connect-phase failures: the member never saw the request.
    static func certainlyNotSent(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError {
            return e == .connectTimeout || e == .getConnectionFromPoolTimeout || e == .invalidURL || e == .alreadyShutdown
        }
        if error is NIOConnectionError { return true }
        if let e = error as? ChannelError, case .connectTimeout = e { return true }
        if let e = error as? IOError { return [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH].contains(e.errnoCode) }
        return false
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError { return "\(e)" }
        if let e = error as? NIOConnectionError { return "connection refused or unreachable (\(e.dnsAAAAError == nil ? "" : "dns, ")\(e.connectionErrors.map { "\($0.error)" }.joined(separator: "; ")))" }
        return String(describing: error)
    }

    func decode<T: Decodable>(_ data: Data, endpoint: String) throws(EtcdError) -> T {
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw EtcdError(code: .protocolError, message: "cannot decode etcd's answer", endpoint: endpoint, underlying: error)
        }
    }

    func serverError(_ data: Data, endpoint: String) -> EtcdError {
        let body = try? JSONDecoder().decode(WireErrorBody.self, from: data)
        let code = body?.code ?? body?.grpc_code
        let message = body?.message ?? body?.error ?? String(decoding: data.prefix(200), as: UTF8.self)
        return EtcdError(code: .server, message: message, endpoint: endpoint, grpcCode: code)
    }
}

extension Duration {
    /// Whole nanoseconds.
    var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }
}

extension EtcdClient {
    /// Compacts the store's history up to `revision` (watches from before it then fail with `.compacted`).
    public func compact(revision: Int64) async throws(EtcdError) {
        struct Request: Encodable { var revision: WireInt64; var physical: Bool }
        let _: WireEmpty = try await unary("/v3/kv/compaction", Request(revision: WireInt64(revision), physical: true), mutation: false)
    }
}

extension EtcdClient {
    /// Runs `body` with a new client that is shut down afterwards, whether `body` returns or throws.
    public static func with<T>(configuration: EtcdConfiguration, logger: Logger, _ body: (EtcdClient) async throws -> T) async throws -> T {
        let client = EtcdClient(configuration: configuration, logger: logger)
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}
