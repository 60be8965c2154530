import ClusterMetadata
import Foundation
import Ledger
import Logging
import MariaDB
import Moves
import Sharding

/// Runs `ctl rebalance`: plans from the rows each range holds now (``RebalancePlanner``), does the
/// plan's first step (a split at the median, or a move), and plans again from fresh counts, until
/// the plan is empty. Each step is an ordinary split or move job whose `parent` is the rebalance's
/// own job record, so `ctl jobs` shows the whole and a step whose runner died is resumed like any.
public struct Rebalancer: Sendable {
    public struct Options: Sendable {
        /// Allowed distance of each active node's rows from the mean, in percent.
        public var tolerance = 10
        /// Ranges with more rows are split first.
        public var maxRangeRows = 50_000
        /// Steps after which the rebalance stops even if the plan is not empty (a plan that keeps
        /// changing under load must not run forever).
        public var maxSteps = 50
        public init() {}
    }

    /// What the rebalance did.
    public struct Outcome: Sendable {
        public var job: JobRecord
        /// Each step and the job that did it.
        public var steps: [(step: RebalancePlanner.Step, job: JobRecord)]
        /// What the last plan could not do.
        public var notes: [String]
        /// Rows per active node at the end.
        public var rows: [String: Int]
    }

    let mover: RangeMover
    let splitter: RangeSplitter
    let connections: NodeConnections
    let logger: Logger

    /// Steps run with `mover` and `splitter`; rows are counted over the mover's connections.
    public init(mover: RangeMover, splitter: RangeSplitter, logger: Logger) {
        self.mover = mover
        self.splitter = splitter
        self.connections = mover.connections
        self.logger = logger
    }

    var store: MetadataStore { mover.store }

    /// Rows per accounts range where its node holds it active (a move's copies elsewhere are not
    /// counted), and the ranges whose rows all hold one balance (no split can divide them).
    func counts() async throws -> (map: RangeMap, rows: [String: Int], single: Set<String>) {
        guard let stored = try await store.loadMap(.accounts) else {
            throw MoveError(.invalid, "the cluster is not initialised: run `shardbank ctl init` first")
        }
        var rows: [String: Int] = [:]
        var single: Set<String> = []
        for node in Set(stored.map.ranges.map(\.node)).sorted() {
            guard connections.nodes.contains(node) else {
                throw MoveError(.invalid, "no connection to \(node) here: its credentials are missing from the configuration (nodes.<id>)")
            }
            let counted = try await connections.withConnection(node) { try await MoveSQL.activeRowsPerRange($0) }
            for (range, n, distinct) in counted where stored.map.range(id: range)?.node == node {
                rows[range] = n
                if distinct < 2 { single.insert(range) }
            }
        }
        return (stored.map, rows, single)
    }

    /// The plan for the accounts map as the nodes are now (nothing is written), and the rows per
    /// node now.
    public func plan(_ options: Options, unsplittable: Set<String> = []) async throws -> (plan: RebalancePlanner.Plan, rows: [String: Int]) {
        let (map, rows, single) = try await counts()
        let nodes = try await store.nodes()
        let receivers = nodes.filter { $0.state == .active && connections.nodes.contains($0.id) }.map(\.id).sorted()
        let draining = Set(nodes.filter { $0.state == .draining }.map(\.id))
        var perNode: [String: Int] = [:]
        for node in receivers { perNode[node] = 0 }
        for range in map.ranges { perNode[range.node, default: 0] += rows[range.id] ?? 0 }
        let plan = RebalancePlanner().plan(.init(map: map, rows: rows, receivers: receivers, draining: draining,
                                                 tolerance: options.tolerance, maxRangeRows: options.maxRangeRows, unsplittable: single.union(unsplittable)))
        return (plan, perNode)
    }

    /// Records a rebalance with `options` (`run_by` as given: `serve` for one asked over HTTP,
    /// which a `serve` then runs). Refused while another rebalance runs or waits for a `serve`; one
    /// whose runner died is marked cancelled, unless it left a step unfinished (named: resume or
    /// cancel it first).
    public func create(_ options: Options, runBy: String? = nil) async throws -> StoredJob {
        let jobs = try await store.jobs()
        for other in jobs where other.record.kind == .rebalance && !other.record.finished {
            if let owner = try await store.jobOwner(other.record.id) {
                throw MoveError(.conflict, "rebalance job \(other.record.id) is running (\(owner)); wait for it")
            }
            if other.record.runBy == "serve", other.record.error == nil {
                throw MoveError(.conflict, "rebalance job \(other.record.id) was asked over HTTP and waits for a serve to run it; wait for it")
            }
            // Just created, its runner not yet holding it: that rebalance is starting.
            guard Date().timeIntervalSince(other.record.updatedAt) > 10 else {
                throw MoveError(.conflict, "rebalance job \(other.record.id) is starting; wait for it")
            }
            // Its runner died. A step it left unfinished holds its ranges: the operator decides.
            if let step = jobs.first(where: { $0.record.parent == other.record.id && !$0.record.finished }) {
                throw MoveError(.conflict, "rebalance job \(other.record.id) died with its step \(step.record.id) (\(step.record.kind.rawValue) of \(step.record.range ?? "?"), \(step.record.phase)) unfinished: `shardbank ctl jobs resume \(step.record.id)` or `cancel` it, then rebalance again")
            }
            var ended = other.record
            ended.phase = "cancelled"
            ended.error = "its runner died; a later rebalance plans anew"
            ended.updatedAt = Date()
            _ = try? await store.updateJob(ended, expectedRevision: other.modRevision)
        }
        // The record holds a lock of the whole map (`accounts/*`), taken in the transaction that
        // creates it and released when it ends: two rebalances starting at once cannot both run.
        var record = JobRecord(id: JobRecord.newID(), kind: .rebalance, phase: "running")
        record.map = MetadataKeys.MapName.accounts.rawValue
        record.range = "*"
        record.runBy = runBy
        record.tolerance = options.tolerance
        record.maxRangeRows = options.maxRangeRows
        do { return try await store.createJob(record) } catch { throw RangeMover.refusal(error) }
    }

