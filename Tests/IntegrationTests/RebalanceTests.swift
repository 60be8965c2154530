import ClusterMetadata
import Foundation
import Ledger
import Mover
import Moves
import Sharding
import Testing

@Suite("Rebalance: plan from the nodes' rows, split and move until balanced — with real nodes", .serialized)
struct RebalanceTests {
    @Test("a cluster with most accounts on one node is rebalanced by splits and moves; the dry run changes nothing; verify clean, Σ unchanged")
    func rebalances() async throws {
        try await withMoveFixture { f in
            // 60 accounts in a1 (node1), 6 in a2 (node2), 3 in a3 (node3).
            _ = try await openAccounts(f.bank, count: 60, prefix: "r")
            for i in 0..<6 { _ = try await f.bank.openAccount(customerName: "a2 \(i)", balance: money("\(10_100 + i * 100).00"), idempotencyKey: "a2-\(i)") }
            for i in 0..<3 { _ = try await f.bank.openAccount(customerName: "a3 \(i)", balance: money("\(60_000 + i).00"), idempotencyKey: "a3-\(i)") }
            let before = try await f.verify()
            let rebalancer = Rebalancer(mover: f.mover(), splitter: f.splitter(), logger: testLogger)
            var options = Rebalancer.Options()
            options.tolerance = 25
            options.maxRangeRows = 1000

            let (plan, rows) = try await rebalancer.plan(options)
            #expect(rows == ["node1": 60, "node2": 6, "node3": 3])
            #expect(!plan.steps.isEmpty)
            #expect(try await f.currentMaps().accounts.ranges.map(\.id) == ["a1", "a2", "a3"], "a plan writes nothing")

            let told = Shared<[String]>([])
            let outcome = try await rebalancer.run(options) { line in told.update { $0.append(line) } }
            #expect(outcome.job.phase == "done", "\(outcome.job)")
            #expect(!outcome.steps.isEmpty && outcome.steps.allSatisfy { $0.job.phase == "done" && $0.job.parent == outcome.job.id })
            let loads = outcome.rows.values
            #expect(loads.reduce(0, +) == 69)
            #expect(loads.max()! - loads.min()! <= 20, "rows per node after: \(outcome.rows); steps: \(told.value)")
            let after = try await f.verify()
            #expect(after.clean && after.balances == before.balances, "\(after.summary)")
            // Balanced now: a second rebalance has nothing to do.
            let again = try await rebalancer.run(options)
            #expect(again.job.phase == "done" && again.steps.isEmpty, "\(again.steps.map { "\($0.step)" })")
        }
    }

    @Test("a range whose accounts all hold one balance cannot be split: the plan says so and does what it can")
    func unsplittable() async throws {
        try await withMoveFixture { f in
            for i in 0..<12 { _ = try await f.bank.openAccount(customerName: "same \(i)", balance: money("5.00"), idempotencyKey: "same-\(i)") }
            let rebalancer = Rebalancer(mover: f.mover(), splitter: f.splitter(), logger: testLogger)
            var options = Rebalancer.Options()
            options.maxRangeRows = 5
            let (plan, _) = try await rebalancer.plan(options)
            #expect(plan.notes.contains { $0.contains("a1") && $0.contains("cannot be split") }, "\(plan.notes)")
            #expect(!plan.steps.contains { if case .split = $0 { true } else { false } })
        }
    }
}
