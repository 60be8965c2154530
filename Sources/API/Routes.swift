import ClusterMetadata
import Foundation
import Health
import HTTPTypes
import Hummingbird
import Ledger
import Mover
import Sharding

/// What the routes need from the running service.
public struct APIDependencies: Sendable {
    public var bank: Bank
    public var cache: MetadataCache
    public var health: NodeHealthMonitor
    public var etcd: EtcdProbe
    /// With a mover, the cluster's admin routes are served (`http.admin_routes`).
    public var mover: RangeMover?
    /// Served with the mover: range splits.
    public var splitter: RangeSplitter?
    /// Served with the mover: rebalancing.
    public var rebalancer: Rebalancer?
    /// Served with the mover: a node's ranges and history move away, then it is removed.
    public var drainer: NodeDrainer?
    /// Served with the mover: a node joins (`ctl add-node`'s work; ``NodeRefused`` when it may not).
    public var addNode: (@Sendable (NodeRequest) async throws -> NodeInfo)?
    public init(bank: Bank, cache: MetadataCache, health: NodeHealthMonitor, etcd: EtcdProbe, mover: RangeMover? = nil, splitter: RangeSplitter? = nil,
                rebalancer: Rebalancer? = nil, drainer: NodeDrainer? = nil, addNode: (@Sendable (NodeRequest) async throws -> NodeInfo)? = nil) {
        self.drainer = drainer
        self.bank = bank
        self.cache = cache
        self.health = health
        self.etcd = etcd
        self.mover = mover
        self.splitter = splitter
        self.rebalancer = rebalancer
        self.addNode = addNode
    }
}

/// A node to add, as `POST /v1/cluster/nodes` names it.
public struct NodeRequest: Sendable, Hashable {
    public var id: String
    public var host: String
    public var port: Int
    public var database: String
    public var tlsMode: String
}

/// Why a node was not added, said as the admission says it: `registered` when it was registered
/// `joining` but its agent did not beat healthy in time (start the agent, then ask again).
public struct NodeRefused: Error, Sendable, CustomStringConvertible {
    public var registered: Bool
    public var message: String
    public init(registered: Bool, message: String) {
        self.registered = registered
        self.message = message
    }
    public var description: String { message }
}

/// A node's health as the API shows it.
struct NodeHealthJSON: ResponseEncodable {
    var node: String
    var state: String
    var healthy: Bool
    var heartbeat_age_ms: Int64?
    var reason: String?

    init(_ h: NodeHealth) {
        node = h.node
        state = h.state.rawValue
        healthy = h.state == .healthy
        heartbeat_age_ms = h.heartbeatAge?.milliseconds
        reason = h.reason
    }
}

/// An account as the API shows it.
struct AccountJSON: ResponseEncodable {
    var account_id: Int64
    var customer_name: String
    var balance: String
    var balance_range: String
    var node: String

    init(_ a: Account) {
        account_id = a.id
        customer_name = a.customerName
        balance = a.balance.description
        balance_range = a.range
        node = a.node
    }
}

/// A deposit's or withdrawal's answer: the account after the movement. `customer_name`,
/// `balance_range` and `node` come from a read after the movement and are absent when it failed.
struct MovementJSON: ResponseEncodable {
    var account_id: Int64
    var customer_name: String?
    var balance: String
    var balance_range: String?
    var node: String?
    var transfer_id: String
    var replayed: Bool

    init(id: Int64, balance: Money, result: MovementResult, account: Account?) {
        account_id = id
        customer_name = account?.customerName
        self.balance = balance.description
        balance_range = account?.range
        node = account?.node
        transfer_id = result.transferID
        replayed = result.replayed
    }
}

struct TransferJSON: ResponseEncodable {
    var transfer_id: String
    var state: String
    var from: Int64
    var to: Int64
    var amount: String
    var from_balance: String?
    var to_balance: String?
    var replayed: Bool
}

/// `POST /v1/cluster/rebalance` with `dry_run`: rows per node now, the plan, the rows after it (estimated).
struct RebalancePlanAnswer: Encodable {
    var rows: [String: Int]
    var steps: [String]
    var projected: [String: Int]
    var notes: [String]
}

