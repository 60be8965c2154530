import Foundation
import MariaDB
import Sharding
import Synchronization

// The lock-first path: accounts seen before, no read before the transaction, every decision made
// from locked rows.
extension Bank {
    /// The common case, every decision made from locked rows and no read before the transaction: each
    /// account where it was last seen, no balance leaving its node, a home account that never lived
    /// elsewhere. One node: a local transaction of five statements, the decision row first. Several:
    /// two-phase commit whose branches lock first; the commit point (the home account's node) writes
    /// the decision row, fenced, after the others are prepared.
    /// Answers ``Try/notSimple`` — having written nothing — when the case is not this simple; the
    /// general path takes over.
    func lockFirst(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String,
                   hints: [Int64: Location]) async throws -> Try {
        let maps = try self.maps()
        guard let commitPoint = hints[home]?.node else { return .notSimple }
        // One branch per node, visited in the global node order (see ``commit``); rows in ascending id.
        var byNode: [String: [(Int64, Int64)]] = [:]
        for change in changes.sorted(by: { $0.0 < $1.0 }) { byNode[hints[change.0]!.node, default: []].append(change) }
        let order = byNode.keys.sorted()
        let decision = movementDecision(kind: kind, key: key, changes: changes, hash: hash, participants: order)
        let written = Mutex<[Int64: (location: Location, balance: Money)]>([:])
        @Sendable func ranges(_ part: [(Int64, Int64)]) -> [String] { Set(part.map { hints[$0.0]!.range }).sorted() }

        do {
            if order.count == 1 {
                try await localTransaction(on: commitPoint, decision: decision) { c in
                    let part = try await self.lockedPart(c, node: commitPoint, key: key, attempt: decision.attempt, changes: changes, home: home,
                                                         decision: decision, ranges: ranges(changes), maps: maps)
                    written.withLock { $0.merge(part.written) { $1 } }
                }
            } else {
                let pointRanges = Mutex<[String]>([])
                let branches = order.map { node in
                    let part = byNode[node]!
                    let isPoint = node == commitPoint
                    return TwoPhaseCommit.Branch(node: node) { c in
                        let done = try await self.lockedPart(c, node: node, key: key, attempt: decision.attempt, changes: part, home: home,
                                                             decision: nil, ranges: ranges(part), maps: maps, deferFence: isPoint)
                        written.withLock { $0.merge(done.written) { $1 } }
                        if isPoint { pointRanges.withLock { $0 = done.unfenced } }
                    }
                }
                // The commit point's fence travels with its decision row, the statement before COMMIT.
                let outcome = try await twoPhase.run(decision: decision, branches: branches, commitPoint: commitPoint) { c in
                    try await self.insertDecision(decision, ranges: pointRanges.withLock { $0 }, on: c)
                }
                switch outcome {
                case .committed: break
                case .rolledBack(let cause): return try classify(cause)
                case .unknown(let error): throw error
                }
            }
        } catch {
            return try classify(error)
        }
        let seen = written.withLock { $0 }
        locations.withLock { l in l.merge(seen.mapValues(\.location)) { $1 } }
        return .done(MovementResult(transferID: key, balances: seen.mapValues(\.balance), replayed: false))
    }

    /// The decision row of a lock-first attempt, fenced (see ``DecisionRows/insertFenced(_:ranges:on:)``):
    /// a committed attempt of the key → ``AlreadyDecided``; a range not active here → ``NotSimple``.
    func insertDecision(_ decision: DecisionRecord, ranges: [String], on c: MariaDBConnection) async throws {
        let inserted: Bool
        do throws(MariaDBError) {
            inserted = try await DecisionRows.insertFenced(decision, ranges: ranges, on: c)
        } catch {
            if error.errorNumber == 1062 { throw AlreadyDecided() }
            throw error
        }
        guard inserted else { throw NotSimple() }
    }

