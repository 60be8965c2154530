import Foundation
@_spi(FaultInjection) import Ledger
import MariaDB
import Sharding
import Synchronization
import Testing

/// What the ledger must do while ranges change hands or bounds — the ground online moves stand on.
/// Splits and moves are made here by hand, in SQL, the way a mover will make them: these tests are
/// about the routers, the fences and the reads, not about the mover.
@Suite("Ranges that split and move (real nodes)", .serialized)
struct RangeChangeTests {
    static let seed = LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())

    @Test("fence by bounds: a router on the map from before a split cannot store a balance under a range that no longer covers it")
    func fenceByBounds() async throws {
        try await withBank { _, bank, connections in
            let account = try await bank.openAccount(customerName: "split", balance: money("100.00"), idempotencyKey: "open-split")
            #expect(account.range == "a1")
            // a1 [0, 1,000,001) on node1 splits at 500.00: a1 keeps [0, 50,000), a4 gets the rest.
            let split = LedgerMaps(accounts: try Self.seed.accounts.splitting("a1", at: 50_000, newID: "a4"), directory: Self.seed.directory)
            try await connections.withConnection("node1") { c in
                try await c.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', 'a4', 50000, 1000001, 1, 'active')")
                try await c.execute("UPDATE range_ownership SET upper_bound = 50000 WHERE map_name = 'accounts' AND range_id = 'a1'")
            }
            // This router never saw the split; its refresh reads the new map.
            let maps = Mutex(Self.seed)
            let refreshes = Atomic<Int>(0)
            let router = Bank(connections: connections, maps: { maps.withLock { $0 } }, refreshMaps: {
                refreshes.add(1, ordering: .relaxed)
                maps.withLock { $0 = split }
            }, nextAccountID: { throw LedgerError(.invalid, "this router opens no accounts") }, logger: testLogger)
            // Stays in a1 on both maps: the router learns where the account is (its next try is lock-first).
            _ = try await router.deposit(account.id, amount: money("1.00"), idempotencyKey: "dep-small")
            #expect(refreshes.load(ordering: .relaxed) == 0)
            // 1001.00 is in a1 on the old map, in a4 on the node: the node's bounds decide.
            let result = try await router.deposit(account.id, amount: money("900.00"), idempotencyKey: "dep-over-split")
            #expect(result.balances[account.id] == money("1001.00"))
            #expect(refreshes.load(ordering: .relaxed) >= 1)
            let range = try await connections.withConnection("node1") {
                try await $0.execute("SELECT balance_range FROM account_info WHERE account_id = ?", [.int(account.id)]).rows.first?.string("balance_range")
            }
            #expect(range == "a4")
            // A router with no places learnt (the general path) is fenced the same way.
            let fresh = Bank(connections: connections, maps: { Self.seed }, refreshMaps: {}, nextAccountID: { -1 }, logger: testLogger)
            await #expect(throws: LedgerError.self) {
                // Down to 200.00, a1 on both maps… and up again to 700.00: a4 on the node, a1 on this stale map, never refreshed.
                _ = try await fresh.withdraw(account.id, amount: money("801.00"), idempotencyKey: "w-1")
                _ = try await fresh.deposit(account.id, amount: money("500.00"), idempotencyKey: "d-stale-forever")
            }
            let after = try await bankRouting(split, connections).account(account.id)
            #expect(after.range == "a1" ? after.balance < money("500.00") : after.range == "a4")
            let report = try await LedgerVerifier(connections: connections, maps: split).run()
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("fence by bounds in a participant: a two-node transfer from a router on the pre-split map cannot credit a balance under a range that no longer covers it")
    func fenceByBoundsInParticipant() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "credited", balance: money("100.00"), idempotencyKey: "open-pa")  // node1, a1
            let b = try await bank.openAccount(customerName: "debited", balance: money("20000.00"), idempotencyKey: "open-pb") // node2, a2
            let split = LedgerMaps(accounts: try Self.seed.accounts.splitting("a1", at: 50_000, newID: "a4"), directory: Self.seed.directory)
            try await connections.withConnection("node1") { c in
                try await c.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', 'a4', 50000, 1000001, 1, 'active')")
                try await c.execute("UPDATE range_ownership SET upper_bound = 50000 WHERE map_name = 'accounts' AND range_id = 'a1'")
            }
            let maps = Mutex(Self.seed)
            let router = Bank(connections: connections, maps: { maps.withLock { $0 } }, refreshMaps: { maps.withLock { $0 = split } },
                              nextAccountID: { -1 }, logger: testLogger)
            // Both places learnt (the next transfer takes the lock-first path: node1 is a participant, node2 the commit point).
            _ = try await router.transfer(from: b.id, to: a.id, amount: money("1.00"), idempotencyKey: "t-small")
            // 101.00 + 900.00 = 1,001.00: a1 on the router's map, a4 on node1.
            let result = try await router.transfer(from: b.id, to: a.id, amount: money("900.00"), idempotencyKey: "t-over-split")
            #expect(result.balances[a.id] == money("1001.00"))
            let range = try await connections.withConnection("node1") {
                try await $0.execute("SELECT balance_range FROM account_info WHERE account_id = ?", [.int(a.id)]).rows.first?.string("balance_range")
            }
            #expect(range == "a4")
            let report = try await LedgerVerifier(connections: connections, maps: split).run()
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("reads are fenced: a copy of an account in a range its node does not serve is never read or listed")
    func readsFenced() async throws {
        try await withBank { _, bank, connections in
            let account = try await bank.openAccount(customerName: "original", balance: money("100.00"), idempotencyKey: "open-orig")
            // node2 holds a1 as a move's target before the switch (`incoming`), with a copy that differs.
            try await connections.withConnection("node2") { c in
                try await c.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', 'a1', 0, 1000001, 2, 'incoming')")
                try await c.execute("INSERT INTO account_info (account_id, customer_name, balance, balance_range, row_version) VALUES (?, 'copy', 555.00, 'a1', 1)", [.int(account.id)])
            }
            let listed = try await bank.accounts(node: "node2", range: nil, limit: 100, after: nil).accounts
            #expect(!listed.contains { $0.id == account.id }, "node2 listed a copy it does not serve")
            // A router whose map sends a1 to node2 (a move it believes done) finds nothing there and,
            // its map refreshed, reads the original.
            let maps = Mutex(LedgerMaps(accounts: try Self.seed.accounts.reassigning("a1", to: "node2"), directory: Self.seed.directory))
            let router = Bank(connections: connections, maps: { maps.withLock { $0 } }, refreshMaps: { maps.withLock { $0 = Self.seed } },
                              nextAccountID: { -1 }, logger: testLogger)
            let read = try await router.account(account.id)
            #expect(read.customerName == "original" && read.balance == money("100.00") && read.node == "node1")
        }
    }

    @Test("the directory points at a range: after a move rewrote no directory entry, the map's owner of the range is the account's node")
    func directoryPointsAtRange() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "mover", balance: money("100.00"), idempotencyKey: "open-a")
            let b = try await bank.openAccount(customerName: "other", balance: money("60000.00"), idempotencyKey: "open-b")
            _ = try await bank.transfer(from: a.id, to: b.id, amount: money("10.00"), idempotencyKey: "before-move")
            let moved = try await moveByHand("a1", from: "node1", to: "node2", maps: Self.seed, connections)
            let after = bankRouting(moved, connections)
            let read = try await after.account(a.id)
            #expect(read.node == "node2" && read.balance == money("90.00"))
            // The transfer's decision moved with its home account: the same key replays.
            let replay = try await after.transfer(from: a.id, to: b.id, amount: money("10.00"), idempotencyKey: "before-move")
            #expect(replay.replayed && replay.balances[a.id] == money("90.00"))
            _ = try await after.transfer(from: a.id, to: b.id, amount: money("5.00"), idempotencyKey: "after-move")
            // A crossing from the moved range goes through the directory entry, which names the range.
            _ = try await after.deposit(a.id, amount: money("20000.00"), idempotencyKey: "cross")
            let crossed = try await after.account(a.id)
            #expect(crossed.range == "a2" && crossed.node == "node2" && crossed.balance == money("20085.00"))
            let report = try await LedgerVerifier(connections: connections, maps: moved).run()
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("a range frozen for a move, or moved before the map names its new node, is waited for: the operation goes on on the new node once the map switches",
          arguments: ["frozen", "moved"])
    func waitsForMovingRange(_ state: String) async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "waits", balance: money("100.00"), idempotencyKey: "open-w")
            try await connections.withConnection("node1") { try await $0.execute("UPDATE range_ownership SET state = ? WHERE map_name = 'accounts' AND range_id = 'a1'", [.string(state)]) }
            let maps = Mutex(Self.seed)
            let router = Bank(connections: connections, maps: { maps.withLock { $0 } }, refreshMaps: {}, nextAccountID: { -1 },
                              moveWait: .seconds(10), logger: testLogger)
            let started = ContinuousClock.now
            async let deposit = router.deposit(a.id, amount: money("1.00"), idempotencyKey: "dep-while-frozen")
            // Longer than every stale-plan retry together: only a wait for the map carries the deposit over.
            try await Task.sleep(for: .milliseconds(1500))
            let moved = try await moveByHand("a1", from: "node1", to: "node2", maps: Self.seed, connections)
            maps.withLock { $0 = moved }
            let result = try await deposit
            #expect(ContinuousClock.now - started >= .milliseconds(1500))
            #expect(result.balances[a.id] == money("101.00"))
            let read = try await bankRouting(moved, connections).account(a.id)
            #expect(read.node == "node2" && read.balance == money("101.00"))
        }
    }

    @Test("a range still frozen after ledger.move_wait_ms answers range_moving, and nothing changed; openings wait too")
    func rangeMovingAfterTheWait() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "frozen", balance: money("100.00"), idempotencyKey: "open-f")
            try await connections.withConnection("node1") { try await $0.execute("UPDATE range_ownership SET state = 'frozen' WHERE map_name = 'accounts' AND range_id = 'a1'") }
            let router = Bank(connections: connections, maps: { Self.seed }, refreshMaps: {}, nextAccountID: { 9_000_001 },
                              moveWait: .milliseconds(600), logger: testLogger)
            let started = ContinuousClock.now
            do {
                _ = try await router.deposit(a.id, amount: money("1.00"), idempotencyKey: "dep-frozen")
                Issue.record("a deposit into a frozen range went through")
            } catch let error as LedgerError {
                #expect(error.code == .rangeMoving, "\(error)")
            }
            #expect(ContinuousClock.now - started >= .milliseconds(600))
            do {
                _ = try await router.openAccount(customerName: "late", balance: money("5.00"), idempotencyKey: "open-frozen")
                Issue.record("an opening into a frozen range went through")
            } catch let error as LedgerError {
                #expect(error.code == .rangeMoving, "\(error)")
            }
            // Unfrozen (a move cancelled), the same keys succeed.
            try await connections.withConnection("node1") { try await $0.execute("UPDATE range_ownership SET state = 'active' WHERE map_name = 'accounts' AND range_id = 'a1'") }
            let result = try await router.deposit(a.id, amount: money("1.00"), idempotencyKey: "dep-frozen")
            #expect(result.balances[a.id] == money("101.00") && !result.replayed)
            let opened = try await router.openAccount(customerName: "late", balance: money("5.00"), idempotencyKey: "open-frozen")
            #expect(opened.id == 9_000_001)
            let report = try await LedgerVerifier(connections: connections, maps: Self.seed).run()
            #expect(report.clean, "\(report.summary)")
        }
    }
}