/// The HTTP JSON API (`docs/openapi.yaml` lists the routes). Money is a decimal string.
public enum BankRoutes {
    /// Range moves and jobs, with `http.admin_routes`: a move is recorded and answered 202; a
    /// `serve` (``MoveSupervisor``) runs it.
    static func adminRoutes(_ router: Router<BasicRequestContext>, mover: RangeMover, splitter: RangeSplitter?, rebalancer: Rebalancer?,
                            drainer: NodeDrainer?, addNode: (@Sendable (NodeRequest) async throws -> NodeInfo)?) {
        if let drainer {
            // `{}`: recorded for the serves (202); one of them runs it.
            router.post("/v1/cluster/nodes/{id}/drain") { request, context -> Response in
                _ = try await RequestBody.read(request, context: context, allowed: [])
                let job = try await drainer.create(node: context.parameters.get("id") ?? "", runBy: "serve")
                return try jsonResponse(job.record, status: .accepted)
            }
        }
        if let addNode {
            // Waits for the node's agent to beat healthy (up to 15 s), as `ctl add-node` does.
            router.post("/v1/cluster/nodes") { request, context -> Response in
                let body = try await RequestBody.read(request, context: context, allowed: ["id", "host", "port", "database", "tls_mode"])
                let port = try body.int64("port")
                guard (1...65535).contains(port) else { throw APIError(.unprocessableContent, "invalid_field", "field \"port\" must be between 1 and 65535") }
                let tlsMode = body.has("tls_mode") ? try body.string("tls_mode") : "disabled"
                let node = try await addNode(NodeRequest(id: try body.string("id"), host: try body.string("host"), port: Int(port),
                                                         database: try body.string("database"), tlsMode: tlsMode))
                return try jsonResponse(node, status: .created)
            }
        }
        @Sendable func mapName(_ context: BasicRequestContext) throws -> MetadataKeys.MapName {
            let name = context.parameters.get("map") ?? ""
            guard let map = MetadataKeys.MapName(rawValue: name) else {
                throw APIError(.notFound, "unknown_map", "no map \(name.prefix(40)); the maps are accounts and directory")
            }
            return map
        }
        router.post("/v1/cluster/ranges/{map}/{id}/move") { request, context -> Response in
            let map = try mapName(context)
            let body = try await RequestBody.read(request, context: context, allowed: ["to"])
            let job = try await mover.create(map: map, range: context.parameters.get("id") ?? "", to: try body.string("to"), runBy: "serve")
            return try jsonResponse(job.record, status: .accepted)
        }
        if let splitter {
            // `{}` splits at the median; `at` (a balance, accounts) or `at_hash` (a decimal string, directory) at a key.
            router.post("/v1/cluster/ranges/{map}/{id}/split") { request, context -> Response in
                let map = try mapName(context)
                let body = try await RequestBody.read(request, context: context, allowed: ["at", "at_hash"])
                var at: Int64?
                switch map {
                case .accounts:
                    if body.has("at_hash") { throw APIError(.unprocessableContent, "invalid_field", "accounts ranges split at a balance: send \"at\", not \"at_hash\"") }
                    if body.has("at") { at = try body.money("at").minorUnits }
                case .directory:
                    if body.has("at") { throw APIError(.unprocessableContent, "invalid_field", "directory ranges split at a hash: send \"at_hash\", not \"at\"") }
                    if body.has("at_hash") {
                        guard let hash = Int64(try body.string("at_hash")) else {
                            throw APIError(.unprocessableContent, "invalid_field", "field \"at_hash\" must be a whole number written as a string, such as \"-4611686018427387904\"")
                        }
                        at = hash
                    }
                }
                let job = try await splitter.create(map: map, range: context.parameters.get("id") ?? "", at: at, runBy: "serve")
                return try jsonResponse(job.record, status: .accepted)
            }
        }
        if let rebalancer {
            // `{"dry_run": true}` answers the plan (200, nothing written); otherwise the job, run by a serve (202).
            router.post("/v1/cluster/rebalance") { request, context -> Response in
                let body = try await RequestBody.read(request, context: context, allowed: ["dry_run", "tolerance", "max_range_rows"])
                var options = Rebalancer.Options()
                if body.has("tolerance") {
                    let tolerance = try body.int64("tolerance")
                    guard (1...100).contains(tolerance) else { throw APIError(.unprocessableContent, "invalid_field", "field \"tolerance\" must be a percentage from 1 to 100") }
                    options.tolerance = Int(tolerance)
                }
                if body.has("max_range_rows") {
                    let rows = try body.int64("max_range_rows")
                    guard rows >= 2 else { throw APIError(.unprocessableContent, "invalid_field", "field \"max_range_rows\" must be at least 2") }
                    options.maxRangeRows = Int(min(rows, Int64(Int32.max)))
                }
                if try body.bool("dry_run") ?? false {
                    let (plan, rows) = try await rebalancer.plan(options)
                    return try jsonResponse(RebalancePlanAnswer(rows: rows, steps: plan.steps.map(\.description), projected: plan.projected, notes: plan.notes), status: .ok)
                }
                return try jsonResponse(try await rebalancer.create(options, runBy: "serve").record, status: .accepted)
            }
        }
        router.get("/v1/cluster/jobs") { _, _ -> Response in
            try jsonResponse(["jobs": try await mover.store.jobs().map(\.record)], status: .ok)
        }
        router.get("/v1/cluster/jobs/{id}") { _, context -> Response in
            let id = context.parameters.get("id") ?? ""
            guard let job = try await mover.store.job(id) else {
                throw APIError(.notFound, "unknown_job", "no job \(id.prefix(64)); GET /v1/cluster/jobs lists them")
            }
            return try jsonResponse(job.record, status: .ok)
        }
        // Handed to the serves (run_by serve): the one whose supervisor claims it first runs it.
        router.post("/v1/cluster/jobs/{id}/resume") { request, context -> Response in
            _ = try await RequestBody.read(request, context: context, allowed: [])
            return try jsonResponse(try await JobRequests.request(.resume, job: context.parameters.get("id") ?? "", store: mover.store), status: .accepted)
        }
        router.post("/v1/cluster/jobs/{id}/cancel") { request, context -> Response in
            _ = try await RequestBody.read(request, context: context, allowed: [])
            return try jsonResponse(try await JobRequests.request(.cancel, job: context.parameters.get("id") ?? "", store: mover.store), status: .accepted)
        }
    }

