import BankSchema
import ClusterMetadata
import Foundation
import Ledger
import Logging
import MariaDB
import Moves
import Sharding

/// Runs range moves: the I/O around ``RangeMoveStateMachine``. Each step is done against the
/// nodes, each phase change is written to the job record (compare-and-swap), and the runner holds
/// the job's owner key under an etcd lease. A runner that dies leaves the phase in the record; a
/// new one (`ctl jobs resume`) takes the job over, raises the target's epoch so the old runner can
/// no longer write there, and does the recorded phase's step again.
public struct RangeMover: Sendable {
    public struct Options: Sendable {
        /// Keys per copy chunk.
        public var chunkSize = 1000
        /// Copy speed limit (account rows per second), nil for none.
        public var maxRowsPerSecond: Int?
        /// How long the source keeps the decision rows it gave away after the map names the target
        /// (a resolver may still ask the source for them).
        public var decisionGrace: Duration = .seconds(30)
        /// How long a freeze (or the start of capture) waits for branches prepared on the source.
        public var preparedWait: Duration = .seconds(10)
        /// The owner lease's TTL in seconds (etcd 3.4's minimum is 2).
        public var leaseTTL: Int64 = 3
        public var limits = RangeMoveStateMachine.Limits()
        /// How long to wait for another runner's ownership to lapse (nil: the lease's TTL + 1 s).
        public var claimWait: Duration?
        /// Called before each step with the phase it belongs to; a fault drill throws here to
        /// stop the runner as a crash would (the lease is left to expire).
        public var beforeStep: (@Sendable (MovePhase) async throws -> Void)?
        /// Called after each step's SQL, before the record says so: a drill that throws here stops
        /// the runner between a step taking effect and the record knowing it.
        public var afterStep: (@Sendable (MovePhase, RangeMoveStateMachine.Action) async throws -> Void)?
        public init() {}
    }

    /// What to do with a job that exists.
    public enum Command: Sendable {
        case resume, cancel
    }

    let connections: NodeConnections
    /// Where the jobs are kept.
    public let store: MetadataStore
    let options: Options
    let logger: Logger
    let progress: @Sendable (JobRecord) -> Void

    /// - Parameter progress: told of the job record after every step that changed it.
    public init(connections: NodeConnections, store: MetadataStore, options: Options = Options(), logger: Logger,
                progress: @escaping @Sendable (JobRecord) -> Void = { _ in }) {
        self.connections = connections
        self.store = store
        self.options = options
        self.logger = logger
        self.progress = progress
    }

    // MARK: creating a move

    /// Checks a move of `range` of `map` to node `to` and records it as a job in `prepared`;
    /// nothing is written on the nodes yet. Refuses, naming what is known: an unknown range or
    /// node, a node that is not active or has no connection here, the owner itself, a range already
    /// in a job.
    public func create(map name: MetadataKeys.MapName, range: String, to target: String, runBy: String? = nil, parent: String? = nil) async throws -> StoredJob {
        guard let stored = try await store.loadMap(name) else {
            throw MoveError(.invalid, "the cluster is not initialised: run `shardbank ctl init` first")
        }
        guard let shard = stored.map.range(id: range) else {
            throw MoveError(.invalid, "there is no \(name.rawValue) range \(range); known: \(stored.map.ranges.map(\.id).joined(separator: ", "))")
        }
        let nodes = try await store.nodes()
        guard let node = nodes.first(where: { $0.id == target }) else {
            throw MoveError(.invalid, "there is no node \(target); registered: \(nodes.map(\.id).sorted().joined(separator: ", "))")
        }
        guard target != shard.node else { throw MoveError(.invalid, "\(range) is on \(target) already") }
        guard node.state == .active else { throw MoveError(.invalid, "node \(target) is \(node.state.rawValue): it takes no new ranges") }
        guard connections.nodes.contains(target), connections.nodes.contains(shard.node) else {
            throw MoveError(.invalid, "no connection to \(connections.nodes.contains(target) ? shard.node : target) here: its credentials are missing from the configuration (nodes.<id>)")
        }
        let source = try await connections.withConnection(shard.node) { try await MoveSQL.ownership($0, map: name.rawValue, range: range) }
        guard let source, source.state == "active" else {
            throw MoveError(.conflict, "\(shard.node) does not hold \(range) as active (\(source?.state ?? "no ownership row")): run `shardbank ctl verify`")
        }
        var record = JobRecord(id: JobRecord.newID(), kind: .move, map: name.rawValue, range: range, from: shard.node, to: target,
                               phase: MovePhase.prepared.rawValue)
        record.sourceEpochBefore = source.epoch
        record.runBy = runBy
        record.parent = parent
        var created: StoredJob
        do {
            created = try await store.createJob(record)
        } catch {
            throw Self.refusal(error)
        }
        // The job's epochs come from etcd's revision at its creation: unique and increasing, so no
        // two jobs of a range share one (room for 999 takeovers of the target between them).
        created.record.sourceEpoch = max(created.modRevision, source.epoch / 1000 + 1) * 1000
        created.record.epoch = created.record.sourceEpoch! + 1
        created.modRevision = try await store.updateJob(created.record, expectedRevision: created.modRevision)
        return created
    }

