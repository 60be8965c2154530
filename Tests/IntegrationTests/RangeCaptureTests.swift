import Admin
import BankSchema
import ClusterMetadata
import Foundation
import Ledger
import LocalCluster
import MariaDB
import Sharding
import Synchronization
import Testing

/// The seed layout with node1's range split in two (a1 below 5,000.00, a1b from there), so that a
/// balance can cross a boundary and stay on its node: its row is updated, not moved.
private let splitMaps = LedgerMaps(
    accounts: try! RangeMap(name: "accounts", keyKind: "balance_cents", ranges: [
        ShardRange(id: "a1", lowerBound: 0, upperBound: 500_000, node: "node1"),
        ShardRange(id: "a1b", lowerBound: 500_000, upperBound: 1_000_001, node: "node1"),
        ShardRange(id: "a2", lowerBound: 1_000_001, upperBound: 5_000_001, node: "node2"),
        ShardRange(id: "a3", lowerBound: 5_000_001, upperBound: nil, node: "node3"),
    ]),
    directory: SeedLayout.directoryMap())

/// `range_changes` of `node` in log order, as "map/range/account".
private func changes(_ connections: NodeConnections, _ node: String) async throws -> [String] {
    try await connections.withConnection(node) { c in
        try await c.query("SELECT map_name, range_id, account_id FROM range_changes ORDER BY seq").rows.map {
            "\(try $0.string("map_name"))/\(try $0.string("range_id"))/\(try $0.int64("account_id"))"
        }
    }
}

private func changesEverywhere(_ connections: NodeConnections) async throws -> [String: [String]] {
    var all: [String: [String]] = [:]
    for node in connections.nodes { all[node] = try await changes(connections, node) }
    return all
}

private func setCapture(_ connections: NodeConnections, _ node: String, map: String, range: String, _ on: Bool) async throws {
    let result = try await connections.withConnection(node) { c in
        try await c.execute("UPDATE range_ownership SET capture = ? WHERE map_name = ? AND range_id = ?", [.int(on ? 1 : 0), .string(map), .string(range)])
    }
    #expect(result.affectedRows == 1, "no ownership row \(map)/\(range) on \(node)")
}

/// The directory range and node holding `account`'s directory entry.
private func directoryRange(of account: Int64) throws -> ShardRange {
    try SeedLayout.directoryMap().range(for: DirectoryHash.key(forAccount: account))
}

/// Runs `body` on a connection of its own to `node` (not from the pool), closed afterwards.
private func withSession<T>(_ cluster: LocalCluster, _ node: String, _ body: (MariaDBConnection) async throws -> T) async throws -> T {
    let c = try await connect(cluster, node)
    do {
        let result = try await body(c)
        await c.close()
        return result
    } catch {
        await c.close()
        throw error
    }
}

/// Expects `body` to fail with the server's lock wait timeout (1205).
private func expectLockWaitTimeout(_ what: Comment, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("not blocked: \(what)")
    } catch let error as MariaDBError {
        #expect(error.errorNumber == 1205, "\(what): \(error)")
    } catch {
        Issue.record("\(what): \(error)")
    }
}

