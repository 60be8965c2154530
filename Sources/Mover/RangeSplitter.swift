import ClusterMetadata
import Foundation
import Ledger
import Logging
import MariaDB
import Moves
import Sharding
import Synchronization

/// Runs range splits: the I/O around ``RangeSplitStateMachine``, on the one node that holds the
/// range. The node gets the new range's ownership row while the old row still covers the whole
/// range (so a router on either map is let through), the map is changed, the rows above the key
/// are relabelled in chunks, and one short transaction narrows the old row and relabels what was
/// written under it meanwhile; for accounts, the directory entries then name the new range. No
/// row changes node, so a split copies nothing.
public struct RangeSplitter: Sendable {
    public struct Options: Sendable {
        /// Rows per relabel chunk.
        public var chunkSize = 1000
        /// The owner lease's TTL in seconds (etcd 3.4's minimum is 2).
        public var leaseTTL: Int64 = 3
        /// How long to wait for another runner's ownership to lapse (nil: the lease's TTL + 1 s).
        public var claimWait: Duration?
        public var limits = RangeSplitStateMachine.Limits()
        /// Called before each step with its phase; a fault drill throws here to stop the runner as
        /// a crash would.
        public var beforeStep: (@Sendable (SplitPhase) async throws -> Void)?
        /// Called after each step's SQL, before the record says so.
        public var afterStep: (@Sendable (SplitPhase, RangeSplitStateMachine.Action) async throws -> Void)?
        public init() {}
    }

    let connections: NodeConnections
    public let store: MetadataStore
    let options: Options
    let logger: Logger
    let progress: @Sendable (JobRecord) -> Void

    public init(connections: NodeConnections, store: MetadataStore, options: Options = Options(), logger: Logger,
                progress: @escaping @Sendable (JobRecord) -> Void = { _ in }) {
        self.connections = connections
        self.store = store
        self.options = options
        self.logger = logger
        self.progress = progress
    }

    /// Checks a split of `range` of `map` at `at` (balance in minor units for accounts, a hash for
    /// the directory; nil: the median by rows) and records it as a job in `prepared`, with the new
    /// range's id; nothing is written on the node yet. Refuses, naming what is known: an unknown
    /// range, a key outside the range or on its bound, an empty range, a median on the lower bound,
    /// a range already in a job.
    public func create(map name: MetadataKeys.MapName, range: String, at: Int64?, runBy: String? = nil, parent: String? = nil) async throws -> StoredJob {
        guard let stored = try await store.loadMap(name) else {
            throw MoveError(.invalid, "the cluster is not initialised: run `shardbank ctl init` first")
        }
        guard let shard = stored.map.range(id: range) else {
            throw MoveError(.invalid, "there is no \(name.rawValue) range \(range); known: \(stored.map.ranges.map(\.id).joined(separator: ", "))")
        }
        guard connections.nodes.contains(shard.node) else {
            throw MoveError(.invalid, "no connection to \(shard.node) here: its credentials are missing from the configuration (nodes.<id>)")
        }
        let show: (Int64) -> String = name == .accounts ? { Money(minorUnits: $0).description } : { String($0) }
        let bounds = "[\(show(shard.lowerBound)), \(shard.upperBound.map(show) ?? "∞"))"
        let key: Int64
        if let at {
            guard at > shard.lowerBound, shard.upperBound.map({ at < $0 }) ?? true else {
                throw MoveError(.invalid, at == shard.lowerBound ? "\(show(at)) is \(range)'s lower bound: a split key must lie strictly inside \(bounds)"
                                : "\(show(at)) is outside \(range) \(bounds): a split key must lie strictly inside it")
            }
            key = at
        } else {
            guard let median = try await connections.withConnection(shard.node, { try await SplitSQL.median($0, map: name.rawValue, range: range) }) else {
                throw MoveError(.invalid, "\(range) holds no rows, so it has no median: give the key to split at")
            }
            guard median.key > shard.lowerBound else {
                let share = median.atKey * 100 / max(median.rows, 1)
                throw MoveError(.invalid, "\(share) % of \(range) holds exactly \(show(median.key)), its lower bound, so the median cannot divide it"
                                + (median.next.map { ": give a key above it (the next \(name == .accounts ? "balance" : "hash") is \(show($0)))" } ?? " and no row lies above it: it cannot be split"))
            }
            key = median.key
        }
        let owned = try await connections.withConnection(shard.node) { try await MoveSQL.ownership($0, map: name.rawValue, range: range) }
        guard let owned, owned.state == "active", owned.lower == shard.lowerBound, owned.upper == shard.upperBound else {
            throw MoveError(.conflict, "\(shard.node) does not hold \(range) \(bounds) as active (\(owned.map { "\($0.state) [\($0.lower), \($0.upper.map(String.init) ?? "∞"))" } ?? "no ownership row")): run `shardbank ctl verify`")
        }
        let rows = try await connections.withConnection(shard.node) { c in
            try await c.execute("SELECT COUNT(*) AS n FROM \(name == .accounts ? "account_info" : "account_directory") WHERE \(name == .accounts ? "balance_range" : "directory_range") = ?",
                                [.string(range)]).rows[0].int64("n")
        }
        let existing = try await [MetadataKeys.MapName.accounts, .directory].asyncFlatMap { try await store.loadMap($0)?.map.ranges.map(\.id) ?? [] }
        let newRange = try await store.allocateRangeID(letter: name == .accounts ? "a" : "d", existing: existing)
        var record = JobRecord(id: JobRecord.newID(), kind: .split, map: name.rawValue, range: range, from: shard.node, to: shard.node,
                               epoch: owned.epoch, phase: SplitPhase.prepared.rawValue)
        record.newRange = newRange
        record.splitAt = key
        record.runBy = runBy
        record.parent = parent
        record.rows.total = rows
        do {
            return try await store.createJob(record)
        } catch {
            throw RangeMover.refusal(error)
        }
    }