    /// A range already in a job is the operator's to resolve: said as a move refusal.
    static func refusal(_ error: any Error) -> any Error {
        guard let metadata = error as? MetadataError, metadata.code == .conflict else { return error }
        return MoveError(.conflict, metadata.message)
    }

    // MARK: running

    /// Runs job `id` until it ends (done or cancelled) or stops for an operator, and returns its
    /// record. `.cancel` undoes a move that has not switched; `.resume` goes on from the recorded
    /// phase. Waits up to the lease's TTL for a runner that died to lose its ownership.
    public func run(_ id: String, _ command: Command = .resume) async throws -> JobRecord {
        guard let job = try await store.job(id) else { throw MoveError(.notFound, "there is no job \(id); `shardbank ctl jobs` lists them") }
        guard job.record.kind == .move, let phase = MovePhase(rawValue: job.record.phase) else {
            throw MoveError(.invalid, "job \(id) is a \(job.record.kind.rawValue), not a move")
        }
        var machine = RangeMoveStateMachine(phase: phase, cursor: job.record.cursor,
                                            cancelReason: phase == .cancelling ? job.record.error : nil, limits: options.limits)
        var action: RangeMoveStateMachine.Action
        do {
            action = command == .cancel ? try machine.cancel() : try machine.operatorResume()
        } catch {
            throw MoveError(.invalid, "job \(id): \(error.message)")
        }
        let start = (machine, action)
        // A directory move picks the opening decisions keyed into the range by its bounds: they
        // come from the map (a range in a job is not split meanwhile).
        var bounds = MoveSpec.KeyBounds(lower: .min, upper: nil)
        if job.record.map == MetadataKeys.MapName.directory.rawValue, action != .none {
            guard let shard = try await store.loadMap(.directory)?.map.range(id: job.record.range ?? "") else {
                throw MoveError(.conflict, "job \(id): the directory map has no range \(job.record.range ?? "?") any more")
            }
            bounds = MoveSpec.KeyBounds(lower: shard.lowerBound, upper: shard.upperBound)
        }
        let keyBounds = bounds
        let ownership = JobOwnership(store: store, id: id, leaseTTL: options.leaseTTL, claimWait: options.claimWait ?? .seconds(options.leaseTTL + 1))
        return try await ownership.run { owner in
            var run = Run(mover: self, job: job, owner: owner)
            run.spec.keyBounds = keyBounds
            var machine = start.0
            return try await run.drive(&machine, start.1)
        }
    }
}

/// What a fault drill's hooks throw to stop a runner as a crash would: passed through untouched.
public protocol MoverDrill: Error {}

/// One runner's pass over a job: the record it keeps writing and the steps.
private struct Run {
    let mover: RangeMover
    var job: StoredJob
    let owner: String
    var spec: MoveSpec
    var lastSaved = ContinuousClock.now
    var copyStarted: ContinuousClock.Instant?
    var copiedAtStart: Int64 = 0

    init(mover: RangeMover, job: StoredJob, owner: String) {
        self.mover = mover
        self.job = job
        self.owner = owner
        let r = job.record
        spec = MoveSpec(map: r.map ?? "accounts", range: r.range ?? "", source: r.from ?? "", target: r.to ?? "",
                        sourceEpoch: r.sourceEpoch ?? 0, targetEpoch: r.epoch ?? 1, sourceEpochBefore: r.sourceEpochBefore)
    }

    var connections: NodeConnections { mover.connections }
    var options: RangeMover.Options { mover.options }
    var logger: Logger { mover.logger }

