import Foundation
import Ledger
import MariaDB
import Sharding
import Testing

private func verify(_ connections: NodeConnections, xaBound: Duration = .seconds(1)) async throws -> LedgerVerifier.Report {
    try await LedgerVerifier(connections: connections, maps: seedMaps).run(xaBound: xaBound, settle: .milliseconds(200))
}

/// Runs `sql` on `node` (statements separated by ";\n").
private func sql(_ connections: NodeConnections, _ node: String, _ text: String) async throws {
    try await connections.withConnection(node) { c in
        for statement in text.components(separatedBy: ";\n") where !statement.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            try await c.query(statement)
        }
    }
}

@Suite("ctl verify names each broken invariant", .serialized)
struct VerifierTests {
    @Test("every check: break the invariant by hand, verify names it, mend it, verify is clean again (18 invariants and a stray prepared branch)")
    func eachCheck() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")   // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "o-b") // node2
            let c = try await bank.openAccount(customerName: "C", balance: money("60000.00"), idempotencyKey: "o-c") // node3
            _ = try await bank.transfer(from: b.id, to: a.id, amount: money("1.00"), idempotencyKey: "t1")
            _ = try await bank.deposit(c.id, amount: money("1.00"), idempotencyKey: "d1")
            _ = try await bank.deposit(a.id, amount: money("10000.00"), idempotencyKey: "move-a") // a moves to node2
            #expect(try await bank.account(a.id).node == "node2")
            let clean = try await verify(connections)
            #expect(clean.clean, "\(clean.summary)")
            #expect(clean.accounts == 3 && clean.transfers == 6)