@Suite("Schema v4: writes to a range with capture on are logged for a mover", .serialized)
struct RangeCaptureTests {
    @Test("a fresh node migrates to v6 (no trigger: a mover installs them; v5's time indexes; v6's key claims); running it again, or again after a crash before the version row, changes nothing; the triggers install and go")
    func migrateTwice() async throws {
        try await withCluster(nodes: 1, etcd: 1) { cluster in
            try await withSession(cluster, "node1") { c in
                #expect(try await BankSchema.migrate(c, logger: testLogger) == [1, 2, 3, 4, 5, 6])
                #expect(try await BankSchema.currentVersion(c) == 6)

                func schema() async throws -> [String] {
                    var lines: [String] = []
                    for r in try await c.query("""
                        SELECT table_name AS t, column_name AS c, column_type AS ty, is_nullable AS n, COALESCE(column_default, '-') AS d,
                               COALESCE(collation_name, '-') AS co, is_generated AS g, COALESCE(generation_expression, '-') AS e
                        FROM information_schema.columns WHERE table_schema = DATABASE()
                          AND (table_name IN ('range_changes', 'key_claims') OR (table_name, column_name) IN (('range_ownership', 'capture'), ('transfers', 'home_account')))
                        ORDER BY table_name, ordinal_position
                        """).rows {
                        lines.append(try ["t", "c", "ty", "n", "d", "co", "g", "e"].map { try r.string($0) }.joined(separator: " "))
                    }
                    for r in try await c.query("""
                        SELECT table_name AS t, index_name AS i, GROUP_CONCAT(column_name ORDER BY seq_in_index) AS cols
                        FROM information_schema.statistics WHERE table_schema = DATABASE()
                          AND table_name IN ('range_changes', 'transfers', 'account_info', 'journal', 'key_claims') GROUP BY table_name, index_name ORDER BY table_name, index_name
                        """).rows {
                        lines.append("index \(try r.string("t")).\(try r.string("i")) (\(try r.string("cols")))")
                    }
                    for r in try await c.query("""
                        SELECT trigger_name AS n, action_timing AS ti, event_manipulation AS ev, event_object_table AS t
                        FROM information_schema.triggers WHERE trigger_schema = DATABASE() ORDER BY trigger_name
                        """).rows {
                        lines.append("trigger \(try r.string("n")) \(try r.string("ti")) \(try r.string("ev")) ON \(try r.string("t"))")
                    }
                    return lines
                }
                let v4 = try await schema()
                for expected in [
                    "range_ownership capture tinyint(4) NO 0 - NEVER -",
                    "range_changes seq bigint(20) NO - - NEVER -",
                    "range_changes map_name varchar(32) NO - utf8mb4_nopad_bin NEVER -",
                    "range_changes range_id varchar(64) NO - utf8mb4_nopad_bin NEVER -",
                    "range_changes account_id bigint(20) NO - - NEVER -",
                    "range_changes changed_at datetime(6) NO current_timestamp(6) - NEVER -",
                    "transfers home_account bigint(20) YES NULL - ALWAYS if(`kind` = 'open',NULL,coalesce(`from_account`,`to_account`))",
                    "index range_changes.PRIMARY (seq)",
                    "index range_changes.by_range (map_name,range_id,seq)",
                    "index transfers.by_home (home_account)",
                    "index transfers.by_time (created_at)",
                    "index journal.by_time (created_at)",
                    "key_claims transfer_id varchar(64) NO - utf8mb4_nopad_bin NEVER -",
                    "key_claims key_hash bigint(20) NO - - NEVER -",
                    "index key_claims.by_hash (key_hash,transfer_id)",
                    "key_claims home_account bigint(20) YES NULL - NEVER -",
                    "key_claims claimed_at datetime(6) NO current_timestamp(6) - NEVER -",
                    "index key_claims.PRIMARY (transfer_id)",
                    "index key_claims.by_time (claimed_at)",
                ] {
                    #expect(v4.contains(expected), "missing: \(expected)\nschema:\n\(v4.joined(separator: "\n"))")
                }
                #expect(!v4.contains { $0.hasPrefix("trigger ") }, "the schema alone has no trigger (they cost writes ~15 %)")
                try await BankSchema.installCaptureTriggers(c)
                let triggers = try await schema().filter { $0.hasPrefix("trigger ") }
                #expect(triggers == ["delete", "insert", "update"].map { "trigger account_directory_capture_\($0) AFTER \($0.uppercased()) ON account_directory" }
                    + ["delete", "insert", "update"].map { "trigger account_info_capture_\($0) AFTER \($0.uppercased()) ON account_info" })
                try await BankSchema.installCaptureTriggers(c) // again: replaced, not duplicated
                try await BankSchema.removeCaptureTriggers(c)
                #expect(try await schema() == v4)
                // Persistent: stored in the row, so the index holds it (and a NULL from_account falls to to_account).
                // An opening's decision is its key's, not the account's: no home account (a move leaves it).
                try await c.query("INSERT INTO transfers (transfer_id, kind, state, from_account, to_account, amount, request_hash) VALUES ('t', 'transfer', 'committed', 5, 7, 1, ''), ('d', 'deposit', 'committed', NULL, 7, 1, ''), ('o', 'open', 'committed', NULL, 7, 1, '')")
                #expect(try await c.query("SELECT transfer_id FROM transfers FORCE INDEX (by_home) WHERE home_account = 7").rows.map { try $0.string("transfer_id") } == ["d"])
                #expect(try await c.query("SELECT COUNT(*) AS n FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'transfers' AND column_name = 'home_account' AND extra LIKE '%STORED%'").rows.first?.int64("n") == 1)

                // Up to date: nothing to apply.
                #expect(try await BankSchema.migrate(c, logger: testLogger) == [])
                // A crash after every statement of v4 but before its version row: run again.
                try await c.query("DELETE FROM schema_migrations WHERE version = 4")
                #expect(try await BankSchema.migrate(c, logger: testLogger) == [4])
                // And each statement once more by hand.
                for statement in BankSchema.migrations.first(where: { $0.version == 4 })!.statements { try await c.query(statement) }
                #expect(try await schema() == v4)
                #expect(try await c.query("SELECT COUNT(*) AS n FROM transfers").rows.first?.int64("n") == 3)
            }
        }
    }

    @Test("capture off (the default): openings, deposits, withdrawals and transfers on one node and across write no range_changes row")
    func captureOffWritesNothing() async throws {
        try await withBank(captureTriggers: true) { _, bank, connections in
            for node in connections.nodes {
                let on = try await connections.withConnection(node) { try await $0.query("SELECT COUNT(*) AS n FROM range_ownership WHERE capture <> 0").rows.first?.int64("n") }
                #expect(on == 0, "\(node) has ranges with capture on after init")
            }
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")     // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "o-b")   // node2
            let a2 = try await bank.openAccount(customerName: "A2", balance: money("50.00"), idempotencyKey: "o-a2")   // node1
            _ = try await bank.deposit(a.id, amount: money("5.00"), idempotencyKey: "d1")
            _ = try await bank.withdraw(a.id, amount: money("1.00"), idempotencyKey: "w1")
            _ = try await bank.transfer(from: a.id, to: a2.id, amount: money("2.00"), idempotencyKey: "t-local")
            _ = try await bank.transfer(from: b.id, to: a.id, amount: money("3.00"), idempotencyKey: "t-cross")
            _ = try await bank.deposit(a.id, amount: money("10000.00"), idempotencyKey: "move-a")                      // a moves to node2
            #expect(try await bank.account(a.id).node == "node2")
            #expect(try await changesEverywhere(connections) == ["node1": [], "node2": [], "node3": []])
            // The same kind of write with capture on is logged: the emptiness above is capture's doing.
            try await setCapture(connections, "node2", map: "accounts", range: "a2", true)
            _ = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: "d2")
            #expect(try await changesEverywhere(connections) == ["node1": [], "node2": ["accounts/a2/\(a.id)"], "node3": []])
        }
    }

    @Test("capture on: the ledger's inserts, updates (both ranges when a balance crosses a boundary on its node), deletes and directory writes log (map, range, account), in one and two-node transactions")
    func captureOnLogsLedgerWrites() async throws {
        try await withBank(maps: splitMaps, captureTriggers: true) { _, bank, connections in
            for range in ["a1", "a1b"] { try await setCapture(connections, "node1", map: "accounts", range: range, true) }
            try await setCapture(connections, "node2", map: "accounts", range: "a2", true)
            // a3 on node3 stays off.
            for (i, node) in ["node1", "node2", "node3"].enumerated() { try await setCapture(connections, node, map: "directory", range: "d\(i + 1)", true) }

            // What each node logged (within one transaction the order of the rows is the ledger's affair: compared sorted).
            var expected: [String: [String]] = ["node1": [], "node2": [], "node3": []]
            func expectLog(_ step: String) async throws {
                let log = try await changesEverywhere(connections).mapValues { $0.sorted() }
                #expect(log == expected.mapValues { $0.sorted() }, "after \(step)")
            }

            // An opening also notes itself on its key's node, under its key's directory range (the
            // ledger writes that line, not a trigger: a move copies openings by it).
            func opened(_ key: String, _ id: Int64) throws {
                let k = try SeedLayout.directoryMap().range(for: DirectoryHash.key(forIdempotencyKey: key))
                expected[k.node]!.append("openings/\(k.id)/\(id)")
            }

            // A movement claims its key on the key's node and notes the claim there the same way
            // (with its home account): a move copies claims by it.
            func claimed(_ key: String, home: Int64) throws {
                let k = try SeedLayout.directoryMap().range(for: DirectoryHash.key(forIdempotencyKey: key))
                expected[k.node]!.append("openings/\(k.id)/\(home)")
            }

            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")
            #expect(a.node == "node1" && a.range == "a1")
            try opened("o-a", a.id)
            let da = try directoryRange(of: a.id)
            expected["node1"]!.append("accounts/a1/\(a.id)")
            expected[da.node]!.append("directory/\(da.id)/\(a.id)")
            try await expectLog("opening A")

            _ = try await bank.deposit(a.id, amount: money("10.00"), idempotencyKey: "d1")
            expected["node1"]!.append("accounts/a1/\(a.id)")
            try claimed("d1", home: a.id)
            try await expectLog("a deposit")

            // 110.00 + 6,000.00 crosses into a1b on node1: one UPDATE, old and new range logged; the
            // directory entry names the range, so it is updated too.
            _ = try await bank.deposit(a.id, amount: money("6000.00"), idempotencyKey: "d2")
            #expect(try await bank.account(a.id).range == "a1b")
            expected["node1"]! += ["accounts/a1/\(a.id)", "accounts/a1b/\(a.id)"]
            expected[da.node]!.append("directory/\(da.id)/\(a.id)")
            try claimed("d2", home: a.id)
            try await expectLog("a deposit crossing a1 → a1b")

            // 6,110.00 + 5,000.00 leaves node1: delete there, insert on node2, directory entry updated.
            _ = try await bank.deposit(a.id, amount: money("5000.00"), idempotencyKey: "d3")
            #expect(try await bank.account(a.id).node == "node2")
            expected["node1"]!.append("accounts/a1b/\(a.id)")
            expected["node2"]!.append("accounts/a2/\(a.id)")
            expected[da.node]!.append("directory/\(da.id)/\(a.id)")
            try claimed("d3", home: a.id)
            try await expectLog("a deposit moving A to node2")

            // C on node3, whose range a3 has capture off: only its directory entry is logged.
            let c = try await bank.openAccount(customerName: "C", balance: money("60000.00"), idempotencyKey: "o-c")
            #expect(c.node == "node3")
            try opened("o-c", c.id)
            let dc = try directoryRange(of: c.id)
            expected[dc.node]!.append("directory/\(dc.id)/\(c.id)")
            try await expectLog("opening C")

            // Two-phase commit: C (node3, not captured) → A (node2, captured).
            _ = try await bank.transfer(from: c.id, to: a.id, amount: money("1.00"), idempotencyKey: "t1")
            expected["node2"]!.append("accounts/a2/\(a.id)")
            try claimed("t1", home: c.id)
            try await expectLog("a two-node transfer")

            // B and A2 on node1, both in a1: one transaction updating two rows logs each.
            let b = try await bank.openAccount(customerName: "B", balance: money("40.00"), idempotencyKey: "o-b")
            let a2 = try await bank.openAccount(customerName: "A2", balance: money("30.00"), idempotencyKey: "o-a2")
            try opened("o-b", b.id)
            try opened("o-a2", a2.id)
            for account in [b, a2] {
                let d = try directoryRange(of: account.id)
                expected["node1"]!.append("accounts/a1/\(account.id)")
                expected[d.node]!.append("directory/\(d.id)/\(account.id)")
            }
            _ = try await bank.transfer(from: b.id, to: a2.id, amount: money("1.00"), idempotencyKey: "t2")
            expected["node1"]! += [b.id, a2.id].sorted().map { "accounts/a1/\($0)" }
            try claimed("t2", home: b.id)
            try await expectLog("a one-node transfer")

            // Capture of a1 off again: nothing more of the accounts (the key's claim still, d ranges capture).
            try await setCapture(connections, "node1", map: "accounts", range: "a1", false)
            _ = try await bank.transfer(from: b.id, to: a2.id, amount: money("1.00"), idempotencyKey: "t3")
            try claimed("t3", home: b.id)
            try await expectLog("a transfer after capture went off")

            let report = try await LedgerVerifier(connections: connections, maps: splitMaps).run(xaBound: .seconds(1), settle: .milliseconds(200))
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("capture on: directory rows and account rows written by hand — insert, update in place, update to another range, delete")
    func captureOnLogsRowWrites() async throws {
        try await withBank(captureTriggers: true) { cluster, _, connections in
            try await withSession(cluster, "node1") { c in
                try await c.query("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state, capture) VALUES ('directory', 'dx', 0, 1, 1, 'moving', 1), ('accounts', 'ax', 0, 1, 1, 'moving', 0)")
                try await c.query("UPDATE range_ownership SET capture = 1 WHERE map_name = 'directory' AND range_id = 'd1'")
                try await c.query("UPDATE range_ownership SET capture = 1 WHERE map_name = 'accounts' AND range_id = 'a1'")
                try await c.query("INSERT INTO account_directory (account_id, directory_range, data_node, data_range) VALUES (901, 'd1', 'node1', 'a1')")
                try await c.query("UPDATE account_directory SET data_node = 'node2', data_range = 'a2' WHERE account_id = 901")
                try await c.query("UPDATE account_directory SET directory_range = 'dx' WHERE account_id = 901")
                try await c.query("DELETE FROM account_directory WHERE account_id = 901")
                // 'd2' is not held here (no ownership row): nothing logged, no error.
                try await c.query("INSERT INTO account_directory (account_id, directory_range, data_node, data_range) VALUES (902, 'd2', 'node1', 'a1')")
                try await c.query("DELETE FROM account_directory WHERE account_id = 902")

                try await c.query("INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (911, 'x', 1.00, 'a1'), (912, 'y', 2.00, 'a1')")
                try await c.query("UPDATE account_info SET customer_name = 'z' WHERE account_id IN (911, 912)")
                try await c.query("UPDATE account_info SET balance_range = 'ax' WHERE account_id = 911")     // into a range with capture off
                try await c.query("UPDATE account_info SET balance_range = 'a1' WHERE account_id = 911")     // back
                try await c.query("UPDATE account_info SET account_id = 913 WHERE account_id = 912")         // a new key in the same range
                try await c.query("DELETE FROM account_info WHERE account_id IN (911, 913)")
                try await c.query("UPDATE range_ownership SET capture = 0 WHERE map_name = 'accounts' AND range_id = 'a1'")
                try await c.query("INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (914, 'w', 1.00, 'a1')")
                try await c.query("DELETE FROM account_info WHERE account_id = 914")
                #expect(try await c.query("SHOW WARNINGS").rows.isEmpty)
            }
            #expect(try await changes(connections, "node1") == [
                "directory/d1/901", "directory/d1/901", "directory/d1/901", "directory/dx/901", "directory/dx/901",
                "accounts/a1/911", "accounts/a1/912", "accounts/a1/911", "accounts/a1/912", "accounts/a1/911", "accounts/a1/911",
                "accounts/a1/912", "accounts/a1/913", "accounts/a1/911", "accounts/a1/913",
            ])
            let stamped = try await connections.withConnection("node1") { c in
                try await c.query("SELECT COUNT(*) AS n FROM range_changes WHERE changed_at > NOW(6) - INTERVAL 1 MINUTE").rows.first?.int64("n")
            }
            #expect(stamped == 15)
        }
    }

    @Test("the triggers read the ownership row in share mode: a mover's exclusive lock blocks writes, a write in flight blocks the mover, and a write that waited sees capture on")
    func shareLock() async throws {
        try await withBank(captureTriggers: true) { cluster, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")
            #expect(a.node == "node1")
            let da = try directoryRange(of: a.id)
            let accountsRow = "map_name = 'accounts' AND range_id = 'a1'"
            let directoryRow = "map_name = 'directory' AND range_id = '\(da.id)'"

            // A mover holding the ownership row exclusively (capture still off): plain writes of the
            // range's rows wait for it — nothing in the statements below reads range_ownership but the triggers.
            try await withSession(cluster, "node1") { mover in
                try await withSession(cluster, "node1") { writer in
                    try await writer.query("SET SESSION innodb_lock_wait_timeout = 1")
                    try await mover.begin()
                    _ = try await mover.query("SELECT capture FROM range_ownership WHERE \(accountsRow) FOR UPDATE")
                    await expectLockWaitTimeout("update of an account row") {
                        try await writer.query("UPDATE account_info SET customer_name = 'blocked' WHERE account_id = \(a.id)")
                    }
                    await expectLockWaitTimeout("insert of an account row") {
                        try await writer.query("INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (999, 'n', 1.00, 'a1')")
                    }
                    await expectLockWaitTimeout("delete of an account row") {
                        try await writer.query("DELETE FROM account_info WHERE account_id = \(a.id)")
                    }
                    try await mover.rollback()
                }
            }
            try await withSession(cluster, da.node) { mover in
                try await withSession(cluster, da.node) { writer in
                    try await writer.query("SET SESSION innodb_lock_wait_timeout = 1")
                    try await mover.begin()
                    _ = try await mover.query("SELECT capture FROM range_ownership WHERE \(directoryRow) FOR UPDATE")
                    await expectLockWaitTimeout("update of a directory row") {
                        try await writer.query("UPDATE account_directory SET previous_nodes = 'x' WHERE account_id = \(a.id)")
                    }
                    try await mover.rollback()
                }
            }

            // The other way: a write in flight (capture off, so it logged nothing) holds the share
            // lock to its end, and a mover switching capture on waits for it.
            try await withSession(cluster, "node1") { mover in
                try await withSession(cluster, "node1") { writer in
                    try await mover.query("SET SESSION innodb_lock_wait_timeout = 1")
                    try await writer.begin(isolation: .readCommitted) // locks on rows not matching are dropped at once in READ COMMITTED: not this one
                    try await writer.query("UPDATE account_info SET customer_name = 'in flight' WHERE account_id = \(a.id)")
                    await expectLockWaitTimeout("switching capture on while a write is in flight") {
                        try await mover.query("UPDATE range_ownership SET capture = 1 WHERE \(accountsRow)")
                    }
                    try await writer.rollback()
                }
            }

            // A write that waited for the switch reads capture as the mover committed it.
            try await withSession(cluster, "node1") { mover in
                try await mover.begin()
                try await mover.query("UPDATE range_ownership SET capture = 1 WHERE \(accountsRow)")
                let started = ContinuousClock.now
                let write = Task {
                    _ = try await withSession(cluster, "node1") { writer in
                        try await writer.query("UPDATE account_info SET customer_name = 'after the switch' WHERE account_id = \(a.id)")
                    }
                    return ContinuousClock.now
                }
                try await Task.sleep(for: .milliseconds(500))
                try await mover.commit()
                let finished = try await write.value
                #expect(finished - started >= .milliseconds(500), "the write did not wait for the mover")
            }
            #expect(try await changes(connections, "node1") == ["accounts/a1/\(a.id)"])
        }
    }

    @Test("a trigger in an XA branch: its rows are logged with the branch, committed or rolled back with it")
    func xaBranch() async throws {
        try await withBank(captureTriggers: true) { cluster, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")
            try await setCapture(connections, "node1", map: "accounts", range: "a1", true)
            try await withSession(cluster, "node1") { branch in
                let committed = XID(gtrid: "capture-xa-1", bqual: "b", formatID: 7)
                try await branch.xaStart(committed)
                try await branch.query("UPDATE account_info SET customer_name = 'xa' WHERE account_id = \(a.id)")
                try await branch.xaEnd(committed)
                try await branch.xaPrepare(committed)
                #expect(try await changes(connections, "node1") == [])
                try await branch.xaCommit(committed)
                #expect(try await changes(connections, "node1") == ["accounts/a1/\(a.id)"])

                let rolledBack = XID(gtrid: "capture-xa-2", bqual: "b", formatID: 7)
                try await branch.xaStart(rolledBack)
                try await branch.query("DELETE FROM account_info WHERE account_id = \(a.id)")
                try await branch.xaEnd(rolledBack)
                try await branch.xaPrepare(rolledBack)
                try await branch.xaRollback(rolledBack)
                #expect(try await changes(connections, "node1") == ["accounts/a1/\(a.id)"])
            }
            #expect(try await bank.account(a.id).customerName == "xa")
        }
    }

    /// What a mover has to know (docs/LEDGER.md, "Schema v4"): kept as a test so that a server that
    /// behaves otherwise is noticed.
    @Test("MariaDB drops a branch's share locks at XA PREPARE: a prepared branch that wrote with capture off does not hold up the switch, keeps its row locked, is listed by XA RECOVER, and commits unlogged")
    func preparedBranchReleasesShareLock() async throws {
        try await withBank(captureTriggers: true) { cluster, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")
            try await withSession(cluster, "node1") { branch in
                try await withSession(cluster, "node1") { mover in
                    try await mover.query("SET SESSION innodb_lock_wait_timeout = 1")
                    let xid = XID(gtrid: "capture-xa-3", bqual: "b", formatID: 7)
                    try await branch.xaStart(xid)
                    try await branch.query("UPDATE account_info SET customer_name = 'in doubt' WHERE account_id = \(a.id)")
                    try await branch.xaEnd(xid)
                    // Before the prepare the branch's share lock holds the switch off.
                    await expectLockWaitTimeout("switching capture on while a branch is active") {
                        try await mover.query("UPDATE range_ownership SET capture = 1 WHERE map_name = 'accounts' AND range_id = 'a1'")
                    }
                    try await branch.xaPrepare(xid)
                    // After it, not: the share lock is gone (exclusive locks on rows the branch changed stay).
                    try await mover.query("UPDATE range_ownership SET capture = 1 WHERE map_name = 'accounts' AND range_id = 'a1'")
                    #expect(try await mover.query("XA RECOVER").rows.count == 1)
                    #expect(try await mover.query("SELECT customer_name FROM account_info WHERE account_id = \(a.id)").rows.first?.string("customer_name") == "A")
                    await expectLockWaitTimeout("a locking read of a row a prepared branch changed") {
                        _ = try await mover.query("SELECT customer_name FROM account_info WHERE account_id = \(a.id) LOCK IN SHARE MODE")
                    }
                    try await branch.xaCommit(xid)
                    // Committed after the switch, logged nowhere: a mover must wait for the branches
                    // prepared when its switch committed before it copies.
                    #expect(try await changes(connections, "node1") == [])
                    #expect(try await mover.query("SELECT customer_name FROM account_info WHERE account_id = \(a.id) LOCK IN SHARE MODE").rows.first?.string("customer_name") == "in doubt")
                }
            }
        }
    }

    @Test("with a binary log, creating the capture triggers needs SUPER or log_bin_trust_function_creators: the error says so, and they install once the server trusts creators")
    func binaryLogNeedsTrust() async throws {
        try await withCluster(nodes: 1, etcd: 1, mariadbOptions: ["log-bin", "binlog_format=ROW"]) { cluster in
            let node = try cluster.node("node1")
            // root (no password, over the node's socket), as LocalCluster sets its servers up: an operator.
            let rootSession = try await MariaDBConnection.connect(configuration: MariaDBConfiguration(label: "node1-root", unixSocket: node.socket, user: "root", password: ""))
            do {
                try await migrateWithBinaryLog(cluster, root: rootSession)
            } catch {
                await rootSession.close()
                throw error
            }
            await rootSession.close()
        }
    }

    private func migrateWithBinaryLog(_ cluster: LocalCluster, root rootSession: MariaDBConnection) async throws {
        #expect(try await rootSession.query("SELECT @@log_bin AS b, @@log_bin_trust_function_creators AS t").rows.first.map { "\(try $0.int64("b"))\(try $0.int64("t"))" } == "10")
        try await withSession(cluster, "node1") { c in
            #expect(try await BankSchema.migrate(c, logger: testLogger) == [1, 2, 3, 4, 5, 6])
            do {
                try await BankSchema.installCaptureTriggers(c)
                Issue.record("the bank user created triggers on a server with a binary log and without trust")
            } catch let error as MariaDBError {
                #expect(error.errorNumber == 1419)
                #expect(error.message.contains("log_bin_trust_function_creators"), "\(error.message)")
            }
            try await rootSession.query("SET GLOBAL log_bin_trust_function_creators = ON")
            try await BankSchema.installCaptureTriggers(c)
            try await c.query("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state, capture) VALUES ('accounts', 'a1', 0, NULL, 1, 'active', 1)")
            try await c.query("INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (1, 'x', 1.00, 'a1')")
            #expect(try await c.query("SELECT COUNT(*) AS n FROM range_changes").rows.first?.int64("n") == 1)
        }
    }
}
