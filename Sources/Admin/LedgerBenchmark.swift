import Foundation
import Ledger
import Logging
import MariaDB
import Sharding
import Synchronization

/// `shardbank bench`: a TPC-B-like load (pgbench's tpcb-like is the model) on the ledger — transfers
/// (a share of them across nodes), deposits and reads by N concurrent clients — and, with
/// `--baseline`, the same SQL transactions straight on one node with plain connections.
public struct LedgerBenchmark: Sendable {
    public struct Options: Sendable {
        public var clients: Int
        public var duration: Duration
        /// The share of transfers whose two accounts are on different nodes (0…1).
        public var crossNode: Double
        public var accountsPerNode: Int
        /// ``xaAnchor`` only: run each node's part of a cross-node transfer with its connection's
        /// executor preferred (one thread hop per change of node); false hops to the connection's thread
        /// and back for every statement, as a caller on the cooperative pool does.
        public var anchorPrefersConnectionExecutor: Bool
        public init(clients: Int, duration: Duration, crossNode: Double, accountsPerNode: Int = 100, anchorPrefersConnectionExecutor: Bool = true) {
            self.clients = clients
            self.duration = duration
            self.crossNode = crossNode
            self.accountsPerNode = accountsPerNode
            self.anchorPrefersConnectionExecutor = anchorPrefersConnectionExecutor
        }
    }

    /// A client's failure, by the code it reports (e.g. the API's error code).
    public struct ClientError: Error, Sendable, CustomStringConvertible {
        public var code: String
        /// What the server said (the API's `message`), or the transport's failure.
        public var message: String
        public init(code: String, message: String = "") {
            self.code = code
            self.message = message
        }
        public var description: String { message.isEmpty ? code : "\(code): \(message)" }
    }

    /// One operation of the mix, through whatever client the caller chooses (library or HTTP).
    public struct Client: Sendable {
        public var transfer: @Sendable (_ from: Int64, _ to: Int64, _ amount: Money, _ key: String) async throws -> Void
        public var deposit: @Sendable (_ account: Int64, _ amount: Money, _ key: String) async throws -> Void
        public var read: @Sendable (_ account: Int64) async throws -> Void
        public init(transfer: @escaping @Sendable (Int64, Int64, Money, String) async throws -> Void,
                    deposit: @escaping @Sendable (Int64, Money, String) async throws -> Void,
                    read: @escaping @Sendable (Int64) async throws -> Void) {
            self.transfer = transfer
            self.deposit = deposit
            self.read = read
        }
    }