            // (node, breaking SQL, mending SQL, a phrase the report must contain)
            var cases: [(String, String, String, String)] = [
                ("node3", "UPDATE account_info SET balance = balance + 0.01 WHERE account_id = \(c.id)",
                 "UPDATE account_info SET balance = balance - 0.01 WHERE account_id = \(c.id)", "postings on node3 sum to"),
                ("node3", "UPDATE journal SET balance_after = balance_after + 1 WHERE transfer_id = 'd1'",
                 "UPDATE journal SET balance_after = balance_after - 1 WHERE transfer_id = 'd1'", "its last posting (d1 on node3)"),
                ("node2", "UPDATE journal SET attempt = 'ffffffffffff' WHERE transfer_id = 't1' AND account_id = \(b.id)",
                 "UPDATE journal j JOIN transfers t ON t.transfer_id = j.transfer_id AND t.state = 'committed' SET j.attempt = t.attempt WHERE j.transfer_id = 't1'",
                 "belongs to attempt ffffffffffff"),
                ("node3", "UPDATE transfers SET amount = amount + 1 WHERE transfer_id = 'd1'",
                 "UPDATE transfers SET amount = amount - 1 WHERE transfer_id = 'd1'", "should post"),
                ("node3", "INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) SELECT \(b.id), 't1', attempt, 0, 0 FROM journal WHERE transfer_id = 'd1'",
                 "DELETE FROM journal WHERE transfer_id = 't1'", "posts 2 times to account \(b.id)"),
                ("node3", "INSERT INTO transfers (transfer_id, attempt, kind, state, amount, request_hash) VALUES ('t1', 'aaaaaaaaaaaa', 'transfer', 'committed', 1.00, '')",
                 "DELETE FROM transfers WHERE transfer_id = 't1'", "transfer t1 has 2 committed decisions"),
                ("node3", "INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES (\(c.id), 'ghost', '', 0, 60001.00)",
                 "DELETE FROM journal WHERE transfer_id = 'ghost'", "postings of ghost (accounts \(c.id)) have no committed decision"),
                ("node3", "INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES (424242, 'd1', '', 0, 0)",
                 "DELETE FROM journal WHERE account_id = 424242", "postings to account 424242"),
                ("node\(try seedMaps.directory.range(for: DirectoryHash.key(forAccount: a.id)).node.dropFirst(4))",
                 "UPDATE account_directory SET data_range = 'a3' WHERE account_id = \(a.id)",
                 "UPDATE account_directory SET data_range = 'a2' WHERE account_id = \(a.id)", "the row is in a2 on node2"),
                ("node\(try seedMaps.directory.range(for: DirectoryHash.key(forAccount: a.id)).node.dropFirst(4))",
                 "UPDATE account_directory SET previous_nodes = '' WHERE account_id = \(a.id)",
                 "UPDATE account_directory SET previous_nodes = 'node1' WHERE account_id = \(a.id)", "says its directory entry"),
                ("node1", "UPDATE range_ownership SET state = 'frozen' WHERE map_name = 'accounts' AND range_id = 'a1'",
                 "UPDATE range_ownership SET state = 'active' WHERE map_name = 'accounts' AND range_id = 'a1'", "in state frozen"),
                ("node2", "UPDATE range_ownership SET upper_bound = upper_bound + 1 WHERE map_name = 'accounts' AND range_id = 'a2'",
                 "UPDATE range_ownership SET upper_bound = upper_bound - 1 WHERE map_name = 'accounts' AND range_id = 'a2'", "has bounds"),
                ("node3", "INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', 'a1', 0, 1000001, 1, 'active')",
                 "DELETE FROM range_ownership WHERE map_name = 'accounts' AND range_id = 'a1'", "node3 holds accounts range a1 active"),
                ("node3", "INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES (\(a.id), 'stray', '', 0, 0)",
                 "DELETE FROM journal WHERE transfer_id = 'stray'", "has postings on node3 that its previous nodes"),
                ("node1", "INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (\(c.id), 'copy', 0, 'a1')",
                 "DELETE FROM account_info WHERE account_id = \(c.id)", "account \(c.id) exists on several nodes: node1, node3"),
            ]
            // Key claims: each key on its directory node, for one request, that of its decision.
            func keyNode(_ key: String) throws -> String { try seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)).node }
            let t1Node = try keyNode("t1")
            let elsewhere = ["node1", "node2", "node3"].first { $0 != t1Node }!
            let t1Hash = try #require(try await connections.withConnection(t1Node) {
                try await $0.query("SELECT request_hash FROM key_claims WHERE transfer_id = 't1'").rows.first?.string("request_hash")
            })
            let strayKey = try #require((0..<100).map { "stray-claim-\($0)" }.first { (try? keyNode($0)) != elsewhere })
            cases += [
                (elsewhere, "INSERT INTO key_claims (transfer_id, key_hash, kind, home_account, request_hash) VALUES ('t1', 0, 'transfer', \(a.id), 'ffff')",
                 "DELETE FROM key_claims WHERE transfer_id = 't1'", "idempotency key t1 is claimed for 2 different requests"),
                (t1Node, "UPDATE key_claims SET request_hash = 'ffff' WHERE transfer_id = 't1'",
                 "UPDATE key_claims SET request_hash = '\(t1Hash)' WHERE transfer_id = 't1'",
                 "is another request than the one its key was claimed for"),
                (elsewhere, "INSERT INTO key_claims (transfer_id, key_hash, kind, home_account, request_hash) VALUES ('\(strayKey)', 0, 'deposit', \(a.id), 'ffff')",
                 "DELETE FROM key_claims WHERE transfer_id = '\(strayKey)'", "the claim of idempotency key \(strayKey) is on \(elsewhere), not on \(try keyNode(strayKey))"),
            ]
            for (node, breaking, mending, phrase) in cases {
                try await sql(connections, node, breaking)
                let report = try await verify(connections)
                #expect(!report.clean && report.summary.contains(phrase), "after «\(breaking)»: expected «\(phrase)» in\n\(report.summary)")
                try await sql(connections, node, mending)
                let mended = try await verify(connections)
                #expect(mended.clean, "after mending «\(breaking)»:\n\(mended.summary)")
            }

            // A prepared branch naming a commit point that is not registered, left by a crashed process.
            let xid = BranchName.xid(transferID: "stray", attempt: .random(), participant: "node1", commitPoint: "node9")
            let stray = try await MariaDBConnection.connect(configuration: try #require(connections.pool("node1")).configuration)
            try await stray.xaStart(xid)
            try await stray.execute("INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES (1, 'stray', '', 0, 0)")
            try await stray.xaEnd(xid)
            try await stray.xaPrepare(xid)
            await stray.close()
            let report = try await verify(connections)
            #expect(report.summary.contains("names commit point node9, which is not a registered node"), "\(report.summary)")
            #expect(report.summary.contains("still prepared after"), "\(report.summary)")
            try await connections.withConnection("node1") { try await $0.xaRollback(xid) }
            #expect(try await verify(connections).clean)
        }
    }

    @Test("verify under a running cross-node load raises no false alarm; a cent created meanwhile is still found")
    func underLoad() async throws {
        try await withBank { _, bank, connections in
            var opened: [Int64] = []
            for (i, balance) in ["500.00", "600.00", "20000.00", "21000.00", "60000.00", "61000.00"].enumerated() {
                opened.append(try await bank.openAccount(customerName: "L\(i)", balance: money(balance), idempotencyKey: "o-\(i)").id)
            }
            let ids = opened
            let stop = ContinuousClock.now + .seconds(6)
            let reports = try await withThrowingTaskGroup(of: [LedgerVerifier.Report].self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        var n = 0
                        while ContinuousClock.now < stop {
                            let from = ids[(worker + n) % ids.count], to = ids[(worker + n + 1 + worker) % ids.count]
                            n += 1
                            if from == to { continue }
                            // Small amounts: no account crosses a boundary, so the load is all transfers between nodes and within.
                            _ = try? await bank.transfer(from: from, to: to, amount: money("0.01"), idempotencyKey: "w\(worker)-\(n)")
                        }
                        return []
                    }
                }
                group.addTask {
                    var reports: [LedgerVerifier.Report] = []
                    try await Task.sleep(for: .milliseconds(500))
                    while ContinuousClock.now < stop - .seconds(2) {
                        reports.append(try await verify(connections, xaBound: .seconds(3)))
                    }
                    return reports
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(!reports.isEmpty)
            for report in reports { #expect(report.clean, "a false alarm under load:\n\(report.summary)") }
            // A real violation during a load is reported.
            try await sql(connections, "node1", "UPDATE account_info SET balance = balance + 0.01 WHERE account_id = \(ids[0])")
            let broken = try await verify(connections)
            #expect(broken.summary.contains("account \(ids[0]) holds"), "\(broken.summary)")
        }
    }

    @Test("balances at the edges of Int64 do not trap: opening or depositing past the ceiling is refused, verify sums in Int128")
    func ceiling() async throws {
        try await withBank { _, bank, connections in
            await #expect(throws: LedgerError.self) {
                _ = try await bank.openAccount(customerName: "Max", balance: Money(minorUnits: Int64.max), idempotencyKey: "o-max")
            }
            let top = try await bank.openAccount(customerName: "Top", balance: BalanceLimit.defaultCeiling, idempotencyKey: "o-top")
            do {
                _ = try await bank.deposit(top.id, amount: money("0.01"), idempotencyKey: "d-past")
                Issue.record("a deposit past the ceiling was accepted")
            } catch let error as LedgerError {
                #expect(error.code == .balanceLimit && error.message.contains("1000000000000.00"), "\(error)")
            }
            // Rows written before the ceiling existed (or behind the ledger's back) near Int64.max:
            // a deposit is refused, not a trap; verify adds them without overflow.
            for id in [900_001, 900_002] {
                try await sql(connections, "node3", """
                    INSERT INTO account_info (account_id, customer_name, balance, balance_range) VALUES (\(id), 'legacy', 92233720368547758.07, 'a3');
                    INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES (\(id), 'legacy-\(id)', '', 92233720368547758.07, 92233720368547758.07);
                    INSERT INTO transfers (transfer_id, attempt, kind, state, to_account, amount, request_hash) VALUES ('legacy-\(id)', '', 'open', 'committed', \(id), 92233720368547758.07, '')
                    """)
                let directory = try seedMaps.directory.range(for: DirectoryHash.key(forAccount: Int64(id)))
                try await sql(connections, directory.node, "INSERT INTO account_directory (account_id, directory_range, data_node, data_range) VALUES (\(id), '\(directory.id)', 'node3', 'a3')")
            }
            do {
                _ = try await bank.deposit(900_001, amount: money("0.01"), idempotencyKey: "d-legacy")
                Issue.record("a deposit to a balance at Int64.max was accepted")
            } catch let error as LedgerError {
                #expect(error.code == .balanceLimit, "\(error)")
            }
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
            #expect(report.balances > Int128(Int64.max))
        }
    }
}