    public static func router(_ deps: APIDependencies) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: RequestIDMiddleware())
        router.add(middleware: ErrorMiddleware())
        let bank = deps.bank
        let cache = deps.cache
        let health = deps.health
        let etcd = deps.etcd

        router.get("/healthz") { _, _ in ["status": "ok"] }
        router.get("/readyz") { _, _ -> Response in
            let snapshot = cache.snapshot
            guard snapshot.accounts != nil, snapshot.directory != nil else {
                throw APIError(.serviceUnavailable, "not_ready", "cluster metadata not loaded yet", retryAfter: 1)
            }
            // Degraded, not unready: with etcd gone the service still moves money with its last maps,
            // so it must stay in the load balancer.
            if let reason = etcd.unreachable {
                return try jsonResponse(["status": "degraded", "etcd": "unreachable", "reason": reason], status: .ok)
            }
            return try jsonResponse(["status": "ready", "etcd": "ok"], status: .ok)
        }
        router.get("/v1/cluster") { _, _ -> Response in
            let s = cache.snapshot
            struct Cluster: Encodable {
                var revision: Int64
                var maps: [RangeMap]
                var nodes: [NodeInfo]
                var health: [NodeHealthJSON]
                var etcd: String
                var degraded_reason: String?
            }
            let unreachable = etcd.unreachable
            return try jsonResponse(Cluster(revision: s.revision, maps: [s.accounts?.map, s.directory?.map].compactMap { $0 },
                                            nodes: s.nodes.values.sorted { $0.id < $1.id }, health: health.all().map(NodeHealthJSON.init),
                                            etcd: unreachable == nil ? "ok" : "unreachable", degraded_reason: unreachable), status: .ok)
        }
        if let mover = deps.mover { adminRoutes(router, mover: mover, splitter: deps.splitter, rebalancer: deps.rebalancer, drainer: deps.drainer, addNode: deps.addNode) }
        router.get("/v1/cluster/nodes/{id}/health") { _, context -> Response in
            let id = context.parameters.get("id") ?? ""
            guard cache.snapshot.nodes[id] != nil else {
                throw APIError(.notFound, "unknown_node", "no node \(id) is registered; GET /v1/cluster lists the nodes")
            }
            return try jsonResponse(NodeHealthJSON(health.health(of: id)), status: .ok)
        }
        router.post("/v1/accounts") { request, context -> Response in
            let body = try await RequestBody.read(request, context: context, allowed: ["customer_name", "balance"])
            let name = try body.customerName("customer_name")
            let balance = try body.money("balance")
            guard balance.minorUnits >= 0 else { throw APIError(.unprocessableContent, "invalid_amount", "balance cannot be negative") }
            let account = try await bank.openAccount(customerName: name, balance: balance,
                                                    idempotencyKey: try idempotencyKey(request, or: bank.freshKey(opening: balance)))
            return try jsonResponse(AccountJSON(account), status: .created)
        }
        router.get("/v1/accounts/{id}") { _, context -> Response in
            try jsonResponse(AccountJSON(try await bank.account(try accountID(context))), status: .ok)
        }
        for (verb, positive) in [("deposit", true), ("withdraw", false)] {
            router.post("/v1/accounts/{id}/\(verb)") { request, context -> Response in
                let id = try accountID(context)
                let body = try await RequestBody.read(request, context: context, allowed: ["amount"])
                let amount = try positiveAmount(body)
                let key = try idempotencyKey(request, or: bank.freshKey(home: id))
                let result = positive
                    ? try await bank.deposit(id, amount: amount, idempotencyKey: key)
                    : try await bank.withdraw(id, amount: amount, idempotencyKey: key)
                // The money has moved, so no answer from here on may say "nothing was changed". A 200
                // is the honest and simplest one: the movement reported the balance itself, and the
                // re-read only adds name, range and node — when it fails those are left out rather
                // than turning a done deposit into an error a client might "fix" with a new key.
                let account: Account?
                do { account = try await bank.account(id) } catch {
                    context.logger.warning("account not re-read after a movement", metadata: ["transfer_id": "\(result.transferID)", "error": "\(error)"])
                    account = nil
                }
                guard let balance = result.balances[id] ?? account?.balance else {
                    throw APIError(.internalServerError, "applied_unreadable",
                                   "the \(verb) \(result.transferID) WAS applied, but the new balance could not be read; read it with GET /v1/accounts/\(id) — do not send the \(verb) again with a new Idempotency-Key")
                }
                return try jsonResponse(MovementJSON(id: id, balance: balance, result: result, account: account), status: .ok)
            }
        }
        router.get("/v1/accounts") { request, context -> Response in
            let q = request.uri.queryParameters
            let node = q["node"].map(String.init)
            let range = q["range"].map(String.init)
            guard (node == nil) != (range == nil) else {
                throw APIError(.unprocessableContent, "invalid_query", "give exactly one of ?node= or ?range=")
            }
            let limit = try intParameter(q["limit"].map(String.init), name: "limit", default: 100, range: 1...1000)
            let cursor = try q["cursor"].map { text -> Int64 in
                guard let v = Int64(text), v >= 0 else { throw APIError(.unprocessableContent, "invalid_query", "cursor must be a value this API returned") }
                return v
            }
            let snapshot = cache.snapshot
            try checkListTarget(node: node, range: range, nodes: snapshot.nodes, accounts: snapshot.accounts?.map)
            let page: (accounts: [Account], next: Int64?)
            do { page = try await bank.accounts(node: node, range: range, limit: limit, after: cursor) } catch let error as LedgerError where error.code == .notFound && range != nil {
                throw unknownRange(range!)
            }
            struct Page: Encodable { var accounts: [AccountJSON]; var next_cursor: String? }
            return try jsonResponse(Page(accounts: page.accounts.map { AccountJSON($0) }, next_cursor: page.next.map(String.init)), status: .ok)
        }
        router.get("/v1/accounts/{id}/entries") { request, context -> Response in
            let id = try accountID(context)
            let q = request.uri.queryParameters
            let limit = try intParameter(q["limit"].map(String.init), name: "limit", default: 100, range: 1...1000)
            let page = try await bank.entries(of: id, limit: limit, after: q["cursor"].map(String.init))
            struct Entry: Encodable { var transfer_id: String; var amount: String; var balance_after: String; var created_at: String; var node: String }
            struct Page: Encodable { var account_id: Int64; var entries: [Entry]; var next_cursor: String? }
            return try jsonResponse(Page(account_id: id, entries: page.entries.map {
                Entry(transfer_id: $0.transferID, amount: $0.amount.description, balance_after: $0.balanceAfter.description,
                      created_at: $0.createdAt.description, node: $0.node)
            }, next_cursor: page.next), status: .ok)
        }
        router.get("/v1/transfers/{id}") { _, context -> Response in
            guard let id = context.parameters.get("id"), (1...64).contains(id.utf8.count) else {
                throw APIError(.notFound, "not_found", "no such transfer")
            }
            let t = try await bank.transferRecord(id)
            struct Out: Encodable { var transfer_id: String; var kind: String; var state: String; var from: Int64?; var to: Int64?; var amount: String }
            return try jsonResponse(Out(transfer_id: t.transferID, kind: t.kind, state: t.state, from: t.fromAccount, to: t.toAccount,
                                        amount: t.amount.description), status: .ok)
        }
        router.post("/v1/transfers") { request, context -> Response in
            let body = try await RequestBody.read(request, context: context, allowed: ["from", "to", "amount"])
            let from = try body.int64("from")
            let to = try body.int64("to")
            guard from != to else { throw APIError(.unprocessableContent, "same_account", "from and to must be different accounts") }
            let amount = try positiveAmount(body)
            let result = try await bank.transfer(from: from, to: to, amount: amount, idempotencyKey: try idempotencyKey(request, or: bank.freshKey(home: from)))
            return try jsonResponse(TransferJSON(transfer_id: result.transferID, state: "committed", from: from, to: to, amount: amount.description,
                                                 from_balance: result.balances[from]?.description, to_balance: result.balances[to]?.description,
                                                 replayed: result.replayed), status: .created)
        }
        return router
    }

    /// The target of `GET /v1/accounts`, checked against the registry and the map before the bank is
    /// asked: an unknown node would otherwise reach the connection pool and come back as a failure.
    static func checkListTarget(node: String?, range: String?, nodes: [String: NodeInfo], accounts: RangeMap?) throws {
        guard let accounts else {
            // Not loaded yet, so "unknown" would be a guess.
            throw APIError(.serviceUnavailable, "not_ready", "cluster metadata not loaded yet", retryAfter: 1)
        }
        if let node, nodes[node] == nil {
            throw APIError(.notFound, "unknown_node", "no node \(node.prefix(64)) is registered; GET /v1/cluster lists the nodes")
        }
        if let range, accounts.range(id: range) == nil { throw unknownRange(range) }
    }

    static func unknownRange(_ range: String) -> APIError {
        APIError(.notFound, "unknown_range", "no accounts range \(range.prefix(64)); GET /v1/cluster lists the ranges")
    }

    /// Amounts: > 0 and within DECIMAL(19,2) (Money's range, 92,233,720,368,547,758.07, is narrower).
    static func positiveAmount(_ body: RequestBody) throws -> Money {
        let amount = try body.money("amount")
        guard amount.minorUnits > 0 else { throw APIError(.unprocessableContent, "invalid_amount", "amount must be more than 0.00") }
        return amount
    }

    static func intParameter(_ text: String?, name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text else { return value }
        guard let v = Int(text), range.contains(v) else {
            throw APIError(.unprocessableContent, "invalid_query", "\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return v
    }

    static func accountID(_ context: some RequestContext) throws -> Int64 {
        guard let text = context.parameters.get("id"), let id = Int64(text), id > 0 else {
            throw APIError(.notFound, "not_found", "no such account: account ids are positive whole numbers")
        }
        return id
    }

    /// The `Idempotency-Key` header (1–64 of `A–Z a–z 0–9 . _ : -`), or `fresh` when absent (the
    /// ledger's: a random key it can claim on the node the request writes on anyway).
    static func idempotencyKey(_ request: Request, or fresh: @autoclosure () -> String) throws -> String {
        guard let key = request.headers[HTTPField.Name("Idempotency-Key")!] else { return fresh() }
        guard (1...64).contains(key.utf8.count), key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".:_-".contains($0)) }) else {
            throw APIError(.badRequest, "invalid_idempotency_key", "Idempotency-Key must be 1 to 64 characters of letters, digits, '.', ':', '_' or '-'")
        }
        return key
    }

    static func jsonResponse(_ value: some Encodable, status: HTTPResponse.Status) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return Response(status: status, headers: [.contentType: "application/json; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }
}
