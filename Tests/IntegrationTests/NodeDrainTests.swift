import ClusterMetadata
import Foundation
import Ledger
import MariaDB
import Mover
import Moves
import Sharding
import Testing

/// Rows each node holds of `node` as a previous node (account rows and directory entries).
private func naming(_ f: MoveFixture, _ node: String) async throws -> Int64 {
    var n: Int64 = 0
    for other in ["node1", "node2", "node3"] {
        n += try await f.connections.withConnection(other) { c in
            try await c.execute("SELECT (SELECT COUNT(*) FROM account_info WHERE FIND_IN_SET(?, previous_nodes) > 0) + (SELECT COUNT(*) FROM account_directory WHERE FIND_IN_SET(?, previous_nodes) > 0) AS n",
                                [.string(node), .string(node)]).rows[0].int64("n")
        }
    }
    return n
}

/// Accounts on node1 (a1), some of which then cross to node2 and node3 (their history on node1
/// stays there), and accounts of node2 that cross down into a1. Returns the accounts and the
/// crossings' keys with what they answered.
private func accountsWithCrossings(_ f: MoveFixture) async throws -> (accounts: [Account], paid: [(key: String, result: MovementResult, again: @Sendable () async throws -> MovementResult)]) {
    var accounts = try await openAccounts(f.bank, count: 40, prefix: "dr")
    for i in 0..<6 { accounts.append(try await f.bank.openAccount(customerName: "dr a2 \(i)", balance: money("20000.00"), idempotencyKey: "dr-a2-\(i)")) }
    var paid: [(key: String, result: MovementResult, again: @Sendable () async throws -> MovementResult)] = []
    let bank = f.bank
    func transfer(_ key: String, _ from: Account, _ to: Account, _ amount: String) async throws {
        let (a, b, m) = (from.id, to.id, money(amount))
        paid.append((key, try await bank.transfer(from: a, to: b, amount: m, idempotencyKey: key), { try await bank.transfer(from: a, to: b, amount: m, idempotencyKey: key) }))
    }
    // Up out of a1: to a2 (node2) by transfers, to a3 (node3) by a deposit.
    try await transfer("dr-up-0", accounts[40], accounts[0], "15000.00")
    try await transfer("dr-up-1", accounts[41], accounts[10], "15000.00")
    let (id, big) = (accounts[5].id, money("60000.00"))
    paid.append(("dr-up-2", try await bank.deposit(id, amount: big, idempotencyKey: "dr-up-2"), { try await bank.deposit(id, amount: big, idempotencyKey: "dr-up-2") }))
    // Down into a1 (node1) from a2.
    try await transfer("dr-down", accounts[44], accounts[1], "19995.00")
    // Plain ones, on node1 and across.
    for i in 0..<5 { try await transfer("dr-plain-\(i)", accounts[11 + i], accounts[20 + i], "1.00") }
    return (accounts, paid)
}

