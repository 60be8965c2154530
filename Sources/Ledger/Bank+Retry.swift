import MariaDB
import Sharding

// Which path a balance change takes, and what a failed try means: ``MovementRetryPolicy`` decides,
// this performs.
extension Bank {
    /// What one try of a balance change came to, when it did not fail for good.
    enum Try: Sendable {
        case done(MovementResult)
        /// Not the lock-first path's case; nothing was written.
        case notSimple
        /// Another attempt of this key committed: answer as it did.
        case alreadyDecided
        /// Nothing was written, and trying again may succeed.
        case stale(MovementRetryPolicy.Stale, cause: any Error)
    }

    /// Not the lock-first path's case (see ``lockFirst(kind:key:home:changes:hash:hints:claimed:)``); nothing is written.
    struct NotSimple: Error {}
    /// Another attempt of this key committed already.
    struct AlreadyDecided: Error {}

    /// Sorts why a try was rolled back. Stale plans, lock waits, deadlocks, lost connections and key
    /// collisions come back as ``Try`` to try again. Everything else is final and thrown as it is —
    /// the ledger's own answers (insufficient funds, the ceiling, a node down, an outcome unknown),
    /// and errors no retry can cure (a server error that is not transient): the edge maps each to
    /// what it means, so that "retry" is only ever said where a retry can succeed.
    func classify(_ cause: any Error) throws -> Try {
        switch cause {
        case is NotSimple: return .notSimple
        case is AlreadyDecided: return .alreadyDecided
        case let stale as PlanStale: return .stale(.init(stillThere: stale.stillThere, wrongShard: stale.wrongShard, rangeMoving: stale.moving), cause: stale)
        case let e as MariaDBError where e.isRetryable || e.errorNumber == 1062: return .stale(.init(), cause: e)
        // MariaDB 10.11 can fail a write with "table doesn't exist" (1146) while a trigger on its
        // table is created or dropped (MDEV-26048) — a range move installs and removes the capture
        // triggers under load. Nothing was written: the try is made again.
        case let e as MariaDBError where e.errorNumber == 1146: return .stale(.init(), cause: e)
        case let e as LedgerError where e.code == .aborted && e.underlying != nil:
            return try classify(e.underlying!)
        // A node this process has no pool for any more (removed by a drain): the maps that named it
        // are behind. Read them again (wrong shard) rather than answer "node unavailable".
        case let e as LedgerError where e.code == .nodeUnavailable && e.node.map({ !connections.nodes.contains($0) }) == true:
            return .stale(.init(wrongShard: true), cause: e)
        default: throw cause
        }
    }

    /// Runs a balance change of one or more accounts to its end, after ``MovementRetryPolicy``.
    func move(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String) async throws -> MovementResult {
        var policy = MovementRetryPolicy()
        var lastCause: (any Error)?
        // A try collided with a row of this key (1062): maybe an earlier attempt, maybe another request.
        var collided = false
        // Why each try went stale, for the log line of a request that gives up.
        var staleReasons: [String] = []
        func note(_ cause: any Error) {
            lastCause = cause
            staleReasons.append(String("\(cause)".prefix(200)))
            if let e = cause as? MariaDBError, e.errorNumber == 1062 { collided = true }
        }
        let accounts = Set(changes.map(\.0))
        // Every account's place known (seen before, or read by the last try).
        func hints() -> [Int64: Location]? {
            // A place on a node this process no longer has a pool for (removed by a drain) is no hint.
            let served = Set(connections.nodes)
            let known = locations.withLock { l in accounts.reduce(into: [Int64: Location]()) { $0[$1] = l[$1].flatMap { served.contains($0.node) ? $0 : nil } } }
            return known.count == accounts.count ? known : nil
        }
        var action = policy.start(allLocationsKnown: hints() != nil)
        var moving = MoveWait(limit: moveWait)
        let claimed = ClaimMemo()
        let began = ContinuousClock.now
        while true {
            switch action {
            case .lockFirst:
                guard let hints = hints() else { action = policy.lockFirstNotSimple(); continue }
                switch try await lockFirst(kind: kind, key: key, home: home, changes: changes, hash: hash, hints: hints, claimed: claimed) {
                case .done(let result): return result
                case .notSimple: action = policy.lockFirstNotSimple()
                case .alreadyDecided: action = policy.earlierAttemptCommitted()
                case .stale(let stale, let cause):
                    note(cause)
                    action = policy.lockFirstStale(stale)
                }
            case .lookForEarlierCommit:
                if let replay = try await previousOutcome(key: key, home: home, hash: hash, accounts: changes.map(\.0)) { return replay }
                if collided { try await refuseIfUsedElsewhere(key: key, accounts: changes.map(\.0)) }
                action = policy.noEarlierCommit()
            case .plan:
                moving.planned(maps: try maps())
                switch try await execute(kind: kind, key: key, home: home, changes: changes, hash: hash, claimed: claimed) {
                case .done(let result): return result
                case .alreadyDecided: action = policy.earlierAttemptCommitted()
                case .notSimple: action = policy.planStale(.init(), elapsed: .now - began)
                case .stale(let stale, let cause):
                    note(cause)
                    logger.debug("plan went stale; planning again", metadata: ["transfer_id": "\(key)", "stale_plans": "\(policy.stalePlans)", "reason": "\(cause)"])
                    action = policy.planStale(stale, elapsed: .now - began)
                }
            case .backOff(let pause, let forget, let refresh):
                if forget { locations.withLock { l in accounts.forEach { l[$0] = nil } } }
                if refresh {
                    do { try await refreshMaps() } catch {
                        logger.warning("could not refresh the shard maps after wrong_shard", metadata: ["error": "\(error)"])
                    }
                }
                try await Task.sleep(for: MovementRetryPolicy.jittered(pause))
                action = policy.backedOff(allLocationsKnown: hints() != nil)
            case .awaitMapChange:
                if moving.shouldRefresh { try? await refreshMaps() }
                try await moving.wait(maps: maps, what: "\(kind) \(key)", cause: lastCause)
                locations.withLock { l in accounts.forEach { l[$0] = nil } }
                action = policy.mapsChanged()
            case .giveUp:
                logger.warning("gave up after \(policy.stalePlans) stale plans in \((ContinuousClock.now - began).milliseconds) ms", metadata: [
                    "transfer_id": "\(key)", "kind": "\(kind)", "reasons": "\(staleReasons.joined(separator: " | "))"])
                throw LedgerError(.aborted, "the accounts kept changing while \(kind) \(key) was planned; nothing was done, try again", underlying: lastCause)
            }
        }
    }