/// A bank over `connections` routing by `maps`, opening no accounts.
private func bankRouting(_ maps: LedgerMaps, _ connections: NodeConnections) -> Bank {
    Bank(connections: connections, maps: { maps }, refreshMaps: {}, nextAccountID: { -1 }, logger: testLogger)
}

/// Moves accounts-map range `range` from one node to another as a mover's switch leaves it: the
/// target's ownership row active (next epoch), the rows, their postings and the decision rows they
/// are home of copied, the source's copies gone and its row `moved`; no directory entry touched.
/// Returns `maps` with the range reassigned.
private func moveByHand(_ range: String, from source: String, to target: String, maps: LedgerMaps, _ connections: NodeConnections) async throws -> LedgerMaps {
    try await connections.withConnection(source) { s in
        try await connections.withConnection(target) { t in
            let own = try await s.execute("SELECT lower_bound, upper_bound, epoch FROM range_ownership WHERE map_name = 'accounts' AND range_id = ?", [.string(range)]).rows[0]
            try await t.execute("DELETE FROM range_ownership WHERE map_name = 'accounts' AND range_id = ?", [.string(range)])
            try await t.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', ?, ?, ?, ?, 'active')",
                                [.string(range), own["lower_bound"], own["upper_bound"], .int(try own.int64("epoch") + 1)])
            let ids = try await s.execute("SELECT account_id FROM account_info WHERE balance_range = ?", [.string(range)]).rows.map { try $0.int64("account_id") }
            try await t.execute("DELETE FROM account_info WHERE balance_range = ?", [.string(range)])
            guard !ids.isEmpty else { return }
            let list = ids.map(String.init).joined(separator: ", ")
            try await copy("account_info", ["account_id", "customer_name", "balance", "balance_range", "row_version", "created_at", "previous_nodes"],
                           where: "account_id IN (\(list))", from: s, to: t)
            try await copy("journal", ["account_id", "transfer_id", "attempt", "amount", "balance_after", "created_at"],
                           where: "account_id IN (\(list)) ORDER BY entry_id", from: s, to: t)
            try await copy("transfers", ["transfer_id", "attempt", "kind", "state", "from_account", "to_account", "amount", "request_hash", "participants", "created_at"],
                           where: "COALESCE(from_account, to_account) IN (\(list))", from: s, to: t)
            try await s.execute("DELETE FROM journal WHERE account_id IN (\(list))")
            try await s.execute("DELETE FROM transfers WHERE COALESCE(from_account, to_account) IN (\(list))")
            try await s.execute("DELETE FROM account_info WHERE account_id IN (\(list))")
        }
        try await s.execute("UPDATE range_ownership SET state = 'moved' WHERE map_name = 'accounts' AND range_id = ?", [.string(range)])
    }
    return LedgerMaps(accounts: try maps.accounts.reassigning(range, to: target), directory: maps.directory)
}

/// Copies the rows `condition` selects of `table`'s `columns` from one node to another.
private func copy(_ table: String, _ columns: [String], where condition: String, from: MariaDBConnection, to: MariaDBConnection) async throws {
    let names = columns.joined(separator: ", ")
    for row in try await from.execute("SELECT \(names) FROM \(table) WHERE \(condition)").rows {
        try await to.execute("INSERT INTO \(table) (\(names)) VALUES (\(columns.map { _ in "?" }.joined(separator: ", ")))", row.values)
    }
}