    /// Runs split job `id` until it ends or stops for an operator, and returns its record.
    /// `.cancel` removes the new range while the map does not name it yet.
    public func run(_ id: String, _ command: RangeMover.Command = .resume) async throws -> JobRecord {
        guard let job = try await store.job(id) else { throw MoveError(.notFound, "there is no job \(id); `shardbank ctl jobs` lists them") }
        guard job.record.kind == .split, let phase = SplitPhase(rawValue: job.record.phase) else {
            throw MoveError(.invalid, "job \(id) is a \(job.record.kind.rawValue), not a split")
        }
        var machine = RangeSplitStateMachine(phase: phase, cursor: job.record.cursor, pointsDirectory: job.record.map == MetadataKeys.MapName.accounts.rawValue,
                                             cancelReason: phase == .cancelling ? job.record.error : nil, limits: options.limits)
        let action: RangeSplitStateMachine.Action
        do {
            action = command == .cancel ? try machine.cancel() : try machine.operatorResume()
        } catch {
            throw MoveError(.invalid, "job \(id): \(error.message)")
        }
        let start = (machine, action)
        let ownership = JobOwnership(store: store, id: id, leaseTTL: options.leaseTTL, claimWait: options.claimWait ?? .seconds(options.leaseTTL + 1))
        return try await ownership.run { owner in
            var run = try SplitRun(splitter: self, job: job, owner: owner)
            var machine = start.0
            return try await run.drive(&machine, start.1)
        }
    }
}

extension Array {
    func asyncFlatMap<T>(_ transform: (Element) async throws -> [T]) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result += try await transform(element) }
        return result
    }
}

/// One runner's pass over a split job.
private struct SplitRun {
    let splitter: RangeSplitter
    var job: StoredJob
    let owner: String
    var spec: SplitSpec
    var lastSaved = ContinuousClock.now

    init(splitter: RangeSplitter, job: StoredJob, owner: String) throws {
        self.splitter = splitter
        self.job = job
        self.owner = owner
        let r = job.record
        guard let range = r.range, let newRange = r.newRange, let node = r.from, let at = r.splitAt, let map = r.map else {
            throw MoveError(.invalid, "job \(r.id) is not a complete split record")
        }
        // The bounds the split recorded: the old range's as the map had them at creation.
        spec = SplitSpec(map: map, range: range, newRange: newRange, node: node, lower: 0, upper: nil, at: at, epoch: r.epoch ?? 0)
    }

    var options: RangeSplitter.Options { splitter.options }
    var logger: Logger { splitter.logger }
    var store: MetadataStore { splitter.store }

    func onNode<T: Sendable>(_ body: (MariaDBConnection) async throws -> T) async throws -> T {
        try await splitter.connections.withConnection(spec.node, body)
    }

    mutating func save(_ machine: RangeSplitStateMachine, force: Bool = true) async throws {
        guard force || ContinuousClock.now - lastSaved > .seconds(1) else { return }
        job.record.phase = machine.phase.rawValue
        job.record.cursor = machine.cursor
        job.record.updatedAt = Date()
        do {
            job.modRevision = try await store.updateJob(job.record, expectedRevision: job.modRevision)
        } catch {
            throw error.code == .conflict ? MoveError(.superseded, "job \(job.record.id) was changed by another runner; this one stops") : error
        }
        lastSaved = ContinuousClock.now
        splitter.progress(job.record)
    }

