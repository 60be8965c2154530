import Etcd
import Foundation
import Sharding

/// A long operation on the cluster (a range move, split, drain, rebalance), kept in etcd at
/// `jobs/{id}` so that any process can show it, resume it or cancel it. Its runner holds
/// `jobs/{id}/owner` under a lease; phase changes are compare-and-swap on the record.
///
/// JSON form: snake_case keys, as `ctl jobs --json` and `GET /v1/cluster/jobs` show them.
public struct JobRecord: Sendable, Hashable, Codable {
    public enum Kind: String, Sendable, Hashable, Codable, CaseIterable {
        case move, split, drain, rebalance
    }

    public struct Rows: Sendable, Hashable, Codable {
        public var total: Int64 = 0
        public var copied: Int64 = 0
        public var pendingChanges: Int64 = 0
        public init(total: Int64 = 0, copied: Int64 = 0, pendingChanges: Int64 = 0) {
            self.total = total
            self.copied = copied
            self.pendingChanges = pendingChanges
        }
        enum CodingKeys: String, CodingKey { case total, copied, pendingChanges = "pending_changes" }
    }

    /// The freeze's figures: how long taking the ownership row's lock waited, and how long the
    /// range could not be written.
    public struct Freeze: Sendable, Hashable, Codable {
        public var lockWaitMs: Int64?
        public var windowMs: Int64?
        /// When the range froze (a runner that takes over measures the window from here).
        public var frozenAt: Date?
        /// Of the window: the last catch-up and the comparison of both nodes.
        public var verifyMs: Int64?
        public init(lockWaitMs: Int64? = nil, windowMs: Int64? = nil) {
            self.lockWaitMs = lockWaitMs
            self.windowMs = windowMs
        }
        enum CodingKeys: String, CodingKey { case lockWaitMs = "lock_wait_ms", windowMs = "window_ms", frozenAt = "frozen_at", verifyMs = "verify_ms" }
    }

    public var id: String
    public var kind: Kind
    public var map: String?
    public var range: String?
    public var from: String?
    public var to: String?
    /// The epoch the target's ownership row gets (above the source's; a runner taking the job over
    /// raises it, so the runner it replaced can no longer write on the target).
    public var epoch: Int64?
    /// The job's own epoch on the source: its first step sets the source's ownership row to it
    /// (from ``sourceEpochBefore``), and every later step on the source compares it — so a runner
    /// of an older job on the same range, waking late, matches nothing there.
    public var sourceEpoch: Int64?
    /// The source's ownership epoch when the job was created.
    public var sourceEpochBefore: Int64?
    /// The last key a copy finished with (a move resumes its copy after it).
    public var cursor: Int64?
    /// When the map first named the target: the source's moved decision rows are kept a while after.
    public var publishedAt: Date?
    /// A move's capture began after this time (the source's clock, ten seconds early): its catch-up
    /// reads only history made since.
    public var captureCutoff: String?
    /// The history older than this (the source's clock) was compared equal before the freeze: the
    /// freeze compares only what is newer, whichever runner does it.
    public var comparedCutoff: String?
    /// `serve` for a job asked of the HTTP admin routes: any `serve` runs it (``MoveSupervisor``);
    /// nil for a job `ctl` runs in the foreground.
    public var runBy: String?
    /// A split's new range (its id from `ids/range`, never reused): the upper part of ``range``.
    /// Held in the job's range lock too, so no other job takes it before the split is done.
    public var newRange: String?
    /// Where a split divides ``range``: the new range's lower bound (balance in minor units, or
    /// directory hash).
    public var splitAt: Int64?
    /// A rebalance's settings: the allowed distance from the mean (percent), and the row count
    /// above which a range is split first.
    public var tolerance: Int?
    public var maxRangeRows: Int?
    /// Set by `POST /v1/cluster/jobs/{id}/cancel`: the `serve` that takes the job up undoes it.
    public var cancelRequested: Bool?
    /// The kind's own phase names (a move's: ``MovePhase`` raw values), `done` or `cancelled` at the end.
    public var phase: String
    /// The job that started this one (a rebalance's moves).
    public var parent: String?
    public var rows: Rows
    public var rowsPerSecond: Double?
    public var freeze: Freeze
    public var startedAt: Date
    public var updatedAt: Date
    /// Why the job stopped or was cancelled, in a sentence.
    public var error: String?

    public init(id: String, kind: Kind, map: String? = nil, range: String? = nil, from: String? = nil, to: String? = nil,
                epoch: Int64? = nil, phase: String, parent: String? = nil, now: Date = Date()) {
        self.id = id
        self.kind = kind
        self.map = map
        self.range = range
        self.from = from
        self.to = to
        self.epoch = epoch
        self.sourceEpoch = nil
        self.sourceEpochBefore = nil
        self.cursor = nil
        self.publishedAt = nil
        self.runBy = nil
        self.captureCutoff = nil
        self.comparedCutoff = nil
        self.newRange = nil
        self.splitAt = nil
        self.phase = phase
        self.parent = parent
        self.rows = Rows()
        self.rowsPerSecond = nil
        self.freeze = Freeze()
        self.startedAt = now
        self.updatedAt = now
        self.error = nil
    }

