import ClusterMetadata
import Foundation
import Ledger
import Logging
import MariaDB
import Moves
import Sharding

/// Runs `ctl drain NODE`: the node is marked `draining`, its ranges of both maps move to other
/// nodes (ordinary move jobs, children of the drain), the history it holds of accounts that left it
/// by a crossing moves to each account's node (one two-phase transaction per account), and the node
/// is marked `removed` once it holds nothing. Each phase is kept in the drain's job record, so a
/// drain whose runner died is resumed (`ctl jobs resume`) from where it was.
public struct NodeDrainer: Sendable {
    public struct Options: Sendable {
        /// How long to wait for branches prepared elsewhere that name the node as commit point.
        public var preparedWait: Duration = .seconds(120)
        /// Tries per account before the drain stops naming it (each after a short pause).
        public var triesPerAccount = 50
        public init() {}
    }

    let mover: RangeMover
    let connections: NodeConnections
    let options: Options
    let logger: Logger

    public init(mover: RangeMover, options: Options = Options(), logger: Logger) {
        self.mover = mover
        self.connections = mover.connections
        self.options = options
        self.logger = logger
    }

    var store: MetadataStore { mover.store }

    /// Checks a drain of `node` and records it as a job (`draining`); nothing changes yet. Refused:
    /// an unknown or removed node, one this process has no connection to, the last active node.
    public func create(node: String, runBy: String? = nil) async throws -> StoredJob {
        let nodes = try await store.nodes()
        guard let info = nodes.first(where: { $0.id == node }) else {
            throw MoveError(.invalid, "there is no node \(node); registered: \(nodes.map(\.id).sorted().joined(separator: ", "))")
        }
        guard info.state != .removed else { throw MoveError(.invalid, "node \(node) is removed already") }
        guard nodes.contains(where: { $0.id != node && $0.state == .active }) else {
            throw MoveError(.invalid, "\(node) is the last active node: add another (`shardbank ctl add-node`) before draining it")
        }
        guard connections.nodes.contains(node) else {
            throw MoveError(.invalid, "no connection to \(node) here: its credentials are missing from the configuration (nodes.\(node))")
        }
        // A move or split under way to or from the node would race the drain's own moves and the
        // rehoming of its history (a move's copies on the node are not history to rehome).
        if let busy = try await store.jobs().first(where: { !$0.record.finished && $0.record.kind != .drain && ($0.record.to == node || $0.record.from == node) }) {
            throw MoveError(.conflict, "job \(busy.record.id) (\(busy.record.kind.rawValue) of \(busy.record.range ?? "?")) involves \(node) and has not ended: wait for it, or resume or cancel it, then drain")
        }
        var record = JobRecord(id: JobRecord.newID(), kind: .drain, map: "nodes", range: node, from: node, phase: DrainPhase.draining.rawValue)
        record.runBy = runBy
        let created: StoredJob
        do { created = try await store.createJob(record) } catch { throw RangeMover.refusal(error) }
        // At once, not when a runner starts: from now on no move may pick the node as target.
        if info.state == .active || info.state == .joining {
            var draining = info
            draining.state = .draining
            try await store.register(draining)
        }
        return created
    }

    /// Runs drain job `id` until the node is removed, or the drain stops for an operator (its
    /// record's `error` says why; resume it after). `.cancel` ends the drain where it is: the node
    /// stays `draining` (it takes no new ranges) and what moved stays moved.
    public func run(_ id: String, _ command: RangeMover.Command = .resume, told: @escaping @Sendable (String) -> Void = { _ in }) async throws -> JobRecord {
        guard let job = try await store.job(id), job.record.kind == .drain, let node = job.record.from else {
            throw MoveError(.notFound, "there is no drain job \(id); `shardbank ctl jobs` lists the jobs")
        }
        guard !job.record.finished else { throw MoveError(.invalid, "drain job \(id) has ended (\(job.record.phase))") }
        let ownership = JobOwnership(store: store, id: id, leaseTTL: mover.options.leaseTTL, claimWait: mover.options.claimWait ?? .seconds(mover.options.leaseTTL + 1))
        return try await ownership.run { owner in
            guard let current = try await store.job(id) else { throw MoveError(.notFound, "drain job \(id) is gone") }
            var run = DrainRun(drainer: self, job: current, node: node, owner: owner, told: told)
            if command == .cancel {
                try await run.end(.cancelled, error: "cancelled by an operator; \(node) stays draining (it takes no new ranges)")
                return run.job.record
            }
            return try await run.drive()
        }
    }
}

