import ClusterMetadata
import Foundation
import Ledger
import MariaDB
import Mover
import Moves
import Sharding
import Testing

extension MoveFixture {
    func splitter(_ configure: (inout RangeSplitter.Options) -> Void = { _ in }) -> RangeSplitter {
        var options = RangeSplitter.Options()
        options.chunkSize = 25
        options.leaseTTL = 2
        configure(&options)
        return RangeSplitter(connections: connections, store: store, options: options, logger: testLogger)
    }

    /// On `node`: rows labelled `range` whose balance lies outside `[lower, upper)`, and directory
    /// entries of its accounts that name another range.
    func misplaced(_ node: String, range: String, lower: Int64, upper: Int64?) async throws -> (rows: Int64, entries: Int64) {
        let ids = try await connections.withConnection(node) { c in
            try await c.execute("SELECT account_id, CAST(balance * 100 AS SIGNED) AS k FROM account_info WHERE balance_range = ?", [.string(range)]).rows
                .map { (try $0.int64("account_id"), try $0.int64("k")) }
        }
        let outside = ids.filter { row in row.1 < lower || upper.map { row.1 >= $0 } ?? false }.count
        var wrong: Int64 = 0
        let maps = try await currentMaps()
        for (id, _) in ids {
            let node = try maps.directory.range(for: DirectoryHash.key(forAccount: id)).node
            let entry = try await connections.withConnection(node) { c in
                try await c.execute("SELECT data_range FROM account_directory WHERE account_id = ?", [.int(id)]).rows.first?.string("data_range")
            }
            if entry != range { wrong += 1 }
        }
        return (Int64(outside), wrong)
    }
}