    func onSource<T: Sendable>(_ body: (MariaDBConnection) async throws -> T) async throws -> T { try await connections.withConnection(spec.source, body) }
    func onTarget<T: Sendable>(_ body: (MariaDBConnection) async throws -> T) async throws -> T { try await connections.withConnection(spec.target, body) }
    func onBoth<T: Sendable>(_ body: (MariaDBConnection, MariaDBConnection) async throws -> T) async throws -> T {
        try await onSource { s in try await onTarget { t in try await body(s, t) } }
    }

    /// A conflict on the job record: another runner has the job.
    func superseded(_ error: MetadataError) -> any Error {
        error.code == .conflict ? MoveError(.superseded, "job \(job.record.id) was changed by another runner; this one stops") : error
    }

    /// Writes the record (compare-and-swap): a conflict means another runner has the job.
    mutating func save(_ machine: RangeMoveStateMachine, force: Bool = true) async throws {
        guard force || ContinuousClock.now - lastSaved > .seconds(1) else { return }
        // The copy's speed, while it copies and when it ends (later phases keep that figure). The
        // phase the record had is read before it is overwritten: a copy shorter than the record's
        // one-second throttle is measured at its end only.
        let wasCopying = job.record.phase == MovePhase.copying.rawValue
        job.record.phase = machine.phase.rawValue
        job.record.cursor = machine.cursor
        job.record.updatedAt = Date()
        if machine.phase == .copying || machine.phase == .catchingUp && wasCopying,
           let copyStarted, ContinuousClock.now - copyStarted > .milliseconds(200) {
            job.record.rowsPerSecond = (Double(job.record.rows.copied - copiedAtStart) / (ContinuousClock.now - copyStarted).seconds).rounded()
        }
        do {
            job.modRevision = try await mover.store.updateJob(job.record, expectedRevision: job.modRevision)
        } catch {
            throw superseded(error)
        }
        lastSaved = ContinuousClock.now
        mover.progress(job.record)
    }

    mutating func drive(_ machine: inout RangeMoveStateMachine, _ first: RangeMoveStateMachine.Action) async throws -> JobRecord {
        var action = first
        try await takeOver(machine.phase)
        // A resumed job's old reason is history now; a cancelled one's is why it is undone.
        job.record.error = machine.phase == .cancelling ? machine.cancelReason : nil
        try await save(machine)
        while true {
            if job.record.phase != machine.phase.rawValue {
                if machine.phase == .cancelling { job.record.error = machine.cancelReason }
                try await save(machine)
            }
            if let hook = options.beforeStep { try await hook(machine.phase) }
            // Still ours? A runner that was stopped past its lease may wake while another has the
            // job: it must not act (its writes are fenced too; this stops it before it tries).
            if try await mover.store.jobOwner(job.record.id) != owner {
                throw MoveError(.superseded, "job \(job.record.id) is no longer owned by this runner; it stops")
            }
            logger.debug("move step", metadata: ["job": "\(job.record.id)", "phase": "\(machine.phase.rawValue)", "action": "\(action)"])
            switch action {
            case .none:
                return job.record
            case .finish(let error):
                job.record.error = error
                try await save(machine)
                return job.record
            case .stopForOperator(let reason):
                job.record.error = reason
                try await save(machine)
                return job.record
            case .retry(_, let pause):
                try await Task.sleep(for: pause)
                action = machine.resume()
            default:
                do {
                    let phase = machine.phase
                    let done = action
                    action = try await perform(action, &machine)
                    if let hook = options.afterStep { try await hook(phase, done) }
                } catch let error as any MoverDrill {
                    throw error
                } catch let error as MoveError where error.code == .superseded {
                    throw error
                } catch let error as MoveError where error.code == .mismatch {
                    logger.warning("move mismatch", metadata: ["job": "\(job.record.id)", "what": "\(error.message)"])
                    action = machine.mismatch(error.message)
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    logger.warning("move step failed", metadata: ["job": "\(job.record.id)", "phase": "\(machine.phase.rawValue)", "error": "\(error)"])
                    action = machine.stepFailed("\(error)")
                }
            }
        }
    }

    /// A runner that takes a job over raises the target's epoch (in the record first, so a crash in
    /// between leaves the record ahead, never behind), so the runner it replaces can no longer copy.
    mutating func takeOver(_ phase: MovePhase) async throws {
        let copying: Set<MovePhase> = [.capturing, .copying, .catchingUp, .frozen, .verified, .cancelling]
        guard copying.contains(phase) else { return }
        spec.targetEpoch += 1
        job.record.epoch = spec.targetEpoch
        do {
            job.modRevision = try await mover.store.updateJob(job.record, expectedRevision: job.modRevision)
        } catch {
            throw superseded(error)
        }
        let spec = self.spec
        try await onTarget { try await MoveSQL.raiseTargetEpoch($0, spec) }
    }