    /// One node's part of ``lockFirst`` inside its (local or XA) transaction: with `decision`, the
    /// decision row first — the idempotency check and the fence of the ranges the rows were last seen
    /// in, in one statement — then the rows locked in ascending id, the new balances in one update and
    /// the postings in one insert. Ranges involved but not fenced yet are fenced by one shared-lock
    /// read, or with `deferFence` returned in `unfenced` for the caller to fence before the commit
    /// (a shared lock taken late and held to the end protects as well as one taken first).
    func lockedPart(_ c: MariaDBConnection, node: String, key: String, attempt: AttemptID, changes: [(Int64, Int64)], home: Int64,
                            decision: DecisionRecord?, ranges hinted: [String], maps: LedgerMaps, deferFence: Bool = false) async throws
        -> (written: [Int64: (location: Location, balance: Money)], unfenced: [String]) {
        var fenced: Set<String> = []
        if let decision {
            try await insertDecision(decision, ranges: hinted, on: c)
            fenced = Set(hinted)
        }
        let ids = changes.map(\.0).sorted()
        let rows = try await AccountSQL.lock(c, ids)
        guard rows.count == ids.count else { throw NotSimple() }
        if let homeRow = rows.first(where: { $0.accountID == home }), !homeRow.previousNodes.isEmpty { throw NotSimple() }
        var updates: [(id: Int64, balance: Int64, range: String)] = []
        var postings: [AccountSQL.Posting] = []
        var needed: Set<String> = []
        for row in rows {
            let delta = changes.first { $0.0 == row.accountID }!.1
            let after = try newBalance(of: row.accountID, from: row.balance, adding: delta)
            let target = try maps.accounts.range(for: after)
            // Another range, even on this node, means the directory entry changes too: the general path's.
            guard target.node == node, target.id == row.range else { throw NotSimple() }
            needed.formUnion([row.range, target.id])
            updates.append((row.accountID, after, target.id))
            postings.append(.init(account: row.accountID, amount: delta, balanceAfter: after))
        }
        // Ranges not fenced yet (shared locks held to the end, so a handover waits for us): with one
        // posting, in the statement that inserts it; otherwise one read first.
        let missing = needed.subtracting(fenced).sorted()
        let fenceWithPosting = !missing.isEmpty && !deferFence && postings.count == 1
        if !missing.isEmpty && !deferFence && !fenceWithPosting {
            guard try await AccountSQL.fenceActive(c, ranges: missing) else { throw NotSimple() }
        }
        // The map may be behind a split: the node's bounds decide (nothing written otherwise).
        guard try await AccountSQL.updateFenced(c, updates) else { throw NotSimple() }
        if fenceWithPosting {
            guard try await AccountSQL.journalFenced(c, transferID: key, attempt: attempt, posting: postings[0], ranges: missing) else { throw NotSimple() }
        } else {
            try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: postings)
        }
        let written = Dictionary(uniqueKeysWithValues: updates.map { ($0.id, (Location(node: node, range: $0.range), Money(minorUnits: $0.balance))) })
        return (written, deferFence ? missing : [])
    }

    /// One local transaction on `node` that writes `decision`'s row: `body`, then COMMIT. Errors of
    /// `body` roll back and are rethrown as they are. A COMMIT whose answer is lost with the
    /// connection may or may not have happened: the node's decision row settles it (see
    /// ``TwoPhaseCommit/learnDecision(_:attempt:commitPoint:after:)``) — committed returns normally, rolled back throws `.aborted`, no answer
    /// throws `.outcomeUnknown`.
    func localTransaction(on node: String, decision: DecisionRecord, _ body: @escaping @Sendable (MariaDBConnection) async throws -> Void) async throws {
        let lost: MariaDBError? = try await connections.withConnection(node) { c in
            try await withTaskExecutorPreference(c.executor) {
                try await c.begin()
                do {
                    try await body(c)
                } catch {
                    if !c.isBroken { _ = try? await c.rollback() }
                    throw error
                }
                do throws(MariaDBError) {
                    try await c.commit()
                    return nil
                } catch {
                    guard error.isConnectionBroken else { throw error }
                    return error
                }
            }
        }
        guard let lost else { return }
        guard try await twoPhase.learnDecision(decision.transferID, attempt: decision.attempt, commitPoint: node, after: lost) == .committed else {
            // This attempt is recorded aborted, the key is not spent: ``move`` may try again at once.
            throw LedgerError(.aborted, "\(decision.kind) \(decision.transferID) was rolled back (its commit on \(node) lost its answer, and the node says it did not commit)",
                              node: node, underlying: lost)
        }
    }
}
