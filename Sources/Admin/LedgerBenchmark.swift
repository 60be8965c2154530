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
        public init(clients: Int, duration: Duration, crossNode: Double, accountsPerNode: Int = 100) {
            self.clients = clients
            self.duration = duration
            self.crossNode = crossNode
            self.accountsPerNode = accountsPerNode
        }
    }

    /// A client's failure, by the code it reports (e.g. the API's error code).
    public struct ClientError: Error, Sendable {
        public var code: String
        public init(code: String) { self.code = code }
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
    public static func setUp(bank: Bank, maps: LedgerMaps, accountsPerNode: Int, progress: (@Sendable (String) -> Void)?) async throws -> [String: [Int64]] {
        var byNode: [String: [Int64]] = [:]
        let run = UUID().uuidString.prefix(8)
        for range in maps.accounts.ranges where byNode[range.node] == nil {
            let middle = range.upperBound.map { range.lowerBound + ($0 - range.lowerBound) / 2 } ?? range.lowerBound + 100_000_000
            progress?("opening \(accountsPerNode) accounts on \(range.node) at \(Money(minorUnits: middle))")
            var ids: [Int64] = []
            for i in 0..<accountsPerNode {
                ids.append(try await bank.openAccount(customerName: "bench \(run) \(i)", balance: Money(minorUnits: middle), idempotencyKey: "bench-\(run)-\(range.node)-\(i)").id)
            }
            byNode[range.node] = ids
        }
        return byNode
    }

    /// Runs the mix: 80 % transfers (a `crossNode` share across nodes), 10 % deposits, 10 % reads.
    public static func run(client: Client, accounts: [String: [Int64]], options: Options, progress: (@Sendable (String) -> Void)?) async -> LatencySummary {
        let nodes = accounts.keys.sorted()
        let run = UUID().uuidString.prefix(8)
        let counter = Counter()
        return await LoadRunner.run(clients: options.clients, duration: options.duration, progress: progress) { c in
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
            } else if roll < 0.9 {
                try await client.deposit(from, amount, key)
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
        try await setup.query("DROP TABLE IF EXISTS bench_account_info, bench_journal, bench_transfers")
        for table in ["account_info", "journal", "transfers"] { try await setup.query("CREATE TABLE bench_\(table) LIKE \(table)") }
        let ids = Array(1...Int64(max(count, 2)))
        for id in ids {
            try await setup.execute("INSERT INTO bench_account_info (account_id, customer_name, balance, balance_range) VALUES (?, 'baseline', 5000.00, 'a1')", [.int(id)])
        }
        let pool = MariaDBPool(configuration: configuration, options: .init(maxConnections: options.clients), logger: logger)
        let hash = MariaDBValue.string(String(repeating: "0", count: 64))
        // One movement: decision row, lock, update, postings, commit.
        @Sendable func move(_ changes: [(Int64, Int64)], kind: String, key: String, from: Int64?, to: Int64?, amount: Money) async throws {
            try await pool.withConnection { c in
                try await withTaskExecutorPreference(c.executor) {
                    try await c.begin()
                    do {
                        try await c.execute("INSERT INTO bench_transfers (transfer_id, kind, state, from_account, to_account, amount, request_hash, participants) VALUES (?, ?, 'committed', ?, ?, ?, ?, 'node1')",
                                            [.string(key), .string(kind), from.map(MariaDBValue.int) ?? .null, to.map(MariaDBValue.int) ?? .null, .money(minorUnits: amount.minorUnits), hash])
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
                        try await c.commit()
                    } catch {
                        if !c.isBroken { _ = try? await c.rollback() }
                        throw error
                    }
                }
            }
        }
        let client = Client(
            transfer: { from, to, amount, key in try await move([(from, -amount.minorUnits), (to, amount.minorUnits)], kind: "transfer", key: key, from: from, to: to, amount: amount) },
            deposit: { account, amount, key in try await move([(account, amount.minorUnits)], kind: "deposit", key: key, from: nil, to: account, amount: amount) },
            read: { account in
                _ = try await pool.withConnection { c in
                    try await withTaskExecutorPreference(c.executor) {
                        try await c.execute("SELECT account_id, customer_name, balance, balance_range, row_version, created_at, previous_nodes FROM bench_account_info WHERE account_id = ?", [.int(account)]).rows.first
                    }
                }
            })
        let summary = await run(client: client, accounts: ["node1": ids], options: Options(clients: options.clients, duration: options.duration, crossNode: 0), progress: progress)
        await pool.shutdown()
        try await setup.query("DROP TABLE IF EXISTS bench_account_info, bench_journal, bench_transfers")
        await setup.close()
        return summary
    }
}

/// A shared counter for unique idempotency keys.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
}