    /// Whether the job has ended.
    public var finished: Bool { phase == "done" || phase == "cancelled" }

    /// A new job id: the time and a random suffix, sortable by start.
    public static func newID(now: Date = Date()) -> String {
        let ms = Int64(now.timeIntervalSince1970 * 1000)
        return "job-\(ms)-" + String(UInt16.random(in: 0...UInt16.max), radix: 16)
    }

    enum CodingKeys: String, CodingKey {
        case id, kind, map, range, from, to, epoch, phase, parent, rows, freeze, error
        case rowsPerSecond = "rows_per_s", startedAt = "started_at", updatedAt = "updated_at"
        case sourceEpoch = "source_epoch", sourceEpochBefore = "source_epoch_before", cursor, publishedAt = "published_at", runBy = "run_by", captureCutoff = "capture_cutoff", comparedCutoff = "compared_cutoff"
        case newRange = "new_range", splitAt = "split_at", cancelRequested = "cancel_requested"
        case tolerance, maxRangeRows = "max_range_rows"
    }
}

/// A job record as stored, with its compare-and-swap token.
public struct StoredJob: Sendable, Hashable {
    public var record: JobRecord
    public var modRevision: Int64
}

extension MetadataKeys {
    public var jobs: String { prefix + "jobs/" }
    public func job(_ id: String) -> String { prefix + "jobs/\(id)" }
    public func jobOwner(_ id: String) -> String { prefix + "jobs/\(id)/owner" }
    /// Held by the unfinished job working on a range: one job per range at a time.
    public func rangeLock(map: String, range: String) -> String { prefix + "joblocks/\(map)/\(range)" }
}