    /// Opens `accountsPerNode` accounts in the middle of each node's first range, so that the
    /// benchmark's small amounts never push a balance across a boundary.
    /// `only`: just these nodes. Openings run 16 at a time.
    public static func setUp(bank: Bank, maps: LedgerMaps, accountsPerNode: Int, only: Set<String>? = nil,
                             progress: (@Sendable (String) -> Void)?) async throws -> [String: [Int64]] {
        var byNode: [String: [Int64]] = [:]
        let run = UUID().uuidString.prefix(8)
        for range in maps.accounts.ranges where byNode[range.node] == nil && only.map({ $0.contains(range.node) }) ?? true {
            let middle = range.upperBound.map { range.lowerBound + ($0 - range.lowerBound) / 2 } ?? range.lowerBound + 100_000_000
            progress?("opening \(accountsPerNode) accounts on \(range.node) at \(Money(minorUnits: middle))")
            let node = range.node
            byNode[node] = try await withThrowingTaskGroup(of: [Int64].self) { group in
                let workers = min(16, max(1, accountsPerNode))
                for w in 0..<workers {
                    group.addTask {
                        var ids: [Int64] = []
                        for i in stride(from: w, to: accountsPerNode, by: workers) {
                            ids.append(try await bank.openAccount(customerName: "bench \(run) \(i)", balance: Money(minorUnits: middle),
                                                                  idempotencyKey: "bench-\(run)-\(node)-\(i)").id)
                        }
                        return ids
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }.sorted()
            }
        }
        return byNode
    }

    /// Runs the mix: 80 % transfers (a `crossNode` share across nodes), 10 % deposits, 10 % reads.
    /// `acknowledged` is told the key of every transfer and deposit that succeeded.
    public static func run(client: Client, accounts: [String: [Int64]], options: Options, progress: (@Sendable (String) -> Void)?,
                           timeline: (@Sendable ([TimelinePoint]) -> Void)? = nil,
                           acknowledged: (@Sendable (String) -> Void)? = nil) async -> LatencySummary {
        let nodes = accounts.keys.sorted()
        let run = UUID().uuidString.prefix(8)
        let counter = Counter()
        return await LoadRunner.run(clients: options.clients, duration: options.duration, progress: progress, timeline: timeline) { c in
            var rng = SystemRandomNumberGenerator()
            let n = counter.next()
            let key = "b\(run)-\(c)-\(n)"
            let roll = Double.random(in: 0..<1, using: &rng)
            let home = nodes.randomElement(using: &rng)!
            let from = accounts[home]!.randomElement(using: &rng)!
            let amount = Money(minorUnits: Int64.random(in: 1...1000, using: &rng))
            if roll < 0.8 {
                let crossing = nodes.count > 1 && Double.random(in: 0..<1, using: &rng) < options.crossNode
                let other = crossing ? nodes.filter { $0 != home }.randomElement(using: &rng)! : home
                var to = accounts[other]!.randomElement(using: &rng)!
                while to == from { to = accounts[other]!.randomElement(using: &rng)! }
                try await client.transfer(from, to, amount, key)
                acknowledged?(key)
            } else if roll < 0.9 {
                try await client.deposit(from, amount, key)
                acknowledged?(key)
            } else {
                try await client.read(from)
            }
        } errorCode: { error in
            if let e = error as? LedgerError { return e.code.rawValue }
            if let e = error as? ClientError { return e.code }
            if let e = error as? MariaDBError { return e.code.rawValue }
            return String(describing: type(of: error))
        }
    }

    /// The baseline: the ledger's single-node transactions, statement for statement, straight on one
    /// node with plain SQL — no routing, fence, hints or 2PC — under the same mix as ``run``. A transfer
    /// is the decision row (a plain insert, where the ledger's also fences), both rows locked, both
    /// balances in one update, both postings in one insert, commit; a deposit the same for one row; a
    /// read one primary-key select. It runs on scratch copies of the tables (`bench_account_info`,
    /// `bench_journal`, `bench_transfers`, dropped afterwards), so the ledger's own rows and invariants
    /// are untouched.
    public static func baseline(configuration: MariaDBConfiguration, accounts count: Int, options: Options,
                                logger: Logger, progress: (@Sendable (String) -> Void)?) async throws -> LatencySummary {
        let setup = try await MariaDBConnection.connect(configuration: configuration)
        let ids = Array(1...Int64(max(count, 2)))
        try await createScratch(setup, ids: ids)
        let pool = MariaDBPool(configuration: configuration, options: .init(maxConnections: options.clients), logger: logger)
        let client = Client(
            transfer: { from, to, amount, key in try await localMove(pool, [(from, -amount.minorUnits), (to, amount.minorUnits)], kind: "transfer", key: key, from: from, to: to, amount: amount) },
            deposit: { account, amount, key in try await localMove(pool, [(account, amount.minorUnits)], kind: "deposit", key: key, from: nil, to: account, amount: amount) },
            read: { account in try await read(pool, account) })
        let summary = await run(client: client, accounts: ["node1": ids], options: Options(clients: options.clients, duration: options.duration, crossNode: 0), progress: progress)
        await pool.shutdown()
        try await dropScratch(setup)
        await setup.close()
        return summary
    }

    /// The cross-node anchor: the mix of ``run`` as plain SQL on two nodes, a `crossNode` share of its
    /// transfers between them with XA two-phase commit — the least a hand-written two-node transfer
    /// does, with no routing, fence, hints, idempotency lookups or overlap. The participant (node2)
    /// runs `XA START`, the row lock, the update, the posting, `XA END`, `XA PREPARE`; then the commit
    /// point (node1) a local transaction: `BEGIN`, lock, update, posting, the decision row, `COMMIT`;
    /// then `XA COMMIT` on node2. Every transfer visits node2 first, so the branches cannot wait on each
    /// other across nodes. Deposits, reads and same-node transfers are ``baseline``'s statements on
    /// the account's node. Each part runs with its connection's executor preferred (one thread hop
    /// per change of node) unless ``Options/anchorPrefersConnectionExecutor`` is false. Scratch
    /// tables on both nodes as in ``baseline``: `accountsPerNode` rows on each (ids 1…n on node1,
    /// n+1…2n on node2), dropped afterwards. Branches use their own XA format id, which the ledger's
    /// in-doubt resolver ignores; any left prepared are finished before the drop.
    public static func xaAnchor(commitPoint: MariaDBConfiguration, participant: MariaDBConfiguration, options: Options,
                                logger: Logger, progress: (@Sendable (String) -> Void)?) async throws -> LatencySummary {
        let n = Int64(max(options.accountsPerNode, 2))
        let pointIDs = Array(1...n), participantIDs = Array((n + 1)...(2 * n))
        let pointSetup = try await MariaDBConnection.connect(configuration: commitPoint)
        let participantSetup = try await MariaDBConnection.connect(configuration: participant)
        try await createScratch(pointSetup, ids: pointIDs)
        try await createScratch(participantSetup, ids: participantIDs)
        let pointPool = MariaDBPool(configuration: commitPoint, options: .init(maxConnections: options.clients), logger: logger)
        let participantPool = MariaDBPool(configuration: participant, options: .init(maxConnections: options.clients), logger: logger)
        @Sendable func pool(of account: Int64) -> MariaDBPool { account > n ? participantPool : pointPool }
        let prefer = options.anchorPrefersConnectionExecutor
        /// `body` with `c`'s executor preferred, or as it comes (see ``Options/anchorPrefersConnectionExecutor``).
        @Sendable func on(_ c: MariaDBConnection, _ body: () async throws -> Void) async throws {
            if prefer { try await withTaskExecutorPreference(c.executor, operation: body) } else { try await body() }
        }

        @Sendable func crossTransfer(from: Int64, to: Int64, amount: Money, key: String) async throws {
            let changes = [(from, -amount.minorUnits), (to, amount.minorUnits)]
            let remote = changes.filter { $0.0 > n }, local = changes.filter { $0.0 <= n }
            let xid = XID(gtrid: key, bqual: "anchor", formatID: anchorFormatID)
            try await participantPool.withConnection { p in
                try await pointPool.withConnection { c in
                    var step = AnchorStep.none
                    do {
                        try await on(p) {
                            try await p.xaStart(xid)
                            step = .started
                            try await apply(p, remote, key: key)
                            try await p.xaEnd(xid)
                            step = .ended
                            try await p.xaPrepare(xid)
                        }
                        try await on(c) {
                            try await c.begin()
                            do {
                                try await apply(c, local, key: key)
                                try await insertDecision(c, kind: "transfer", key: key, from: from, to: to, amount: amount, participants: "node1,node2")
                                try await c.commit()
                            } catch {
                                if !c.isBroken { _ = try? await c.rollback() }
                                throw error
                            }
                        }
                        step = .decided
                        try await on(p) { try await p.xaCommit(xid) }
                    } catch {
                        switch step {
                        case .none: break
                        case .started, .ended:
                            // No decision: undo the branch (a prepared one too; its decision row is absent).
                            if !p.isBroken {
                                if step == .started { _ = try? await p.xaEnd(xid) }
                                _ = try? await p.xaRollback(xid)
                            }
                        case .decided:
                            // Decided but not told: detach the branch; ``finishAnchorBranches`` commits it.
                            await p.close()
                        }
                        throw error
                    }
                }
            }
        }

        let client = Client(
            transfer: { from, to, amount, key in
                if (from > n) != (to > n) {
                    try await crossTransfer(from: from, to: to, amount: amount, key: key)
                } else {
                    try await localMove(pool(of: from), [(from, -amount.minorUnits), (to, amount.minorUnits)], kind: "transfer", key: key, from: from, to: to, amount: amount)
                }
            },
            deposit: { account, amount, key in try await localMove(pool(of: account), [(account, amount.minorUnits)], kind: "deposit", key: key, from: nil, to: account, amount: amount) },
            read: { account in try await read(pool(of: account), account) })
        let summary = await run(client: client, accounts: ["node1": pointIDs, "node2": participantIDs], options: options, progress: progress)
        await pointPool.shutdown()
        await participantPool.shutdown()
        try await finishAnchorBranches(participant: participantSetup, commitPoint: pointSetup)
        try await dropScratch(pointSetup)
        try await dropScratch(participantSetup)
        await pointSetup.close()
        await participantSetup.close()
        return summary
    }

    private enum AnchorStep { case none, started, ended, decided }

    /// The XA format id of the anchor's branches ("BA"), not the ledger's.
    static let anchorFormatID: Int32 = 0x4241

    /// Branches of the anchor still prepared on the participant (a lost answer): committed where the
    /// commit point holds their decision row, rolled back otherwise.
    static func finishAnchorBranches(participant: MariaDBConnection, commitPoint: MariaDBConnection) async throws {
        for xid in try await participant.xaRecover() where xid.formatID == anchorFormatID {
            let decided = try await !commitPoint.execute("SELECT 1 AS x FROM bench_transfers WHERE transfer_id = ?", [.string(xid.gtrid)]).rows.isEmpty
            if decided { try await participant.xaCommit(xid) } else { try await participant.xaRollback(xid) }
        }
    }

    /// Scratch copies of the ledger's tables (`bench_account_info`, `bench_journal`, `bench_transfers`)
    /// with one row of 5,000.00 per id.
    static func createScratch(_ c: MariaDBConnection, ids: [Int64]) async throws {
        try await dropScratch(c)
        for table in ["account_info", "journal", "transfers"] { try await c.query("CREATE TABLE bench_\(table) LIKE \(table)") }
        for id in ids {
            try await c.execute("INSERT INTO bench_account_info (account_id, customer_name, balance, balance_range) VALUES (?, 'baseline', 5000.00, 'a1')", [.int(id)])
        }
    }

    static func dropScratch(_ c: MariaDBConnection) async throws {
        try await c.query("DROP TABLE IF EXISTS bench_account_info, bench_journal, bench_transfers")
    }

    private static let hash = MariaDBValue.string(String(repeating: "0", count: 64))

    /// The decision row: a plain insert.
    static func insertDecision(_ c: MariaDBConnection, kind: String, key: String, from: Int64?, to: Int64?, amount: Money, participants: String) async throws {
        try await c.execute("INSERT INTO bench_transfers (transfer_id, kind, state, from_account, to_account, amount, request_hash, participants) VALUES (?, ?, 'committed', ?, ?, ?, ?, ?)",
                            [.string(key), .string(kind), from.map(MariaDBValue.int) ?? .null, to.map(MariaDBValue.int) ?? .null,
                             .money(minorUnits: amount.minorUnits), hash, .string(participants)])
    }

    /// One node's share of a movement inside an open (local or XA) transaction: its rows locked in
    /// ascending id, the new balances in one update, the postings in one insert.
    static func apply(_ c: MariaDBConnection, _ changes: [(Int64, Int64)], key: String) async throws {
        let sorted = changes.map(\.0).sorted()
        let rows = try await c.execute("SELECT account_id, balance FROM bench_account_info WHERE account_id IN (\(sorted.map { _ in "?" }.joined(separator: ", "))) ORDER BY account_id FOR UPDATE",
                                       sorted.map(MariaDBValue.int)).rows
        var after: [(id: Int64, delta: Int64, balance: Int64)] = []
        for row in rows {
            let id = try row.int64("account_id")
            let delta = changes.first { $0.0 == id }!.1
            after.append((id, delta, try row.minorUnits("balance") + delta))
        }
        if after.count == 1 {
            try await c.execute("UPDATE bench_account_info SET balance = ?, balance_range = 'a1', row_version = row_version + 1 WHERE account_id = ?",
                                [.money(minorUnits: after[0].balance), .int(after[0].id)])
        } else {
            let cases = after.map { _ in "WHEN ? THEN ?" }.joined(separator: " ")
            try await c.execute("UPDATE bench_account_info SET balance = CASE account_id \(cases) END, balance_range = CASE account_id \(cases) END, row_version = row_version + 1 WHERE account_id IN (\(after.map { _ in "?" }.joined(separator: ", ")))",
                                after.flatMap { [MariaDBValue.int($0.id), .money(minorUnits: $0.balance)] } + after.flatMap { [MariaDBValue.int($0.id), .string("a1")] } + after.map { .int($0.id) })
        }
        try await c.execute("INSERT INTO bench_journal (account_id, transfer_id, amount, balance_after) VALUES " + after.map { _ in "(?, ?, ?, ?)" }.joined(separator: ", "),
                            after.flatMap { [MariaDBValue.int($0.id), .string(key), .money(minorUnits: $0.delta), .money(minorUnits: $0.balance)] })
    }

    /// One single-node movement: decision row, lock, update, postings, commit.
    static func localMove(_ pool: MariaDBPool, _ changes: [(Int64, Int64)], kind: String, key: String, from: Int64?, to: Int64?, amount: Money) async throws {
        try await pool.withConnection { c in
            try await withTaskExecutorPreference(c.executor) {
                try await c.begin()
                do {
                    try await insertDecision(c, kind: kind, key: key, from: from, to: to, amount: amount, participants: pool.configuration.label)
                    try await apply(c, changes, key: key)
                    try await c.commit()
                } catch {
                    if !c.isBroken { _ = try? await c.rollback() }
                    throw error
                }
            }
        }
    }

    /// One primary-key read.
    static func read(_ pool: MariaDBPool, _ account: Int64) async throws {
        _ = try await pool.withConnection { c in
            try await withTaskExecutorPreference(c.executor) {
                try await c.execute("SELECT account_id, customer_name, balance, balance_range, row_version, created_at, previous_nodes FROM bench_account_info WHERE account_id = ?", [.int(account)]).rows.first
            }
        }
    }
}

/// A shared counter for unique idempotency keys.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
}