    // MARK: steps

    mutating func perform(_ action: RangeMoveStateMachine.Action, _ machine: inout RangeMoveStateMachine) async throws -> RangeMoveStateMachine.Action {
        let spec = self.spec
        switch action {
        case .prepareTarget:
            try await onTarget { _ = try await BankSchema.migrate($0, logger: logger) }
            let before = job.record.sourceEpochBefore ?? spec.sourceEpoch
            let source = try await onSource { try await MoveSQL.claimSource($0, spec, before: before) }
            try await onTarget { try await MoveSQL.prepareTarget($0, spec, lower: source.lower, upper: source.upper) }
            return machine.stepDone()

        case .startCapture:
            // The flag first (it compares this job's epoch), then the triggers: a runner of a job
            // that has ended matches nothing and installs nothing.
            try await onSource { s in
                try await MoveSQL.startCapture(s, spec)
                try await MoveSQL.installTriggers(s)
            }
            // A branch prepared before capture released its share lock at PREPARE: it may still
            // commit a change that the copy does not see and the log does not hold. Wait for it.
            try await waitForPrepared()
            job.record.rows.total = try await onSource { try await RangeContent.rowCount($0, spec) }
            // Every posting or decision the copy's snapshots miss was made after capture began
            // (writes in flight then were waited for): catch-up reads history from ten seconds before.
            if job.record.captureCutoff == nil { job.record.captureCutoff = try await onSource { try await MoveSQL.historyCutoff($0) } }
            return machine.stepDone()

        case .copyChunk(let after):
            if copyStarted == nil {
                copyStarted = .now
                copiedAtStart = job.record.rows.copied
            }
            let chunkStarted = ContinuousClock.now
            let ids = try await onSource { try await RangeContent.keys($0, spec, after: after, limit: options.chunkSize) }
            if !ids.isEmpty {
                let kept = try await onBoth { s, t in try await RangeContent.sync(ids, source: s, target: t, spec) }
                job.record.rows.copied += Int64(kept)
            }
            let next = machine.chunkCopied(lastKey: ids.last, more: ids.count == options.chunkSize)
            try await save(machine, force: machine.phase != .copying)
            if let limit = options.maxRowsPerSecond, limit > 0, !ids.isEmpty {
                let due = Duration.milliseconds(Int64(ids.count) * 1000 / Int64(limit))
                let spent = ContinuousClock.now - chunkStarted
                if spent < due { try await Task.sleep(for: due - spent) }
            }
            return next

        case .catchUp:
            let pending = try await catchUpPass()
            job.record.rows.pendingChanges = pending
            let next = machine.caughtUp(pending: Int(pending))
            try await save(machine, force: false)
            return next

        case .compareHistory:
            // History older than ten seconds cannot change: a difference in it is a copy gone wrong,
            // found before the range is frozen. A late commit can still look like one: catch up and
            // look again before calling it a mismatch.
            for attempt in 1...3 {
                let cutoff = try await onSource { try await MoveSQL.historyCutoff($0) }
                // Openings and claims logged and committed before the copy below are carried by it.
                let logged = try await onSource { try await DirectoryMoveSQL.loggedOpenings($0, spec) }
                try await onBoth { s, t in try await RangeContent.copyHistory(source: s, target: t, spec, window: .all) }
                async let source = onSource { try await RangeContent.digest($0, spec, history: .before(cutoff)) }
                let target = try await onTarget { try await RangeContent.digest($0, spec, history: .before(cutoff)) }
                let same = try await source
                var difference: String?
                if same.postings != target.postings || same.decisions != target.decisions {
                    difference = try await onBoth { s, t in try await RangeContent.difference(source: s, target: t, spec, history: .before(cutoff)) }
                }
                guard let difference else {
                    job.record.comparedCutoff = cutoff
                    try await onSource { try await DirectoryMoveSQL.forgetLoggedOpenings($0, logged) }
                    try await catchUpAfterComparing()
                    return machine.historyMatched()
                }
                if attempt == 3 { throw MoveError(.mismatch, difference) }
                _ = try await catchUpPass()
            }
            return machine.historyMatched()

        case .freezeSource:
            let started = ContinuousClock.now
            do {
                try await onSource { try await MoveSQL.freeze($0, spec) }
            } catch is MoveSQL.FreezeTimeout {
                return machine.freezeTimedOut()
            }
            job.record.freeze.lockWaitMs = (ContinuousClock.now - started).wholeMilliseconds
            if job.record.freeze.frozenAt == nil { job.record.freeze.frozenAt = Date() }
            try await waitForPrepared()
            return machine.sourceFrozen()

        case .verify:
            let started = ContinuousClock.now
            while try await catchUpPass() > 0 {}
            // The rows, and the history since the cut-off compared before the freeze (all of it
            // when this runner took the job over after that comparison).
            var window: MoveSQL.HistoryWindow = job.record.comparedCutoff.map { .since($0) } ?? .all
            // An opening keyed into a directory range that committed after the comparison may have
            // been written before its cut-off: the opening logged when, under capture.
            if case .since(let cutoff) = window, let logged = try await onSource({ try await DirectoryMoveSQL.firstLoggedOpening($0, spec) }), logged < cutoff {
                window = .since(logged)
            }
            try await onBoth { s, t in try await RangeContent.copyHistory(source: s, target: t, spec, window: window) }
            async let sourceDigest = onSource { try await RangeContent.digest($0, spec, history: window) }
            let targetDigest = try await onTarget { try await RangeContent.digest($0, spec, history: window) }
            if try await sourceDigest != targetDigest,
               let difference = try await onBoth({ s, t in try await RangeContent.difference(source: s, target: t, spec, history: window) }) {
                throw MoveError(.mismatch, difference)
            }
            job.record.freeze.verifyMs = (ContinuousClock.now - started).wholeMilliseconds
            return machine.verifiedEqual()

        case .markSourceMoved:
            try await onSource { try await MoveSQL.markSourceMoved($0, spec) }
            return machine.stepDone()

        case .activateTarget:
            try await onTarget { try await MoveSQL.activateTarget($0, spec) }
            return machine.stepDone()

        case .publishMap:
            guard let name = MetadataKeys.MapName(rawValue: spec.map), let stored = try await mover.store.loadMap(name) else {
                throw MoveError(.conflict, "shard map \(spec.map) is gone")
            }
            var record = job.record
            record.phase = MovePhase.cleaning.rawValue
            record.publishedAt = Date()
            record.updatedAt = Date()
            // From the freeze to the map naming the target (a takeover's wait included).
            if let frozenAt = record.freeze.frozenAt { record.freeze.windowMs = Int64(Date().timeIntervalSince(frozenAt) * 1000) }
            if stored.map.range(id: spec.range)?.node == spec.target {
                // The map and the record are written together: the map names the target only
                // when the record moved on too. Whoever did that has the job.
                guard let now = try await mover.store.job(job.record.id), now.record.phase == MovePhase.cleaning.rawValue else {
                    throw MoveError(.conflict, "the map names \(spec.target) for \(spec.range) but job \(job.record.id) is not past publishing: the map was changed by hand?")
                }
                job = now
                return machine.published(conflict: false)
            }
            let map = try stored.map.reassigning(spec.range, to: spec.target)
            do {
                job.modRevision = try await mover.store.saveMapAndJob(map, as: name, mapRevision: stored.modRevision, record, jobRevision: job.modRevision)
            } catch {
                // The map changed (another range's move), the job did (another runner), or the
                // answer was lost: the record says which.
                guard let now = try await mover.store.job(job.record.id) else { throw error }
                if now.modRevision != job.modRevision {
                    guard now.record.phase == MovePhase.cleaning.rawValue, now.record.publishedAt == record.publishedAt else {
                        throw MoveError(.superseded, "job \(job.record.id) was changed by another runner; this one stops")
                    }
                    job = now // our write landed; its answer was lost
                    mover.progress(job.record)
                    return machine.published(conflict: false)
                }
                guard error.code == .conflict else { throw error }
                return machine.published(conflict: true)
            }
            job.record = record
            mover.progress(record)
            return machine.published(conflict: false)

        case .cleanSourceChunk:
            let removed = try await onSource { try await RangeContent.cleanSourceChunk($0, spec, limit: options.chunkSize) }
            return machine.sourceChunkCleaned(more: removed == options.chunkSize)

        case .cleanDecisions:
            // A participant prepared elsewhere may still ask the source (its commit point) for a
            // decision the move copied: keep them until none is prepared and the grace has passed.
            if let published = job.record.publishedAt {
                let left = options.decisionGrace - .milliseconds(Int64(Date().timeIntervalSince(published) * 1000))
                if left > .zero { try await Task.sleep(for: left) }
            }
            // Slept: still ours? (The deletes are fenced on the source's row too.)
            if try await mover.store.jobOwner(job.record.id) != owner {
                throw MoveError(.superseded, "job \(job.record.id) is no longer owned by this runner; it stops")
            }
            // Only branches prepared before the switch can need the moved decisions: wait for the
            // ones there are now (new ones keep coming under load), not for a moment with none.
            let naming = try await preparedNaming(spec.source)
            let deadline = ContinuousClock.now + options.preparedWait * 6
            while !naming.isEmpty, !(try await preparedNaming(spec.source).intersection(naming).isEmpty) {
                guard ContinuousClock.now < deadline else {
                    throw MoveError(.conflict, "branches naming \(spec.source) as commit point stay prepared; is the in-doubt resolver running (serve or agent)?")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            try await onBoth { s, t in try await RangeContent.deleteMovedDecisions(source: s, target: t, spec) }
            try await onSource { try await MoveSQL.retireSource($0, spec) }
            return machine.decisionsCleaned()

        case .undo:
            // The target never took a write while its row is not active: the source may take the
            // range back even from `moved`.
            let target = try await onTarget { try await MoveSQL.ownership($0, map: spec.map, range: spec.range) }
            if target?.state == "active" { throw MoveError(.conflict, "\(spec.target) holds \(spec.range) active already: the move can only go forward") }
            try await onSource { try await MoveSQL.restoreSource($0, spec) }
            while try await onBoth({ s, t in try await RangeContent.undoTargetChunk(source: s, target: t, spec, limit: options.chunkSize) }) > 0 {}
            try await onTarget { try await MoveSQL.retireTarget($0, spec) }
            return machine.stepDone()

        case .retry, .stopForOperator, .finish, .none:
            return action
        }
    }

    /// One pass over the logged changes: the keys they name synced, the changes removed.
    /// Returns how many remain.
    func catchUpPass() async throws -> Int64 {
        let spec = self.spec
        let changes = try await onSource { try await MoveSQL.changes($0, spec, limit: 5000) }
        var seen = Set<Int64>()
        let ids = changes.map(\.account).filter { seen.insert($0).inserted }.sorted()
        for start in stride(from: 0, to: ids.count, by: options.chunkSize) {
            let chunk = Array(ids[start..<min(start + options.chunkSize, ids.count)])
            let since = job.record.captureCutoff
            _ = try await onBoth { s, t in try await RangeContent.sync(chunk, source: s, target: t, spec, since: since) }
        }
        try await onSource { try await MoveSQL.deleteChanges($0, changes.map(\.seq)) }
        return try await onSource { try await MoveSQL.pendingChanges($0, spec) }
    }

    /// The comparison of the whole history takes longer as the history grows, and the changes made
    /// meanwhile would all be caught up inside the freeze: catch up again first (a few passes at
    /// most: under a load the catch-up cannot outrun, the freeze takes the rest).
    func catchUpAfterComparing() async throws {
        for _ in 0..<10 {
            if try await catchUpPass() < Int64(options.limits.pendingToFreeze) { return }
        }
    }

    /// Waits until every ShardBank branch prepared on the source now has ended (the resolver ends
    /// those whose coordinator died).
    func waitForPrepared() async throws {
        let now = try await onSource { try await MoveSQL.preparedBranches($0) }
        guard !now.isEmpty else { return }
        let deadline = ContinuousClock.now + options.preparedWait
        while true {
            let still = try await onSource { try await MoveSQL.preparedBranches($0) }.intersection(now)
            if still.isEmpty { return }
            guard ContinuousClock.now < deadline else {
                throw MoveError(.conflict, "\(still.count) branch(es) prepared on \(spec.source) did not end within \(options.preparedWait); is the in-doubt resolver running (serve or agent)?")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The branches prepared on any node that name `node` as their commit point. Every registered
    /// node but the removed ones is asked — one this process has no pool for could hold such a
    /// branch, so the move stops (resume it once the pool is open) rather than miss it.
    func preparedNaming(_ node: String) async throws -> Set<String> {
        let (live, missing) = try await PreparedBranches.liveNodes(mover.store, connections)
        if let missing {
            throw MoveError(.conflict, "no connection to \(missing) here (its credentials are missing from the configuration, or its pool is not open yet): before the moved decisions leave \(node), every node must be asked for branches that still need them; resume the move when it can")
        }
        return try await PreparedBranches.naming(node, on: live, connections)
    }
}

extension Duration {
    var wholeMilliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