/// One runner's pass over a drain.
private struct DrainRun {
    let drainer: NodeDrainer
    var job: StoredJob
    let node: String
    let owner: String
    let told: @Sendable (String) -> Void
    var lastSaved = ContinuousClock.now

    init(drainer: NodeDrainer, job: StoredJob, node: String, owner: String, told: @escaping @Sendable (String) -> Void) {
        self.drainer = drainer
        self.job = job
        self.node = node
        self.owner = owner
        self.told = told
    }

    var store: MetadataStore { drainer.store }
    var connections: NodeConnections { drainer.connections }

    var phase: DrainPhase { DrainPhase(rawValue: job.record.phase) ?? .draining }

    mutating func save(force: Bool = true) async throws {
        guard force || ContinuousClock.now - lastSaved > .seconds(1) else { return }
        if try await store.jobOwner(job.record.id) != owner {
            throw MoveError(.superseded, "drain job \(job.record.id) is no longer owned by this runner; it stops")
        }
        job.record.updatedAt = Date()
        do {
            job.modRevision = try await store.updateJob(job.record, expectedRevision: job.modRevision)
        } catch {
            throw error.code == .conflict ? MoveError(.superseded, "drain job \(job.record.id) was changed by another runner; this one stops") : error
        }
        lastSaved = ContinuousClock.now
    }

    mutating func end(_ phase: DrainPhase, error: String?) async throws {
        job.record.phase = phase.rawValue
        job.record.error = error
        try await save()
    }

    mutating func advance() async throws {
        job.record.phase = phase.next.rawValue
        job.record.cursor = nil
        try await save()
        told("phase \(phase.rawValue)")
    }

    /// Stops for an operator: the reason is kept in the record; `ctl jobs resume` goes on.
    mutating func stop(_ reason: String) async throws -> JobRecord {
        job.record.error = reason
        try await save()
        return job.record
    }

    mutating func drive() async throws -> JobRecord {
        job.record.error = nil
        try await save()
        while true {
            switch phase {
            case .draining:
                try await setState(.draining)
                try await advance()
            case .movingRanges:
                if let reason = try await moveRanges() { return try await stop(reason) }
                try await advance()
            case .waiting:
                if let reason = try await waitForPrepared() { return try await stop(reason) }
                try await advance()
            case .rehoming:
                if let reason = try await rehome() { return try await stop(reason) }
                // Removed before the record says done: a crash in between is resumed here again.
                try await setState(.removed)
                try await advance()
            case .done:
                told("\(node) is removed: it holds nothing; its pools close and its agent exits")
                return job.record
            case .cancelled:
                return job.record
            }
        }
    }

    func setState(_ state: NodeInfo.State) async throws {
        guard var info = try await store.nodes().first(where: { $0.id == node }) else {
            throw MoveError(.conflict, "node \(node) is no longer registered")
        }
        guard info.state != state else { return }
        info.state = state
        try await store.register(info)
    }

    // MARK: ranges

    /// Moves the node's ranges away one at a time (a move a runner that died left unfinished is
    /// resumed first). Returns why it stopped, or nil when the node holds no range.
    mutating func moveRanges() async throws -> String? {
        let mover = drainer.mover
        for child in try await store.jobs() where child.record.parent == job.record.id && !child.record.finished {
            told("resuming \(child.record.id) (move of \(child.record.map ?? "?") range \(child.record.range ?? "?"), \(child.record.phase))")
            let ended = try await mover.run(child.record.id)
            guard ended.phase == "done" else { return "its move \(ended.id) ended \(ended.phase): \(ended.error ?? "no reason recorded"); resume or cancel it, then resume this drain" }
        }
        while true {
            guard let accounts = try await store.loadMap(.accounts)?.map, let directory = try await store.loadMap(.directory)?.map else {
                throw MoveError(.invalid, "the cluster is not initialised")
            }
            let receivers = try await store.nodes().filter { $0.state == .active && connections.nodes.contains($0.id) }.map(\.id)
            let rows = try await rowsPerRange(accounts)
            let next: NodeDrainPlanner.Move?
            do { next = try NodeDrainPlanner().next(node: node, accounts: accounts, directory: directory, rows: rows, receivers: receivers) } catch {
                return error.message
            }
            guard let next else { return nil }
            told("moving \(next)")
            let map: MetadataKeys.MapName = next.map == "directory" ? .directory : .accounts
            let created = try await mover.create(map: map, range: next.range, to: next.to, runBy: job.record.runBy, parent: job.record.id)
            let ended = try await mover.run(created.record.id)
            try await save()
            guard ended.phase == "done" else { return "its move \(ended.id) of \(next.map) range \(next.range) ended \(ended.phase): \(ended.error ?? "no reason recorded"); resume or cancel it, then resume this drain" }
        }
    }