    /// A committed posting of `key` to one of `accounts`, while no committed decision of the key is
    /// on the home account's nodes, belongs to another request with another home (a participant's
    /// posting commits only after its decision): the key was used for something else.
    func refuseIfUsedElsewhere(key: String, accounts: [Int64]) async throws {
        for account in accounts {
            for node in try await nodesOf(account) where try await connections.withConnection(node, { try await AccountSQL.postingExists($0, transferID: key, account: account) }) {
                throw LedgerError(.idempotencyConflict, "idempotency key \(key) was already used for a different request (one that also moved account \(account))")
            }
        }
    }
}

/// How long an operation has waited for ranges frozen by a move, and the wait itself: a frozen range
/// switches to its new node within milliseconds and the maps (the cache the watch keeps, not an etcd
/// read per try) then change; the operation waits for that in slices of at most 100 ms — a move
/// cancelled unfreezes the range without a map change — and after `limit` in all answers
/// `range_moving`, having changed nothing.
struct MoveWait {
    let limit: Duration
    private var deadline: ContinuousClock.Instant?
    /// The map versions the last plan was made from.
    private var seen: (accounts: Int64, directory: Int64)?
    private var slices = 0

    /// Once, after a few slices without a change: the maps are read from etcd, in case the watch
    /// that keeps the cache is behind (a switched range stays `moved` on its old node).
    var shouldRefresh: Bool { slices == 3 }

    init(limit: Duration) { self.limit = limit }

    /// Remembers the maps a plan is made from: a change after that ends the wait at once.
    mutating func planned(maps: LedgerMaps) {
        seen = (maps.accounts.version, maps.directory.version)
    }

    /// Waits for the maps to change or for a slice to pass; throws `range_moving` past the limit.
    mutating func wait(maps: @Sendable () throws -> LedgerMaps, what: String, cause: (any Error)?) async throws {
        let clock = ContinuousClock()
        slices += 1
        let end = deadline ?? clock.now.advanced(by: limit)
        deadline = end
        let slice = min(end, clock.now.advanced(by: .milliseconds(100)))
        while clock.now < slice {
            if let seen, let m = try? maps(), m.accounts.version != seen.accounts || m.directory.version != seen.directory { return }
            try await Task.sleep(for: .milliseconds(5))
        }
        guard clock.now < end else {
            throw LedgerError(.rangeMoving, "\(what) needs a range that is being moved to another node and did not switch within \(limit.milliseconds) ms; nothing was changed — retry in a second with the same Idempotency-Key",
                              underlying: cause)
        }
    }
}

extension Duration {
    /// Whole milliseconds, for messages.
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