@Suite("Node drain: ranges of both maps off, history of accounts that crossed away rehomed, node removed — with real nodes", .serialized)
struct NodeDrainTests {
    @Test("node1 drains under transfers: its ranges move, the history of accounts that left it moves to their nodes, it ends removed and empty; verify clean, Σ unchanged, every acknowledged transfer committed, earlier transfers replay")
    func drainUnderLoad() async throws {
        try await withMoveFixture { f in
            let (accounts, paid) = try await accountsWithCrossings(f)
            #expect(try await naming(f, "node1") > 0, "no account left node1 by a crossing: the test would not rehome anything")
            let before = try await f.verify()
            #expect(before.clean, "\(before.summary)")

            // A router that saw two of node1's accounts there, and is idle through the drain.
            let idleMaps = Shared(try await f.currentMaps())
            let idle = Bank(connections: f.connections, maps: { idleMaps.value }, refreshMaps: { idleMaps.value = try await f.currentMaps() },
                            nextAccountID: { -1 }, logger: testLogger)
            #expect(try await idle.account(accounts[2].id).node == "node1")
            #expect(try await idle.account(accounts[3].id).node == "node1")

            let stop = Shared(false)
            let acknowledged = Shared<[String]>([])
            let load = transferLoad(f.bank, accounts, stop: stop, acknowledged: acknowledged) { n in n % 9 == 0 ? money("12.00") : money("0.\(10 + n % 80)") }
            try await Task.sleep(for: .milliseconds(300))
            let told = Shared<[String]>([])
            let drainer = NodeDrainer(mover: f.mover(), logger: testLogger)
            let job = try await drainer.create(node: "node1")
            let record = try await drainer.run(job.record.id) { line in told.update { $0.append(line) } }
            stop.value = true
            try await load.value
            try await waitUntilNothingPrepared(f.connections)

            #expect(record.phase == "done" && record.error == nil, "\(record) \(told.value)")
            #expect(try await f.store.nodes().first { $0.id == "node1" }?.state == .removed)
            let maps = try await f.currentMaps()
            #expect(!maps.accounts.ranges.contains { $0.node == "node1" } && !maps.directory.ranges.contains { $0.node == "node1" })
            let left = try await f.connections.withConnection("node1") { c in
                try await c.execute("""
                    SELECT (SELECT COUNT(*) FROM account_info) + (SELECT COUNT(*) FROM account_directory) + (SELECT COUNT(*) FROM journal)
                         + (SELECT COUNT(*) FROM transfers) + (SELECT COUNT(*) FROM range_ownership) AS n
                    """).rows[0].int64("n")
            }
            #expect(left == 0, "node1 still holds \(left) rows")
            #expect(try await naming(f, "node1") == 0, "accounts still name node1 as a previous node")
            #expect(record.rows.copied > 0, "no account's history was moved")
            let children = try await f.store.jobs().filter { $0.record.parent == job.record.id }
            #expect(children.count == 2 && children.allSatisfy { $0.record.phase == "done" }, "\(children.map { "\($0.record.map ?? "")/\($0.record.range ?? "") \($0.record.phase)" })")

            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            #expect(after.balances == before.balances, "Σ balances changed across the drain")
            for key in acknowledged.value {
                #expect(try await f.bank.transferRecord(key).state == "committed", "acknowledged \(key) is not committed")
            }
            // Transfers made before the drain (their decisions were on node1 for a1's home accounts) replay.
            for p in paid {
                let again = try await p.again()
                #expect(again.replayed && again.transferID == p.key, "retry of \(p.key)")
            }
            // The statement of an account that left node1 still lists its postings made there, once each.
            let left1 = accounts[0]
            let statement = try await f.bank.entries(of: left1.id, limit: 1000, after: nil).entries
            #expect(statement.contains { $0.transferID == "dr-open-0" }, "the opening posting of an account that crossed away is gone")
            #expect(Set(statement.map(\.transferID)).count == statement.count)

            // node1's pool closes (as the registry follower does for a removed node): the idle
            // router's cached places on node1 are no hint any more; it reads and moves money.
            _ = await f.connections.unregister(node: "node1")
            do { #expect(try await idle.account(accounts[2].id).node != "node1") } catch { Issue.record("idle read: \(error)") }
            do { _ = try await idle.transfer(from: accounts[3].id, to: accounts[2].id, amount: money("1.00"), idempotencyKey: "dr-after-removal") } catch { Issue.record("idle transfer: \(error)") }
            for account in accounts {
                do { _ = try await f.bank.account(account.id) } catch { Issue.record("read \(account.id): \(error)") }
            }
        }
    }

    @Test("a drain is refused while a move to or from the node has not ended, naming it; it goes ahead once that move is cancelled")
    func refusedWhileAMoveRuns() async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 10, prefix: "dm")
            let move = try await f.mover().create(map: .accounts, range: "a2", to: "node1")
            let drainer = NodeDrainer(mover: f.mover(), logger: testLogger)
            await #expect { _ = try await drainer.create(node: "node1") } throws: { "\($0)".contains(move.record.id) }
            #expect(try await f.store.nodes().first { $0.id == "node1" }?.state == .active)
            #expect(try await f.mover().run(move.record.id, .cancel).phase == "cancelled")
            let record = try await drainer.run(try await drainer.create(node: "node1").record.id)
            #expect(record.phase == "done", "\(record)")
            #expect(try await f.verify().clean)
        }
    }

    @Test("a drain whose runner died in one of its moves is resumed and finishes")
    func resumedAfterAKill() async throws {
        try await withMoveFixture { f in
            _ = try await accountsWithCrossings(f)
            let before = try await f.verify()
            // The second move (the directory range) dies while copying.
            let moves = Shared(0)
            let crashing = NodeDrainer(mover: f.mover { options in
                options.beforeStep = { phase in
                    if phase == .prepared { moves.update { $0 += 1 } }
                    if phase == .copying, moves.value == 2 { throw MoverKilled() }
                }
            }, logger: testLogger)
            let job = try await crashing.create(node: "node1")
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            #expect(try await f.store.job(job.record.id)?.record.phase == DrainPhase.movingRanges.rawValue)
            #expect(try await f.store.nodes().first { $0.id == "node1" }?.state == .draining)
            // Draining: node1 takes no new range.
            await #expect { _ = try await f.mover().create(map: .accounts, range: "a2", to: "node1") } throws: { "\($0)".contains("draining") }
            let record = try await NodeDrainer(mover: f.mover(), logger: testLogger).run(job.record.id)
            #expect(record.phase == "done", "\(record)")
            #expect(try await f.store.nodes().first { $0.id == "node1" }?.state == .removed)
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
        }
    }

    /// A coordinator on a stale map (its home account on node1) prepares on node2 after node1's drain
    /// ended, and dies before node1 would have refused its part. Nothing answers for node1 any more.
    @Test("a branch prepared after a drain, naming the removed node as commit point, is rolled back by the resolver (its attempt decided nothing); node1 is not asked")
    func lateBranchNamingRemovedNode() async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 6, prefix: "late")
            let drainer = NodeDrainer(mover: f.mover(), logger: testLogger)
            let record = try await drainer.run(try await drainer.create(node: "node1").record.id)
            #expect(record.phase == "done", "\(record)")
            // As a process following the registry does once node1 is removed: its pool closed, the node known removed.
            f.connections.markRemoved(try await f.store.nodes().filter { $0.state == .removed }.map(\.id))
            #expect(!f.connections.isRemoved("node1"), "a node this process still has a pool for counts as registered")
            await f.connections.unregister(node: "node1")
            #expect(f.connections.isRemoved("node1") && !f.connections.isRemoved("node2"))

            let xid = BranchName.xid(transferID: "late-1", attempt: .random(), participant: "node2", commitPoint: "node1")
            let c = try await MariaDBConnection.connect(configuration: try #require(f.connections.configuration(of: "node2")))
            try await c.xaStart(xid)
            try await c.execute("INSERT INTO journal (account_id, transfer_id, amount, balance_after) VALUES (1, 'late-1', 1.00, 1.00)")
            try await c.xaEnd(xid)
            try await c.xaPrepare(xid)
            await c.close()

            let listed = try await PreparedBranch.list(f.connections).filter { $0.xid == xid }
            #expect(listed.count == 1 && listed[0].commitPointRemoved && listed[0].decisionError == nil, "\(listed)")
            let resolutions = await InDoubtResolver(connections: f.connections, minimumAge: .zero, logger: testLogger).resolveOnce()
            #expect(resolutions.map(\.decision) == [.aborted], "\(resolutions)")
            let left = try await f.connections.withConnection("node2") { c in
                (try await c.xaRecover().contains(xid),
                 try await c.execute("SELECT COUNT(*) AS n FROM journal WHERE transfer_id = 'late-1'").rows[0].int64("n"))
            }
            #expect(left.0 == false && left.1 == 0, "the branch is still prepared, or its posting committed")
        }
    }

    @Test("refusals: an unknown node (listing the registered ones), the last active node, a node already draining in a job; a finished drain is not resumed")
    func refusals() async throws {
        try await withMoveFixture { f in
            let drainer = NodeDrainer(mover: f.mover(), logger: testLogger)
            await #expect { _ = try await drainer.create(node: "node9") } throws: { "\($0)".contains("registered: node1, node2, node3") }
            let job = try await drainer.create(node: "node3")
            await #expect { _ = try await drainer.create(node: "node3") } throws: { "\($0)".contains(job.record.id) }
            // With node2 and node3 draining, node1 is the last active node.
            for id in ["node2", "node3"] {
                var info = try #require(try await f.store.nodes().first { $0.id == id })
                info.state = .draining
                try await f.store.register(info)
            }
            await #expect { _ = try await drainer.create(node: "node1") } throws: { "\($0)".contains("last active node") }
            let cancelled = try await drainer.run(job.record.id, .cancel)
            #expect(cancelled.phase == "cancelled")
            await #expect { _ = try await drainer.run(job.record.id) } throws: { "\($0)".contains("has ended") }
        }
    }
}