    mutating func drive(_ machine: inout RangeSplitStateMachine, _ first: RangeSplitStateMachine.Action) async throws -> JobRecord {
        var action = first
        try await loadBounds()
        job.record.error = machine.phase == .cancelling ? machine.cancelReason : nil
        try await save(machine)
        while true {
            if job.record.phase != machine.phase.rawValue {
                if machine.phase == .cancelling { job.record.error = machine.cancelReason }
                try await save(machine)
            }
            if let hook = options.beforeStep { try await hook(machine.phase) }
            if try await store.jobOwner(job.record.id) != owner {
                throw MoveError(.superseded, "job \(job.record.id) is no longer owned by this runner; it stops")
            }
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
                let phase = machine.phase
                let done = action
                do {
                    action = try await perform(action, &machine)
                    if let hook = options.afterStep { try await hook(phase, done) }
                } catch let error as any MoverDrill {
                    throw error
                } catch let error as MoveError where error.code == .superseded {
                    throw error
                } catch let error as MoveError where error.code == .conflict {
                    logger.warning("split conflict", metadata: ["job": "\(job.record.id)", "what": "\(error.message)"])
                    action = machine.conflict(error.message)
                } catch is CancellationError {
                    throw CancellationError()
                } catch let busy as SplitSQL.DirectoryBusy {
                    action = machine.directoryBusy(busy.description)
                } catch {
                    logger.warning("split step failed", metadata: ["job": "\(job.record.id)", "phase": "\(phase.rawValue)", "error": "\(error)"])
                    action = machine.stepFailed("\(error)")
                }
            }
        }
    }

    mutating func perform(_ action: RangeSplitStateMachine.Action, _ machine: inout RangeSplitStateMachine) async throws -> RangeSplitStateMachine.Action {
        let spec = self.spec
        switch action {
        case .addRange:
            _ = try await oldRange()
            try await onNode { try await SplitSQL.addRange($0, spec) }
            return machine.rangeAdded()

        case .publishMap:
            guard let name = MetadataKeys.MapName(rawValue: spec.map), let stored = try await store.loadMap(name) else {
                throw MoveError(.conflict, "shard map \(spec.map) is gone")
            }
            var record = job.record
            record.phase = SplitPhase.relabeling.rawValue
            record.cursor = nil
            record.updatedAt = Date()
            if stored.map.range(id: spec.newRange) != nil {
                // Only this job names the new id, and it writes the map with its record.
                guard let now = try await store.job(job.record.id), now.record.phase != SplitPhase.publishing.rawValue else {
                    throw MoveError(.conflict, "the map names \(spec.newRange) but job \(job.record.id) is not past publishing: the map was changed by hand?")
                }
                job = now
                return machine.published(conflict: false)
            }
            _ = try await oldRange()
            let map = try stored.map.splitting(spec.range, at: spec.at, newID: spec.newRange)
            do {
                job.modRevision = try await store.saveMapAndJob(map, as: name, mapRevision: stored.modRevision, record, jobRevision: job.modRevision)
            } catch {
                guard let now = try await store.job(job.record.id) else { throw error }
                if now.modRevision != job.modRevision {
                    guard now.record.phase == SplitPhase.relabeling.rawValue else {
                        throw MoveError(.superseded, "job \(job.record.id) was changed by another runner; this one stops")
                    }
                    job = now // our write landed; its answer was lost
                    return machine.published(conflict: false)
                }
                guard error.code == .conflict else { throw error }
                return machine.published(conflict: true)
            }
            job.record = record
            splitter.progress(record)
            return machine.published(conflict: false)

        case .relabelChunk(let after):
            let limit = options.chunkSize
            let (last, read) = try await onNode { try await SplitSQL.relabelChunk($0, spec, after: after, limit: limit) }
            job.record.rows.copied += Int64(read)
            let next = machine.chunkRelabeled(lastKey: last, more: read == limit)
            try await save(machine, force: machine.phase != .relabeling)
            return next

        case .narrow:
            do {
                let narrowed = try await onNode { try await SplitSQL.narrow($0, spec) }
                // The split's pause: writes to the old range wait while the narrowing holds its row.
                job.record.freeze.lockWaitMs = narrowed.lockWait.wholeMilliseconds
                job.record.freeze.windowMs = narrowed.held.wholeMilliseconds
                logger.info("split narrowed", metadata: ["job": "\(job.record.id)", "stragglers": "\(narrowed.stragglers.count)",
                                                         "held_ms": "\(narrowed.held.wholeMilliseconds)"])
            } catch is SplitSQL.NarrowTimeout {
                return machine.narrowTimedOut()
            }
            return machine.narrowed()

        case .pointChunk(let after):
            // Smaller than a relabel chunk: the accounts' rows stay share-locked while every
            // directory node is visited.
            let limit = min(options.chunkSize, 250)
            let ids = try await onNode { try await SplitSQL.newRangeIDs($0, spec, after: after, limit: limit) }
            if !ids.isEmpty { try await point(ids) }
            let (last, read) = (ids.last, ids.count)
            let next = machine.chunkPointed(lastKey: last, more: read == limit)
            try await save(machine, force: machine.phase != .pointing)
            return next

        case .undo:
            try await onNode { try await SplitSQL.removeRange($0, spec) }
            return machine.undone()

        case .retry, .stopForOperator, .finish, .none:
            return action
        }
    }

    /// The bounds of the range being split, from the map: the old range's lower bound, and its
    /// upper bound before the split (the new range's after it).
    mutating func loadBounds() async throws {
        guard let name = MetadataKeys.MapName(rawValue: spec.map), let map = try await store.loadMap(name)?.map,
              let old = map.range(id: spec.range) else {
            throw MoveError(.conflict, "\(spec.map) range \(spec.range) is no longer in the map")
        }
        spec.lower = old.lowerBound
        spec.upper = map.range(id: spec.newRange).map(\.upperBound) ?? old.upperBound
    }

    /// The old range as the map has it: on the job's node. Before publishing its bounds are the
    /// whole range; after, its lower bound is the same.
    func oldRange() async throws -> ShardRange {
        guard let name = MetadataKeys.MapName(rawValue: spec.map), let stored = try await store.loadMap(name),
              let shard = stored.map.range(id: spec.range) else {
            throw MoveError(.conflict, "\(spec.map) range \(spec.range) is no longer in the map")
        }
        guard shard.node == spec.node else { throw MoveError(.conflict, "\(spec.range) is on \(shard.node) now, not \(spec.node)") }
        if stored.map.range(id: spec.newRange) == nil, !(shard.lowerBound < spec.at && shard.upperBound.map { spec.at < $0 } ?? true) {
            throw MoveError(.conflict, "\(spec.range) no longer contains the split key")
        }
        return shard
    }

    /// Points the directory entries of `ids` (accounts of the new range) at the new range. The
    /// nodes are visited in the ledger's order (by node id), each in one transaction held until
    /// all are done: on the range's node the accounts' rows are share-locked (still in the new
    /// range: no transfer can change that meanwhile), on each directory node the entries' ranges
    /// are fenced and the entries locked; then the entries of the confirmed accounts are updated.
    /// Taking locks in the ledger's order keeps this from waiting in a cycle with a transfer.
    func point(_ ids: [Int64]) async throws {
        guard let directory = try await store.loadMap(.directory)?.map else { throw MoveError(.conflict, "the directory map is gone") }
        var byNode: [String: [String: [Int64]]] = [:] // node → directory range → hashes
        var idsByNode: [String: [Int64]] = [:]
        for id in ids {
            let hash = DirectoryHash.key(forAccount: id)
            let range = try directory.range(for: hash)
            byNode[range.node, default: [:]][range.id, default: []].append(hash)
            idsByNode[range.node, default: []].append(id)
        }
        let order = Set(byNode.keys).union([spec.node]).sorted()
        let spec = self.spec, connections = splitter.connections, hashes = byNode, members = idsByNode
        let confirmed = Shared(Set<Int64>())
        @Sendable func visit(_ i: Int, _ held: [String: MariaDBConnection]) async throws {
            guard i < order.count else {
                for (node, ids) in members {
                    guard let c = held[node] else { continue }
                    try await SplitSQL.pointEntries(c, spec, ids.filter { confirmed.value.contains($0) })
                }
                return
            }
            let node = order[i]
            try await connections.withConnection(node) { c in
                try await c.query("SET SESSION innodb_lock_wait_timeout = 5")
                do {
                    try await c.transaction { c in
                        if node == spec.node { confirmed.value = try await SplitSQL.lockNewRangeRows(c, spec, ids) }
                        if let ranges = hashes[node], let ids = members[node] { try await SplitSQL.lockEntries(c, ids, ranges: ranges) }
                        var next = held
                        next[node] = c
                        try await visit(i + 1, next)
                    }
                } catch {
                    _ = try? await c.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
                    throw error
                }
                // Committed: a failed reset must not fail the step (the pool drops a broken connection).
                _ = try? await c.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            }
        }
        try await visit(0, [:])
    }
}

/// A value shared between a step and the closures it runs.
private final class Shared<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}