extension MetadataStore {
    static func jobCoding() -> (JSONEncoder, JSONDecoder) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return (encoder, decoder)
    }

    static func decodeJob(_ kv: EtcdKeyValue) throws(MetadataError) -> StoredJob {
        do { return StoredJob(record: try jobCoding().1.decode(JobRecord.self, from: Data(kv.value)), modRevision: kv.modRevision) } catch {
            throw MetadataError(.corrupt, "the job record at \(kv.key) cannot be read: \(error)", underlying: error)
        }
    }

    static func encodeJob(_ record: JobRecord) -> [UInt8] { Array(try! jobCoding().0.encode(record)) }

    /// Creates a job. A job on a range takes the range's lock in the same transaction: a range
    /// already in an unfinished job is refused (`.conflict`, naming that job).
    public func createJob(_ record: JobRecord) async throws(MetadataError) -> StoredJob {
        var compare: [EtcdCompare] = [.absent(keys.job(record.id))]
        var success: [EtcdOperation] = [.put(key: keys.job(record.id), value: Self.encodeJob(record), lease: nil)]
        var failure: [EtcdOperation] = []
        if let map = record.map, let range = record.range {
            let lock = keys.rangeLock(map: map, range: range)
            compare.append(.absent(lock))
            success.append(.put(key: lock, value: Array(record.id.utf8), lease: nil))
            failure.append(.get(.key(lock)))
            if let newRange = record.newRange {
                let second = keys.rangeLock(map: map, range: newRange)
                compare.append(.absent(second))
                success.append(.put(key: second, value: Array(record.id.utf8), lease: nil))
            }
        }
        do {
            let result = try await etcd.transaction(compare: compare, success: success, failure: failure)
            guard result.succeeded else {
                if case .get(let r) = result.results.first, let holder = r.kvs.first {
                    throw MetadataError(.conflict, "\(record.map ?? "") range \(record.range ?? "") is already in job \(String(decoding: holder.value, as: UTF8.self)); wait for it, or cancel it")
                }
                throw MetadataError(.conflict, "job \(record.id) exists already")
            }
            return StoredJob(record: record, modRevision: result.revision)
        } catch let error as MetadataError {
            throw error
        } catch let error as EtcdError {
            throw MetadataError(error, while: "creating job \(record.id)")
        } catch {
            throw MetadataError(.etcd, "creating job \(record.id): \(error)", underlying: error)
        }
    }

    /// Writes `record` if the stored one is still at `expectedRevision`; otherwise `.conflict`
    /// (another runner moved the job on). A finished job releases its range's lock in the same
    /// transaction. Returns the new revision. A write whose answer was lost and that is tried
    /// again finds its own bytes stored: that is no conflict, and the stored revision is returned
    /// (the records are compared as encoded: dates keep whole seconds only).
    public func updateJob(_ record: JobRecord, expectedRevision: Int64) async throws(MetadataError) -> Int64 {
        let encoded = Self.encodeJob(record)
        var success: [EtcdOperation] = [.put(key: keys.job(record.id), value: encoded, lease: nil)]
        if record.finished, let map = record.map, let range = record.range {
            success.append(.delete(.key(keys.rangeLock(map: map, range: range))))
            if let newRange = record.newRange { success.append(.delete(.key(keys.rangeLock(map: map, range: newRange)))) }
        }
        do {
            let result = try await etcd.transaction(compare: [.modRevision(keys.job(record.id), is: expectedRevision)], success: success,
                                                    failure: [.get(.key(keys.job(record.id)))])
            guard result.succeeded else {
                if case .get(let read) = result.results.first, let stored = read.kvs.first, stored.value == encoded {
                    return stored.modRevision
                }
                throw MetadataError(.conflict, "job \(record.id) changed since revision \(expectedRevision): another runner has it; reload it")
            }
            return result.revision
        } catch let error as MetadataError {
            throw error
        } catch let error as EtcdError {
            throw MetadataError(error, while: "updating job \(record.id)")
        } catch {
            throw MetadataError(.etcd, "updating job \(record.id): \(error)", underlying: error)
        }
    }

    /// Writes `map` and `record` in one transaction if neither changed since it was read (a move's
    /// switch is published together with the phase that says so). `.conflict` names which changed.
    public func saveMapAndJob(_ map: RangeMap, as name: MetadataKeys.MapName, mapRevision: Int64,
                              _ record: JobRecord, jobRevision: Int64) async throws(MetadataError) -> Int64 {
        do { try map.validate() } catch { throw MetadataError(.invalid, error.description, underlying: error) }
        do {
            let result = try await etcd.transaction(
                compare: [.modRevision(keys.shardMap(name), is: mapRevision), .modRevision(keys.job(record.id), is: jobRevision)],
                success: [saveMapOperation(map, as: name), .put(key: keys.job(record.id), value: Self.encodeJob(record), lease: nil)])
            guard result.succeeded else {
                throw MetadataError(.conflict, "shard map \(name.rawValue) or job \(record.id) changed since they were read; reload them")
            }
            return result.revision
        } catch let error as MetadataError {
            throw error
        } catch let error as EtcdError {
            throw MetadataError(error, while: "publishing map \(name.rawValue) for job \(record.id)")
        } catch {
            throw MetadataError(.etcd, "publishing map \(name.rawValue) for job \(record.id): \(error)", underlying: error)
        }
    }

    /// Gives up the job's ownership at once (instead of when the runner's lease expires).
    public func releaseJob(_ id: String, owner: String) async throws(MetadataError) {
        let key = keys.jobOwner(id)
        do {
            _ = try await etcd.transaction(compare: [EtcdCompare(key: key, .value(Array(owner.utf8)))], success: [.delete(.key(key))])
        } catch {
            throw MetadataError(error, while: "releasing job \(id)")
        }
    }

    /// One job, or nil.
    public func job(_ id: String) async throws(MetadataError) -> StoredJob? {
        let kv: EtcdKeyValue?
        do { kv = try await etcd.get(keys.job(id)) } catch { throw MetadataError(error, while: "reading job \(id)") }
        return try kv.map(Self.decodeJob)
    }

    /// Every job, oldest first.
    public func jobs() async throws(MetadataError) -> [StoredJob] {
        let result: EtcdRangeResult
        do { result = try await etcd.range(.prefix(keys.jobs)) } catch { throw MetadataError(error, while: "reading the jobs") }
        return try result.kvs.filter { !$0.key.dropFirst(keys.jobs.count).contains("/") }.map(Self.decodeJob)
            .sorted { ($0.record.startedAt, $0.record.id) < ($1.record.startedAt, $1.record.id) }
    }

    /// Takes the job for `owner` under `lease` (its runner keeps the lease alive). False when another
    /// runner holds it; once that runner's lease expires, the owner key vanishes and the job can be
    /// taken over.
    public func claimJob(_ id: String, owner: String, lease: Int64) async throws(MetadataError) -> Bool {
        let key = keys.jobOwner(id)
        do {
            return try await etcd.transaction(compare: [.absent(key)], success: [.put(key: key, value: Array(owner.utf8), lease: lease)]).succeeded
        } catch {
            throw MetadataError(error, while: "claiming job \(id)")
        }
    }

    /// Who runs the job now, if anyone.
    public func jobOwner(_ id: String) async throws(MetadataError) -> String? {
        do { return try await etcd.get(keys.jobOwner(id)).map { String(decoding: $0.value, as: UTF8.self) } } catch {
            throw MetadataError(error, while: "reading the owner of job \(id)")
        }
    }
}