@Suite("Range splits: add the new row, publish, relabel, narrow, point the directory — with real nodes", .serialized)
struct RangeSplitTests {
    @Test("a range splits at its median under transfers into, out of and within it; nothing lost or doubled, verify clean; the new range then moves")
    func splitUnderLoad() async throws {
        try await withMoveFixture { f in
            let inside = try await openAccounts(f.bank, count: 120, prefix: "s")
            var outside: [Account] = []
            for i in 0..<10 { outside.append(try await f.bank.openAccount(customerName: "a2 \(i)", balance: money("10005.00"), idempotencyKey: "a2-open-\(i)")) }
            let all = inside + outside
            let before = try await f.verify()
            #expect(before.clean, "\(before.summary)")
            let stop = Shared(false)
            let acknowledged = Shared<[String]>([])
            // Large amounts too, so that balances cross the split key both ways.
            let load = transferLoad(f.bank, all, stop: stop, acknowledged: acknowledged) { n in n % 5 == 0 ? money("2500.00") : money("0.\(10 + n % 80)") }
            try await Task.sleep(for: .milliseconds(300))
            let phases = Shared<[String]>([])
            let splitter = f.splitter { options in
                options.beforeStep = { phase in
                    phases.update { p in if p.last != phase.rawValue { p.append(phase.rawValue) } }
                    // Slow enough that the load writes under the old range meanwhile (stragglers).
                    if phase == .relabeling { try await Task.sleep(for: .milliseconds(20)) }
                }
            }
            let job = try await splitter.create(map: .accounts, range: "a1", at: nil)
            let newRange = try #require(job.record.newRange)
            #expect(newRange == "a4", "the first new id is above the seed's a1…a3 and d1…d3")
            let at = try #require(job.record.splitAt)
            #expect(at > 0 && at < 1_000_001)
            let record = try await splitter.run(job.record.id)
            try await Task.sleep(for: .milliseconds(300))
            stop.value = true
            try await load.value
            try await waitUntilNothingPrepared(f.connections)

            #expect(record.phase == "done", "\(record)")
            #expect(phases.value == ["prepared", "publishing", "relabeling", "narrowing", "pointing", "done"])
            let maps = try await f.currentMaps()
            #expect(maps.accounts.range(id: "a1")?.upperBound == at)
            let added = try #require(maps.accounts.range(id: newRange))
            #expect(added.lowerBound == at && added.upperBound == 1_000_001 && added.node == "node1")
            let low = try await f.misplaced("node1", range: "a1", lower: 0, upper: at)
            let high = try await f.misplaced("node1", range: newRange, lower: at, upper: 1_000_001)
            #expect(low.rows == 0 && high.rows == 0 && low.entries == 0 && high.entries == 0, "misplaced: a1 \(low), \(newRange) \(high)")
            let labelled = try await f.footprint("node1", newRange).rows
            #expect(labelled > 0)
            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            #expect(after.balances == before.balances, "Σ balances changed across the split")
            let keys = acknowledged.value
            #expect(keys.count > 30, "the load made too little progress: \(keys.count) transfers")
            for key in keys { #expect(try await f.bank.transferRecord(key).state == "committed", "acknowledged \(key) is not committed") }

            // The new range moves like any other; its accounts are found through their directory entries.
            let moved = try await f.mover().run(try await f.mover().create(map: .accounts, range: newRange, to: "node3").record.id)
            #expect(moved.phase == "done", "\(moved)")
            let now = try await f.currentMaps()
            for account in inside.prefix(40) {
                let read = try await f.bank.account(account.id)
                #expect(read.node == (try now.accounts.range(for: read.balance.minorUnits).node), "account \(account.id) read on \(read.node)")
            }
            let final = try await f.verify()
            #expect(final.clean && final.balances == before.balances, "\(final.summary)")
        }
    }

    @Test("a router on the map from before a split reads and writes the new range's accounts (the node's bounds refuse it, it reads the maps again)")
    func oldMapRouterAfterSplit() async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 30, prefix: "o")
            let old = Shared(seedMaps)
            let router = Bank(connections: f.connections, maps: { old.value }, refreshMaps: {
                old.value = try await f.currentMaps()
            }, nextAccountID: { -1 }, logger: testLogger)
            let record = try await f.splitter().run(try await f.splitter().create(map: .accounts, range: "a1", at: 500_000).record.id)
            #expect(record.phase == "done", "\(record)")
            #expect(old.value.accounts.range(id: "a4") == nil, "the router has not seen the split yet")
            let rich = try #require(accounts.first { $0.balance.minorUnits >= 500_000 })
            let poor = try #require(accounts.first { $0.balance.minorUnits < 400_000 })
            #expect(try await router.account(rich.id).balance == rich.balance)
            // A write under a1 for a balance a1 no longer covers is refused by node1's bounds.
            let paid = try await router.transfer(from: poor.id, to: rich.id, amount: money("1.00"), idempotencyKey: "old-router")
            #expect(!paid.replayed)
            #expect(old.value.accounts.range(id: "a4") != nil, "the router read the maps again")
            // A balance crossing the key from the old map's side: relabelled with its directory entry.
            _ = try await f.bank.transfer(from: rich.id, to: poor.id, amount: Money(minorUnits: rich.balance.minorUnits - 100_000), idempotencyKey: "cross-down")
            #expect(try await f.verify().clean)
        }
    }

    @Test("a splitter killed in every phase is resumed by another and finishes; verify clean, Σ unchanged",
          arguments: [SplitPhase.prepared, .publishing, .relabeling, .narrowing, .pointing])
    func killedAndResumed(at phase: SplitPhase) async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 80, prefix: "k")
            let before = try await f.verify()
            let seen = Shared(0)
            let crashing = f.splitter { options in
                options.beforeStep = { p in
                    // Relabeling: after a chunk, so the resume starts mid-way.
                    if p == phase, seen.update({ $0 += 1; return $0 }) == (phase == .relabeling ? 2 : 1) { throw MoverKilled() }
                }
            }
            let job = try await crashing.create(map: .accounts, range: "a1", at: 600_000)
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            _ = try await f.bank.transfer(from: accounts[5].id, to: accounts[6].id, amount: money("2.00"), idempotencyKey: "while-stopped")
            let record = try await f.splitter().run(job.record.id)
            #expect(record.phase == "done", "\(record)")
            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            #expect(after.balances == before.balances)
            let high = try await f.misplaced("node1", range: "a4", lower: 600_000, upper: 1_000_001)
            #expect(high.rows == 0 && high.entries == 0, "\(high)")
        }
    }

    @Test("a splitter killed after a step took effect but before its record said so is resumed and finishes (a chunk's record is saved with it)",
          arguments: [SplitPhase.prepared, .publishing, .narrowing])
    func killedAfterStep(at phase: SplitPhase) async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 40, prefix: "a")
            let before = try await f.verify()
            let crashing = f.splitter { options in
                options.afterStep = { p, _ in if p == phase { throw MoverKilled() } }
            }
            let job = try await crashing.create(map: .accounts, range: "a1", at: nil)
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            let record = try await f.splitter().run(job.record.id)
            #expect(record.phase == "done", "\(record)")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
            // The ranges' job locks were released: both halves can be split again.
            #expect(try await f.splitter().run(try await f.splitter().create(map: .accounts, range: job.record.newRange!, at: nil).record.id).phase == "done")
        }
    }

    @Test("while a split's directory entries still name the old range (stopped before pointing), accounts of the new range cross to the old one and to another node; the split then finishes")
    func crossingBeforePointing() async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 40, prefix: "p")
            let before = try await f.verify()
            let stopped = f.splitter { options in options.beforeStep = { if $0 == .pointing { throw MoverKilled() } } }
            let job = try await stopped.create(map: .accounts, range: "a1", at: 600_000)
            await #expect(throws: MoverKilled.self) { _ = try await stopped.run(job.record.id) }
            let high = accounts.filter { $0.balance.minorUnits >= 700_000 }
            let low = try #require(accounts.first { $0.balance.minorUnits < 100_000 })
            try #require(high.count >= 2)
            // Down into a1 on the same node (row and entry relabelled together), and up into a2 on node2.
            _ = try await f.bank.transfer(from: high[0].id, to: low.id, amount: Money(minorUnits: high[0].balance.minorUnits - 100_000), idempotencyKey: "down")
            _ = try await f.bank.transfer(from: low.id, to: high[1].id, amount: money("1000.00"), idempotencyKey: "up")
            #expect(try await f.bank.account(high[0].id).range == "a1")
            #expect(try await f.bank.account(high[1].id).node == "node2")
            #expect(try await f.splitter().run(job.record.id).phase == "done")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
        }
    }

    @Test("a split stopped before the map names the new range is cancelled: the range is whole again; after that, cancel is refused")
    func cancelled() async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 40, prefix: "c")
            let before = try await f.verify()
            let crashing = f.splitter { options in options.beforeStep = { if $0 == .publishing { throw MoverKilled() } } }
            let job = try await crashing.create(map: .accounts, range: "a1", at: 300_000)
            await #expect(throws: MoverKilled.self) { _ = try await crashing.run(job.record.id) }
            #expect(try await f.footprint("node1", "a4").state == "active", "the new row was added")
            let record = try await f.splitter().run(job.record.id, .cancel)
            #expect(record.phase == "cancelled" && record.error == "cancelled by an operator", "\(record)")
            #expect(try await f.footprint("node1", "a4").state == nil)
            #expect(try await f.currentMaps().accounts.ranges.map(\.id) == ["a1", "a2", "a3"])
            #expect(try await f.verify().clean)

            let later = f.splitter { options in options.beforeStep = { if $0 == .narrowing { throw MoverKilled() } } }
            let second = try await later.create(map: .accounts, range: "a1", at: 300_000)
            #expect(second.record.newRange == "a5", "a range id is never reused")
            await #expect(throws: MoverKilled.self) { _ = try await later.run(second.record.id) }
            await #expect { _ = try await f.splitter().run(second.record.id, .cancel) } throws: { "\($0)".contains("can only go forward") }
            #expect(try await f.splitter().run(second.record.id).phase == "done")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
        }
    }

    @Test("resume and cancel asked over HTTP hand the job to the serves: a supervisor finishes one split and undoes another; a rebalance asked over HTTP is run by a supervisor; an ended job is refused")
    func requestsOverHTTP() async throws {
        try await withMoveFixture { f in
            _ = try await openAccounts(f.bank, count: 40, prefix: "h")
            let before = try await f.verify()
            let killed = { (phase: SplitPhase) in f.splitter { options in options.beforeStep = { if $0 == phase { throw MoverKilled() } } } }
            let first = try await killed(.relabeling).create(map: .accounts, range: "a1", at: 500_000)
            await #expect(throws: MoverKilled.self) { _ = try await killed(.relabeling).run(first.record.id) }
            var serveSplitter = RangeSplitter.Options()
            serveSplitter.claimWait = .zero
            serveSplitter.leaseTTL = 2
            let supervisor = MoveSupervisor(mover: f.mover { $0.claimWait = .zero },
                                            splitter: RangeSplitter(connections: f.connections, store: f.store, options: serveSplitter, logger: testLogger),
                                            rebalancer: Rebalancer(mover: f.mover { $0.claimWait = .zero }, splitter: f.splitter(), logger: testLogger), logger: testLogger)
            // The dead runner's lease must lapse before a serve can claim the job.
            try await Task.sleep(for: .seconds(3))
            let asked = try await JobRequests.request(.resume, job: first.record.id, store: f.store)
            #expect(asked.runBy == "serve" && asked.cancelRequested == false)
            await supervisor.passOnce()
            #expect(try await f.store.job(first.record.id)?.record.phase == "done")
            await #expect { _ = try await JobRequests.request(.resume, job: first.record.id, store: f.store) } throws: { "\($0)".contains("has ended") }
            await #expect { _ = try await JobRequests.request(.cancel, job: "job-nosuch", store: f.store) } throws: { ($0 as? MoveError)?.code == .notFound }

            let second = try await killed(.publishing).create(map: .accounts, range: first.record.newRange!, at: 800_000)
            await #expect(throws: MoverKilled.self) { _ = try await killed(.publishing).run(second.record.id) }
            try await Task.sleep(for: .seconds(3))
            _ = try await JobRequests.request(.cancel, job: second.record.id, store: f.store)
            await supervisor.passOnce()
            #expect(try await f.store.job(second.record.id)?.record.phase == "cancelled")
            #expect(try await f.currentMaps().accounts.ranges.count == 4)

            var options = Rebalancer.Options()
            options.tolerance = 30
            options.maxRangeRows = 1000
            let rebalance = try await Rebalancer(mover: f.mover(), splitter: f.splitter(), logger: testLogger).create(options, runBy: "serve")
            await supervisor.passOnce()
            let ran = try await f.store.job(rebalance.record.id)?.record
            #expect(ran?.phase == "done", "\(String(describing: ran))")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
        }
    }

    @Test("a directory range splits at its median hash; lookups, openings and transfers go on; verify clean")
    func directorySplit() async throws {
        try await withMoveFixture { f in
            let accounts = try await openAccounts(f.bank, count: 60, prefix: "d")
            let before = try await f.verify()
            let record = try await f.splitter().run(try await f.splitter().create(map: .directory, range: "d2", at: nil).record.id)
            #expect(record.phase == "done", "\(record)")
            let maps = try await f.currentMaps()
            let newRange = try #require(record.newRange)
            #expect(newRange.hasPrefix("d") && maps.directory.range(id: newRange)?.node == "node2")
            let rows = try await f.connections.withConnection("node2") { c in
                try await c.execute("SELECT account_id, directory_range FROM account_directory WHERE directory_range IN ('d2', ?)", [.string(newRange)]).rows
                    .map { (try $0.int64("account_id"), try $0.string("directory_range")) }
            }
            #expect(!rows.isEmpty)
            for (id, range) in rows { #expect(try maps.directory.range(for: DirectoryHash.key(forAccount: id)).id == range, "account \(id) labelled \(range)") }
            for account in accounts.prefix(10) { #expect(try await f.bank.account(account.id).balance == account.balance) }
            let opened = try await f.bank.openAccount(customerName: "after", balance: money("1.00"), idempotencyKey: "after-dir-split")
            _ = try await f.bank.transfer(from: accounts[0].id, to: opened.id, amount: money("0.50"), idempotencyKey: "after-dir-split-t")
            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            _ = before
        }
    }

    @Test("an account whose range moved and that crosses back to the source before the move's cleaning keeps one copy of each decision (not one per node); its retry replays")
    func decisionCopiesAfterCrossingBack() async throws {
        try await withMoveFixture { f in
            let x = try await f.bank.openAccount(customerName: "x", balance: money("8000.00"), idempotencyKey: "open-x")
            let y = try await f.bank.openAccount(customerName: "y", balance: money("10.00"), idempotencyKey: "open-y")
            // x is the home account of this decision (the payer), made on node1.
            let paid = try await f.bank.transfer(from: x.id, to: y.id, amount: money("1.00"), idempotencyKey: "before-move")
            let split = try await f.splitter().run(try await f.splitter().create(map: .accounts, range: "a1", at: 600_000).record.id)
            #expect(split.phase == "done")
            let upper = try #require(split.newRange)
            // Once the map names node2 for the upper half, x crosses back down into a1 on node1.
            let mover = f.mover { options in
                options.beforeStep = { phase in
                    guard phase == .cleaning else { return }
                    _ = try? await f.bank.transfer(from: x.id, to: y.id, amount: money("3000.00"), idempotencyKey: "cross-back")
                }
            }
            let moved = try await mover.run(try await mover.create(map: .accounts, range: upper, to: "node2").record.id)
            #expect(moved.phase == "done", "\(moved)")
            #expect(try await f.bank.account(x.id).node == "node1")
            let after = try await f.verify()
            #expect(after.clean, "\(after.summary)")
            let again = try await f.bank.transfer(from: x.id, to: y.id, amount: money("1.00"), idempotencyKey: "before-move")
            #expect(again.replayed && again.transferID == paid.transferID)
        }
    }

    @Test("refusals: an unknown range (listing the known ones), a key outside the range or on its bound, an empty range, a median on the lower bound, a range in a job")
    func refusals() async throws {
        try await withMoveFixture { f in
            let splitter = f.splitter()
            await #expect { _ = try await splitter.create(map: .accounts, range: "a9", at: nil) } throws: { "\($0)".contains("known: a1, a2, a3") }
            await #expect { _ = try await splitter.create(map: .accounts, range: "a1", at: 0) } throws: { "\($0)".contains("lower bound") }
            await #expect { _ = try await splitter.create(map: .accounts, range: "a1", at: 1_000_001) } throws: { "\($0)".contains("outside a1 [0.00, 10000.01)") }
            await #expect { _ = try await splitter.create(map: .accounts, range: "a1", at: nil) } throws: { "\($0)".contains("holds no rows") }
            for i in 0..<5 { _ = try await f.bank.openAccount(customerName: "zero \(i)", balance: .zero, idempotencyKey: "zero-\(i)") }
            _ = try await f.bank.openAccount(customerName: "one", balance: money("3.00"), idempotencyKey: "one")
            await #expect { _ = try await splitter.create(map: .accounts, range: "a1", at: nil) } throws: {
                "\($0)".contains("83 % of a1 holds exactly 0.00") && "\($0)".contains("the next balance is 3.00")
            }
            let job = try await splitter.create(map: .accounts, range: "a1", at: 200)
            await #expect { _ = try await splitter.create(map: .accounts, range: "a1", at: 100) } throws: { "\($0)".contains(job.record.id) }
            await #expect { _ = try await f.mover().create(map: .accounts, range: "a1", to: "node2") } throws: { "\($0)".contains(job.record.id) }
            // Nothing was written by the refusals: the map is the seed's.
            #expect(try await f.currentMaps().accounts.ranges.map(\.id) == ["a1", "a2", "a3"])
        }
    }
}