    /// Records a rebalance and runs it (``create(_:runBy:)``, ``run(_:told:)``).
    public func run(_ options: Options, told: @escaping @Sendable (String) -> Void = { _ in }) async throws -> Outcome {
        try await run(try await create(options).record.id, told: told)
    }

    /// Runs rebalance job `id`: plans and does one step at a time until the plan is empty (or
    /// `maxSteps`). A step a runner that died left unfinished is resumed first. A step that does
    /// not finish stops the rebalance, naming its job (resume or cancel it, then rebalance again).
    public func run(_ id: String, told: @escaping @Sendable (String) -> Void = { _ in }) async throws -> Outcome {
        guard let job = try await store.job(id), job.record.kind == .rebalance else { throw MoveError(.notFound, "there is no rebalance job \(id)") }
        guard !job.record.finished else { throw MoveError(.invalid, "rebalance job \(id) has ended (\(job.record.phase))") }
        var settings = Options()
        settings.tolerance = job.record.tolerance ?? settings.tolerance
        settings.maxRangeRows = job.record.maxRangeRows ?? settings.maxRangeRows
        let options = settings
        let ownership = JobOwnership(store: store, id: id, leaseTTL: mover.options.leaseTTL, claimWait: .zero)
        return try await ownership.run { _ in
            guard var current = try await store.job(id) else { throw MoveError(.notFound, "rebalance job \(id) is gone") }
            for step in try await store.jobs() where step.record.parent == id && !step.record.finished {
                told("resuming step \(step.record.id) (\(step.record.kind.rawValue) of \(step.record.range ?? "?"), \(step.record.phase))")
                let ended = step.record.kind == .split ? try await splitter.run(step.record.id) : try await mover.run(step.record.id)
                guard ended.phase == "done" else {
                    current.record.phase = "cancelled"
                    current.record.error = "its step \(ended.id) ended \(ended.phase): \(ended.error ?? "no reason recorded"); resume or cancel it, then rebalance again"
                    current.record.updatedAt = Date()
                    _ = try await store.updateJob(current.record, expectedRevision: current.modRevision)
                    return Outcome(job: current.record, steps: [], notes: [], rows: try await plan(options).rows)
                }
            }
            return try await self.steps(current, options, told: told)
        }
    }

    private func steps(_ created: StoredJob, _ options: Options, told: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        var stored = created
        var steps: [(step: RebalancePlanner.Step, job: JobRecord)] = []
        var unsplittable: Set<String> = []
        var notes: [String] = []
        func end(_ phase: String, error: String?) async throws {
            stored.record.phase = phase
            stored.record.error = error
            stored.record.updatedAt = Date()
            stored.modRevision = try await store.updateJob(stored.record, expectedRevision: stored.modRevision)
        }
        do {
            while steps.count < options.maxSteps {
                let (current, _) = try await plan(options, unsplittable: unsplittable)
                notes = current.notes
                guard let step = current.steps.first else { break }
                told("step \(steps.count + 1): \(step) (\(current.steps.count - 1) more planned)")
                let child: JobRecord
                switch step {
                case .split(let range, _, _):
                    let job: StoredJob
                    do {
                        job = try await splitter.create(map: .accounts, range: range, at: nil, runBy: stored.record.runBy, parent: stored.record.id)
                    } catch let error as MoveError where error.code == .invalid && (error.message.contains("cannot divide") || error.message.contains("holds no rows")) {
                        // A median on the lower bound: the range cannot be halved by rows.
                        told("  \(range) cannot be split: \(error.message)")
                        unsplittable.insert(range)
                        continue
                    }
                    child = try await splitter.run(job.record.id)
                case .move(let range, _, let to, _):
                    child = try await mover.run(try await mover.create(map: .accounts, range: range, to: to, runBy: stored.record.runBy, parent: stored.record.id).record.id)
                }
                steps.append((step, child))
                stored.record.rows.copied = Int64(steps.count)
                stored.record.updatedAt = Date()
                stored.modRevision = try await store.updateJob(stored.record, expectedRevision: stored.modRevision)
                guard child.phase == "done" else {
                    let reason = "step \(steps.count) (\(step)) ended \(child.phase) in job \(child.id): \(child.error ?? "no reason recorded"); resume or cancel it, then rebalance again"
                    try await end("cancelled", error: reason)
                    return Outcome(job: stored.record, steps: steps, notes: notes, rows: try await plan(options).rows)
                }
            }
            if steps.count >= options.maxSteps { notes.append("stopped after \(options.maxSteps) steps; rebalance again to go on") }
            let rows = try await plan(options).rows
            try await end("done", error: nil)
            return Outcome(job: stored.record, steps: steps, notes: notes, rows: rows)
        } catch {
            try? await end("cancelled", error: "\(error)")
            throw error
        }
    }
}
