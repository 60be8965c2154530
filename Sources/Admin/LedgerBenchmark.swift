import Foundation
import Ledger
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

    /// The baseline: the same transfer transaction, hand-written SQL on one node, no routing, fence,
    /// idempotency or 2PC; one plain connection per client, on that connection's thread. It runs on
    /// scratch copies of the two tables (`bench_account_info`, `bench_journal`, dropped afterwards),
    /// so the ledger's own rows and invariants are untouched.
    public static func baseline(configuration: MariaDBConfiguration, accounts count: Int, options: Options, progress: (@Sendable (String) -> Void)?) async throws -> LatencySummary {
        let setup = try await MariaDBConnection.connect(configuration: configuration)
        try await setup.query("DROP TABLE IF EXISTS bench_account_info, bench_journal")
        try await setup.query("CREATE TABLE bench_account_info LIKE account_info")
        try await setup.query("CREATE TABLE bench_journal LIKE journal")
        for id in 1...Int64(max(count, 2)) {
            try await setup.execute("INSERT INTO bench_account_info (account_id, customer_name, balance, balance_range) VALUES (?, 'baseline', 5000.00, 'a1')", [.int(id)])
        }
        let accounts = Array(1...Int64(max(count, 2)))
        var connections: [MariaDBConnection] = []
        for _ in 0..<options.clients { connections.append(try await MariaDBConnection.connect(configuration: configuration)) }
        let pool = connections
        let run = UUID().uuidString.prefix(8)
        let counter = Counter()
        let summary = await LoadRunner.run(clients: options.clients, duration: options.duration, progress: progress, executor: { pool[$0].executor }) { client in
            let c = pool[client]
            let a = accounts.randomElement()!
            var b = accounts.randomElement()!
            while b == a { b = accounts.randomElement()! }
            let amount = Int64.random(in: 1...1000)
            let key = "base\(run)-\(client)-\(counter.next())"
            do {
                try await c.begin()
                // Lock both rows in ascending id order (as the ledger does), then move a → b.
                _ = try await c.execute("SELECT balance FROM bench_account_info WHERE account_id IN (?, ?) ORDER BY account_id FOR UPDATE", [.int(min(a, b)), .int(max(a, b))])
                try await c.execute("UPDATE bench_account_info SET balance = balance - ? WHERE account_id = ?", [.money(minorUnits: amount), .int(a)])
                try await c.execute("UPDATE bench_account_info SET balance = balance + ? WHERE account_id = ?", [.money(minorUnits: amount), .int(b)])
                try await c.execute("INSERT INTO bench_journal (account_id, transfer_id, amount, balance_after) VALUES (?, ?, ?, 0)", [.int(a), .string(key), .money(minorUnits: -amount)])
                try await c.execute("INSERT INTO bench_journal (account_id, transfer_id, amount, balance_after) VALUES (?, ?, ?, 0)", [.int(b), .string(key), .money(minorUnits: amount)])
                try await c.commit()
            } catch {
                _ = try? await c.rollback()
                throw error
            }
        } errorCode: { error in (error as? MariaDBError).map { "\($0.code.rawValue) \($0.errorNumber ?? 0)" } ?? "\(error)" }
        for c in connections { await c.close() }
        try await setup.query("DROP TABLE IF EXISTS bench_account_info, bench_journal")
        await setup.close()
        return summary
    }
}

/// A shared counter for unique idempotency keys.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
}