    /// Account rows per accounts range where its node holds it active.
    func rowsPerRange(_ map: RangeMap) async throws -> [String: Int] {
        var rows: [String: Int] = [:]
        for owner in Set(map.ranges.map(\.node)).sorted() where connections.nodes.contains(owner) {
            let counted = try await connections.withConnection(owner) { try await MoveSQL.activeRowsPerRange($0) }
            for (range, n, _) in counted where map.range(id: range)?.node == owner { rows[range] = n }
        }
        return rows
    }

    // MARK: waiting

    /// Waits until no branch prepared on any node names the drained node as commit point (the
    /// resolver ends those whose coordinator died): the decisions it holds are asked for by nobody.
    func waitForPrepared() async throws -> String? {
        let deadline = ContinuousClock.now + drainer.options.preparedWait
        while true {
            let (others, missing) = try await liveNodes()
            if let missing { return missing }
            let naming = try await PreparedBranches.naming(node, on: others, connections).sorted()
            if naming.isEmpty { return nil }
            guard ContinuousClock.now < deadline else {
                return "\(naming.count) branch(es) prepared elsewhere name \(node) as commit point (\(naming.prefix(3).joined(separator: "; "))); is the in-doubt resolver running (serve or agent)? Resume the drain after"
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Every registered node but the removed ones, each of which this process must reach: a node
    /// it has no pool for could hold a branch naming the drained node, or an account naming it.
    func liveNodes() async throws -> (nodes: [String], missing: String?) {
        let (live, missing) = try await PreparedBranches.liveNodes(store, connections)
        if let missing {
            return (live, "no connection to \(missing) here (its credentials are missing from the configuration, or its pool is not open yet): the drain must see every node; resume it when it can")
        }
        return (live, nil)
    }

    // MARK: history

    /// Rehomes every account the node holds history of, or that names it as a previous node, in
    /// id order after the record's cursor. Returns why it stopped, or nil when the node is empty.
    mutating func rehome() async throws -> String? {
        // Only history is left to rehome: a range row (a move's copy on its way in included) means
        // something still moves to or from the node.
        let ranges = try await connections.withConnection(node) { c in
            try await c.execute("SELECT map_name, range_id, state FROM range_ownership").rows.map { "\(try $0.string("map_name"))/\(try $0.string("range_id")) (\(try $0.string("state")))" }
        }
        guard ranges.isEmpty else { return "\(node) still holds ranges: \(ranges.joined(separator: ", ")); a move to or from it has not ended — finish or cancel it, then resume the drain" }
        // Passes until nothing names the node: the first after the cursor (a resumed drain), then
        // whole ones (an account a crossing planned before its rehoming named it again).
        for pass in 0..<5 {
            let (others, missing) = try await liveNodes()
            if let missing { return missing }
            var accounts = try await connections.withConnection(node) { try await RehomeSQL.accountsOn($0) }
            for other in others where other != node {
                accounts.formUnion(try await connections.withConnection(other) { [node] in try await RehomeSQL.accountsNaming($0, node: node) })
            }
            let ordered = accounts.filter { pass > 0 || $0 > (job.record.cursor ?? Int64.min) }.sorted()
            if ordered.isEmpty && pass > 0 { break }
            job.record.rows.total = job.record.rows.copied + Int64(ordered.count)
            try await save()
            if !ordered.isEmpty { told("moving the history of \(ordered.count) account(s) that left \(node) by a crossing") }
            // The maps once per pass (a try that finds them behind reads them again).
            guard var maps = try await loadMaps() else { throw MoveError(.invalid, "the cluster is not initialised") }
            for account in ordered {
                if let reason = try await rehome(account, maps: &maps) { return reason }
                job.record.cursor = account
                job.record.rows.copied += 1
                try await save(force: false)
            }
        }
        for other in try await liveNodes().nodes where other != node {
            if let named = try await connections.withConnection(other, { [node] in try await RehomeSQL.accountsNaming($0, node: node) }).min() {
                return "account \(named) on \(other) still names \(node) as a previous node after five passes (crossings keep renaming it?); resume the drain"
            }
        }
        try await connections.withConnection(node) { try await RehomeSQL.deleteAbortNotes($0) }
        let left = try await connections.withConnection(node) { try await RehomeSQL.leftovers($0) }
        guard left.isEmpty else {
            return "\(node) still holds \(left.joined(separator: ", ")) after its ranges and history moved: run `shardbank ctl verify`, then resume the drain"
        }
        return nil
    }

    /// One account's history off the node, in a two-phase transaction: the account's node (commit
    /// point) receives it, the directory node forgets the node, the node deletes it. Tried again
    /// after a stale location or an abort; done when nothing is left to do.
    func loadMaps() async throws -> (accounts: RangeMap, directory: RangeMap)? {
        guard let accounts = try await store.loadMap(.accounts)?.map, let directory = try await store.loadMap(.directory)?.map else { return nil }
        return (accounts, directory)
    }

    func rehome(_ account: Int64, maps: inout (accounts: RangeMap, directory: RangeMap)) async throws -> String? {
        var cause = "no try"
        // A committed try is checked again at once (done when nothing is left); only a failed one
        // waits and reads the maps again. (Pausing after every commit made the rehoming ~115 ms an
        // account.)
        var failures = 0
        for attempt in 0..<drainer.options.triesPerAccount {
            if failures > 0 {
                try await Task.sleep(for: .milliseconds(min(1000, 50 * (1 << min(failures, 5)))))
                guard let fresh = try await loadMaps() else { throw MoveError(.invalid, "the cluster is not initialised") }
                maps = fresh
            }
            let (accounts, directory) = maps
            let history = try await connections.withConnection(node) { try await RehomeSQL.history($0, of: account) }
            let directoryNode = try directory.range(for: DirectoryHash.key(forAccount: account)).node
            let entry = try await connections.withConnection(directoryNode) { c in
                try await c.execute("SELECT data_node, data_range, previous_nodes FROM account_directory WHERE account_id = ?", [.int(account)]).rows.first
            }
            guard let entry else {
                if history.isEmpty { return nil } // named nowhere any more
                cause = "account \(account) has history on \(node) but no directory entry on \(directoryNode)"
                failures += 1
                continue
            }
            let dataRange = try entry.string("data_range"), dataNode = try entry.string("data_node")
            let home = accounts.range(id: dataRange)?.node ?? dataNode
            guard home != node else { return "account \(account) still lives on \(node): its range did not move" }
            let named = try entry.string("previous_nodes").split(separator: ",").contains(Substring(node))
            let rowNames = try await connections.withConnection(home) { [node] c in
                try await c.execute("SELECT account_id FROM account_info WHERE account_id = ? AND FIND_IN_SET(?, previous_nodes) > 0", [.int(account), .string(node)]).rows.isEmpty == false
            }
            if history.isEmpty && !named && !rowNames { return nil }

            let spec = MoveSpec(map: "accounts", range: "", source: node, target: home, sourceEpoch: 0, targetEpoch: 0)
            let leaving = node
            var work: [String: [TwoPhaseCommit.Work]] = [:]
            work[home, default: []].append { c in try await RehomeSQL.receive(c, account: account, history: history, leaving: leaving, spec: spec) }
            work[directoryNode, default: []].append { c in try await RehomeSQL.forget(c, account: account, leaving: leaving) }
            if !history.isEmpty { work[node, default: []].append { c in try await RehomeSQL.release(c, history: history) } }
            let branches = work.sorted { $0.key < $1.key }.map { node, steps in
                TwoPhaseCommit.Branch(node: node) { c in for step in steps { try await step(c) } }
            }
            let decision = DecisionRecord(transferID: "\(job.record.id)/\(account)/\(attempt)", kind: "rehome", toAccount: account, amountMinorUnits: 0,
                                          requestHash: "rehome", participants: work.keys.sorted())
            switch try await TwoPhaseCommit(connections: connections, logger: drainer.logger).run(decision: decision, branches: branches, commitPoint: home) {
            case .committed:
                continue // read again: done when nothing is left
            case .rolledBack(let error):
                cause = "\(error)"
                failures += 1
                if let mismatch = error as? MoveError, mismatch.code == .mismatch { return "account \(account): \(mismatch.message)" }
            case .unknown(let error):
                cause = "\(error)"
                failures += 1
            }
        }
        return "the history of account \(account) could not be moved off \(node) in \(drainer.options.triesPerAccount) tries (last: \(cause)); resume the drain to try again"
    }
}
