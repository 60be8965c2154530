import Foundation
import Ledger
import MariaDB
import Mover
import Moves
import Sharding
import Testing

/// What a node holds of directory range `range`: entries, the opening decisions and the key claims
/// keyed into it (bounds from the seed map), and its ownership row's state.
private func directoryFootprint(_ f: MoveFixture, _ node: String, _ range: String) async throws
    -> (entries: Int64, openings: Set<String>, claims: Set<String>, state: String?) {
    let shard = seedMaps.directory.range(id: range)!
    return try await f.connections.withConnection(node) { c in
        let entries = try await c.execute("SELECT COUNT(*) AS n FROM account_directory WHERE directory_range = ?", [.string(range)]).rows[0].int64("n")
        func keyed(_ sql: String) async throws -> Set<String> {
            var keys = Set<String>()
            for r in try await c.execute(sql).rows {
                let key = try r.string("transfer_id")
                let hash = DirectoryHash.key(forIdempotencyKey: key)
                if hash >= shard.lowerBound && shard.upperBound.map({ hash < $0 }) ?? true { keys.insert(key) }
            }
            return keys
        }
        let openings = try await keyed("SELECT transfer_id FROM transfers WHERE kind = 'open'")
        let claims = try await keyed("SELECT transfer_id FROM key_claims")
        let state = try await c.execute("SELECT state FROM range_ownership WHERE map_name = 'directory' AND range_id = ?", [.string(range)]).rows.first?.string("state")
        return (entries, openings, claims, state)
    }
}

/// Accounts opened (with 0.00, so Σ stays put) one after another until `stop`, each retried with
/// its key as a client would; their keys and ids go to `opened`.
private func openingLoad(_ bank: Bank, stop: Shared<Bool>, opened: Shared<[(key: String, id: Int64)]>) -> Task<Void, any Error> {
    Task {
        var n = 0
        while !stop.value {
            n += 1
            let key = "live-open-\(n)"
            while true {
                do {
                    let account = try await bank.openAccount(customerName: "live \(n)", balance: money("0.00"), idempotencyKey: key)
                    opened.update { $0.append((key, account.id)) }
                    break
                } catch let error as LedgerError where error.code == .rangeMoving || error.code == .aborted || error.code == .outcomeUnknown {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        }
    }
}

@Suite("Directory range moves: entries, and the opening decisions and key claims keyed into the range, with real nodes", .serialized)
struct DirectoryMoveTests {
    @Test("a directory range moves under openings and under transfers that cross nodes (rewriting entries): verify clean during and after, every opening's retry replays, every acknowledged transfer committed, an old-map router reads and writes")
    func moveUnderLoad() async throws {
        try await withMoveFixture { f in
            var accounts = try await openAccounts(f.bank, count: 60, prefix: "dm")
            for i in 0..<10 { accounts.append(try await f.bank.openAccount(customerName: "a2 \(i)", balance: money("10005.00"), idempotencyKey: "dm-a2-\(i)")) }
            let inD1 = accounts.filter { (try? seedMaps.directory.range(for: DirectoryHash.key(forAccount: $0.id)).id) == "d1" }
            #expect(inD1.count >= 5, "too few accounts with their entry in d1 to test: \(inD1.count)")
            let before = try await f.verify()
            #expect(before.clean, "\(before.summary)")
            // A router that knows the map from before the move.
            let old = Shared(seedMaps)
            let router = Bank(connections: f.connections, maps: { old.value }, refreshMaps: { old.value = try await f.currentMaps() },
                              nextAccountID: { -1 }, logger: testLogger)

            let stop = Shared(false)
            let acknowledged = Shared<[String]>([])
            let opened = Shared<[(key: String, id: Int64)]>([])
            // Some transfers cross a1's top bound (the row goes to node2, its entry is rewritten).
            let transfers = transferLoad(f.bank, accounts, stop: stop, acknowledged: acknowledged) { n in n % 5 == 0 ? money("12.00") : money("0.\(10 + n % 80)") }
            let openings = openingLoad(f.bank, stop: stop, opened: opened)
            try await Task.sleep(for: .milliseconds(400))
            let verifiedDuring = Shared<LedgerVerifier.Report?>(nil)
            let verifiedFrozen = Shared<LedgerVerifier.Report?>(nil)
            let mover = f.mover { options in
                options.beforeStep = { phase in
                    if phase == .catchingUp, verifiedDuring.value == nil, let report = try? await f.verify() { verifiedDuring.value = report }
                }
                // With d1 frozen on node1 and its copy on node3.
                options.afterStep = { phase, _ in
                    if phase == .frozen, verifiedFrozen.value == nil, let report = try? await f.verify() { verifiedFrozen.value = report }
                }
            }
            let job = try await mover.create(map: .directory, range: "d1", to: "node3")
            let record = try await mover.run(job.record.id)
            try await Task.sleep(for: .milliseconds(400))
            stop.value = true
            try await transfers.value
            try await openings.value
            try await waitUntilNothingPrepared(f.connections)

            #expect(record.phase == "done" && record.error == nil, "\(record)")
            #expect(record.rows.total >= Int64(inD1.count))
            #expect(verifiedDuring.value?.clean == true, "verify during the move: \(verifiedDuring.value?.summary ?? "not run")")
            // Held frozen by the hook for the whole verify, d1 is reported as frozen (a freeze that
            // outlasts the verifier's settle is a stuck move); nothing else may be.
            let frozenFindings = (verifiedFrozen.value?.violations ?? ["not run"]).filter { !$0.contains("holds directory range d1 in state frozen") }
            #expect(frozenFindings.isEmpty, "verify with d1 frozen: \(frozenFindings)")
            #expect(try await f.currentMaps().directory.range(id: "d1")?.node == "node3")
            let source = try await directoryFootprint(f, "node1", "d1")
            let target = try await directoryFootprint(f, "node3", "d1")
            #expect(source.entries == 0 && source.state == nil && source.openings.isEmpty,
                    "node1 keeps \(source.entries) entries and \(source.openings.count) openings of d1, ownership \(source.state ?? "none")")
            #expect(target.state == "active" && target.entries >= Int64(inD1.count))
            let keys = opened.value
            #expect(keys.count > 5, "the openings made too little progress: \(keys.count)")
            let keyedIntoD1 = ((0..<60).map { "dm-open-\($0)" } + (0..<10).map { "dm-a2-\($0)" } + keys.map(\.key)).filter {
                (try? seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: $0)).id) == "d1"
            }
            #expect(!keyedIntoD1.isEmpty)
            #expect(Set(keyedIntoD1).subtracting(target.openings).isEmpty, "openings keyed into d1 missing on node3: \(Set(keyedIntoD1).subtracting(target.openings).sorted())")
            // Every key of d1 is claimed on node3 now, the openings' and the transfers' (some claimed
            // while d1 was captured), and on node1 no more.
            let transfersIntoD1 = acknowledged.value.filter { (try? seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: $0)).id) == "d1" }
            #expect(!transfersIntoD1.isEmpty)
            let unclaimed = Set(keyedIntoD1 + transfersIntoD1).subtracting(target.claims)
            #expect(unclaimed.isEmpty, "keys of d1 not claimed on node3: \(unclaimed.sorted())")
            #expect(source.claims.isEmpty, "node1 keeps \(source.claims.count) claims of d1")
            // The claim moved with the range: the key of a transfer of d1 reused for another request is refused.
            do {
                let reused = try await f.bank.deposit(inD1[0].id, amount: money("1.00"), idempotencyKey: transfersIntoD1[0])
                Issue.record("the key \(transfersIntoD1[0]) of a transfer was applied as a deposit after d1 moved (replayed: \(reused.replayed))")
            } catch let error as LedgerError where error.code == .idempotencyConflict {}

            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            #expect(after.balances == before.balances, "Σ balances changed across the move")
            for key in acknowledged.value {
                #expect(try await f.bank.transferRecord(key).state == "committed", "acknowledged \(key) is not committed")
            }
            // Every opening's retry finds its decision (on node3 for the keys of d1) and answers the same account.
            for (key, id) in keys {
                let n = key.split(separator: "-").last!
                #expect(try await f.bank.openAccount(customerName: "live \(n)", balance: money("0.00"), idempotencyKey: key).id == id, "retry of \(key)")
            }
            // The old router: its map sends it to node1 for d1's entries; it reads the map again.
            for account in inD1 {
                #expect(try await router.account(account.id).id == account.id)
            }
            let crossing = try await router.deposit(inD1[0].id, amount: money("60000.00"), idempotencyKey: "old-router-crossing")
            #expect(!crossing.replayed)
            #expect(try await f.bank.account(inD1[0].id).node == "node3") // a3 is on node3
            // An opening keyed into d1, retried through the old router, answers its account.
            let i = try #require((0..<60).first { (try? seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: "dm-open-\($0)")).id) == "d1" })
            let cents: Int64 = i % 5 == 0 ? 999_000 + Int64(i) : 10_000 + Int64(i) * 7_919 % 900_000
            #expect(try await router.openAccount(customerName: "dm \(i)", balance: Money(minorUnits: cents), idempotencyKey: "dm-open-\(i)").id == accounts[i].id)
            #expect(try await f.verify().clean)
        }
    }

    @Test("a directory move killed in a phase is resumed by another runner and finishes; verify clean, openings replay",
          arguments: [MovePhase.copying, .frozen, .published, .cleaning])
    func killedAndResumed(at phase: MovePhase) async throws {
        try await killedAndResumed(crashing: { options in options.beforeStep = { p in if p == phase { throw MoverKilled() } } }, writable: !phase.rangeUnwritable)
    }

    @Test("a directory move killed after a step took effect but before its record said so (the openings copied inside the freeze; the moved decisions deleted) is resumed and finishes",
          arguments: [MovePhase.verified, .cleaning])
    func killedAfterStep(at phase: MovePhase) async throws {
        try await killedAndResumed(crashing: { options in
            options.afterStep = { p, action in if p == phase, phase != .cleaning || action == .cleanDecisions { throw MoverKilled() } }
        }, writable: false)
    }

    private func killedAndResumed(crashing configure: @escaping (inout RangeMover.Options) -> Void, writable: Bool) async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 40, prefix: "dk")
            let before = try await f.verify()
            #expect(!(try await directoryFootprint(f, "node1", "d1")).openings.isEmpty, "no dk key falls in d1: the test would prove nothing about openings")
            let crashing = f.mover(configure)
            let job = try await crashing.create(map: .directory, range: "d1", to: "node2")
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            let whileStopped = writable ? try await f.bank.openAccount(customerName: "while stopped", balance: money("0.00"), idempotencyKey: "dk-while-stopped") : nil
            let record = try await f.mover().run(job.record.id)
            #expect(record.phase == "done", "\(record)")
            #expect(try await f.currentMaps().directory.range(id: "d1")?.node == "node2")
            let source = try await directoryFootprint(f, "node1", "d1")
            #expect(source.entries == 0 && source.openings.isEmpty && source.claims.isEmpty && source.state == nil)
            let target = try await directoryFootprint(f, "node2", "d1")
            #expect(!target.openings.isEmpty && target.claims == target.openings, "node2: openings \(target.openings.sorted()), claims \(target.claims.sorted())")
            if let whileStopped {
                #expect(try await f.bank.openAccount(customerName: "while stopped", balance: money("0.00"), idempotencyKey: "dk-while-stopped").id == whileStopped.id)
            }
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
            for (i, account) in accounts.enumerated() {
                let cents: Int64 = i % 5 == 0 ? 999_000 + Int64(i) : 10_000 + Int64(i) * 7_919 % 900_000
                #expect(try await f.bank.openAccount(customerName: "dk \(i)", balance: Money(minorUnits: cents), idempotencyKey: "dk-open-\(i)").id == account.id)
                #expect(try await f.bank.account(account.id).balance == account.balance)
            }
        }
    }

    @Test("an opening keyed into the range whose decision was written long before it committed (after the comparison, before the freeze) is still carried: its retry after the move answers its account")
    func lateCommittedOpening() async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 10, prefix: "dl")
            let key = try #require((0..<500).map { "dl-late-\($0)" }.first { (try? seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: $0)).id) == "d1" })
            let late = Shared<Account?>(nil)
            let mover = f.mover { options in
                options.beforeStep = { phase in
                    guard phase == .frozen, late.value == nil else { return }
                    // Committed now; as if its decision row had been written an hour ago (a
                    // commit held up that long), and its log line with it.
                    let account = try await f.bank.openAccount(customerName: "late", balance: money("20.00"), idempotencyKey: key)
                    try await f.connections.withConnection("node1") { c in
                        try await c.execute("UPDATE transfers SET created_at = NOW(6) - INTERVAL 1 HOUR WHERE transfer_id = ?", [.string(key)])
                        try await c.execute("UPDATE range_changes SET changed_at = NOW(6) - INTERVAL 1 HOUR WHERE map_name = 'openings' AND account_id = ?", [.int(account.id)])
                    }
                    late.value = account
                }
            }
            let record = try await mover.run(try await mover.create(map: .directory, range: "d1", to: "node3").record.id)
            #expect(record.phase == "done", "\(record)")
            let account = try #require(late.value)
            #expect(try await directoryFootprint(f, "node3", "d1").openings.contains(key))
            #expect(try await f.bank.openAccount(customerName: "late", balance: money("20.00"), idempotencyKey: key).id == account.id)
            #expect(try await f.verify().clean)
        }
    }

    @Test("a movement's key claim keyed into the range that committed long after its claimed_at (after the comparison, before the freeze) is still carried: after the move the key is refused for another request, and the first replays")
    func lateCommittedClaim() async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 10, prefix: "dq")
            let key = try #require((0..<500).map { "dq-late-\($0)" }.first { (try? seedMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: $0)).id) == "d1" })
            let done = Shared(false)
            let mover = f.mover { options in
                options.beforeStep = { phase in
                    guard phase == .frozen, !done.value else { return }
                    // Committed now; as if its claim had been written an hour ago (a statement or a
                    // branch held up that long), and its log line with it.
                    _ = try await f.bank.deposit(accounts[0].id, amount: money("1.00"), idempotencyKey: key)
                    try await f.connections.withConnection("node1") { c in
                        #expect(try await c.execute("SELECT COUNT(*) AS n FROM range_changes WHERE map_name = 'openings' AND range_id = 'd1' AND changed_at = (SELECT claimed_at FROM key_claims WHERE transfer_id = ?)", [.string(key)]).rows[0].int64("n") == 1,
                                "the claim's log line carries its claimed_at")
                        try await c.execute("UPDATE key_claims SET claimed_at = NOW(6) - INTERVAL 1 HOUR WHERE transfer_id = ?", [.string(key)])
                        try await c.execute("UPDATE range_changes SET changed_at = NOW(6) - INTERVAL 1 HOUR WHERE map_name = 'openings' AND range_id = 'd1'")
                    }
                    done.value = true
                }
            }
            let record = try await mover.run(try await mover.create(map: .directory, range: "d1", to: "node3").record.id)
            #expect(record.phase == "done", "\(record)")
            #expect(done.value)
            #expect(try await directoryFootprint(f, "node3", "d1").claims.contains(key))
            #expect(try await f.bank.deposit(accounts[0].id, amount: money("1.00"), idempotencyKey: key).replayed)
            do {
                _ = try await f.bank.deposit(accounts[1].id, amount: money("1.00"), idempotencyKey: key)
                Issue.record("the key \(key) was applied to a second account after d1 moved")
            } catch let error as LedgerError where error.code == .idempotencyConflict {}
            #expect(try await f.verify().clean)
        }
    }

    @Test("a directory move cancelled after its copy leaves the source serving the range and the target with no copy; verify clean")
    func cancelled() async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 40, prefix: "dc")
            let before = try await f.verify()
            let crashing = f.mover { options in options.beforeStep = { p in if p == .frozen { throw MoverKilled() } } }
            let job = try await crashing.create(map: .directory, range: "d1", to: "node2")
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            let copied = try await directoryFootprint(f, "node2", "d1")
            #expect(copied.state == "incoming" && copied.entries > 0, "the copy did not reach node2 before the kill")
            let record = try await f.mover().run(job.record.id, .cancel)
            #expect(record.phase == "cancelled", "\(record)")
            let target = try await directoryFootprint(f, "node2", "d1")
            let source = try await directoryFootprint(f, "node1", "d1")
            #expect(target.entries == 0 && target.state == nil && target.openings.isEmpty && target.claims.isEmpty, "node2 keeps \(target)")
            #expect(source.state == "active" && source.entries == copied.entries && !source.openings.isEmpty && source.claims == source.openings)
            #expect(try await f.currentMaps().directory.range(id: "d1")?.node == "node1")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
            _ = try await f.bank.transfer(from: accounts[1].id, to: accounts[2].id, amount: money("1.00"), idempotencyKey: "dc-after-cancel")
            _ = try await f.bank.openAccount(customerName: "after cancel", balance: money("0.00"), idempotencyKey: "dc-after-cancel-open")
        }
    }
}
