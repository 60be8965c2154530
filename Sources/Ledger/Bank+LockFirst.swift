import Foundation
import MariaDB
import Sharding
import Synchronization

// The lock-first path: accounts seen before, no read before the transaction, every decision made
// from locked rows.
extension Bank {
    /// The common case, every decision made from locked rows and no read before the transaction: each
    /// account where it was last seen, no balance leaving its node, a home account that never lived
    /// elsewhere. One node: a local transaction of five statements, the rows locked, then the decision
    /// row carrying the fence. Several: two-phase commit whose branches lock first and fence in their
    /// balance update; the commit point (the home account's node) writes the decision row after the
    /// others are prepared.
    /// Answers ``Try/notSimple`` — having written nothing — when the case is not this simple; the
    /// general path takes over.
    func lockFirst(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String,
                   hints: [Int64: Location], claimed: ClaimMemo) async throws -> Try {
        let maps = try self.maps()
        guard let commitPoint = hints[home]?.node else { return .notSimple }
        // One branch per node, visited in the global node order (see ``commit``); rows in ascending id.
        var byNode: [String: [(Int64, Int64)]] = [:]
        for change in changes.sorted(by: { $0.0 < $1.0 }) { byNode[hints[change.0]!.node, default: []].append(change) }
        let order = byNode.keys.sorted()
        let decision = movementDecision(kind: kind, key: key, changes: changes, hash: hash, participants: order)
        let written = Mutex<[Int64: (location: Location, balance: Money)]>([:])
        let claim = try KeyClaim(kind: kind, key: key, home: home, requestHash: hash, maps: maps)

        do {
            // The key is claimed in the transaction of its node when the try writes there, else first,
            // in a transaction of its own.
            if byNode[claim.node] == nil { try await claimAlone(claim, memo: claimed) }
            if order.count == 1 {
                try await localTransaction(on: commitPoint, decision: decision) { c in
                    if claim.node == commitPoint, !claimed.isCommitted { try await KeyClaims.claim(claim, on: c) }
                    let part = try await self.lockedPart(c, node: commitPoint, key: key, attempt: decision.attempt, changes: changes, home: home,
                                                         decision: decision, maps: maps)
                    written.withLock { $0.merge(part) { $1 } }
                }
            } else {
                let branches = order.map { node in
                    let part = byNode[node]!
                    return TwoPhaseCommit.Branch(node: node) { c in
                        if claim.node == node, !claimed.isCommitted { try await KeyClaims.claim(claim, on: c) }
                        let done = try await self.lockedPart(c, node: node, key: key, attempt: decision.attempt, changes: part, home: home,
                                                             decision: nil, maps: maps)
                        written.withLock { $0.merge(done) { $1 } }
                    }
                }
                // Every branch fenced its ranges in its balance update; the commit point's decision row
                // is the statement before its COMMIT.
                let outcome = try await twoPhase.run(decision: decision, branches: branches, commitPoint: commitPoint) { c in
                    try await self.insertDecision(decision, spans: [], on: c)
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

    /// Claims a movement's key (``KeyClaims/claim(_:on:autocommit:)``) on the key's node, on its own
    /// (one autocommitted statement unless the key's range is captured for a move): for a try that
    /// writes nothing there. Before the try's own transaction, so that a key of another request
    /// changes nothing.
    func claimAlone(_ claim: KeyClaim, memo: ClaimMemo) async throws {
        guard !memo.isCommitted else { return }
        try await connections.withConnection(claim.node) { c in
            try await withTaskExecutorPreference(c.executor) {
                _ = try await KeyClaims.claim(claim, on: c, autocommit: true)
            }
        }
        memo.markCommitted()
    }

    /// The decision row of a lock-first attempt, fenced by bounds when `spans` names any (see
    /// ``DecisionRows/insertFenced(_:within:on:)``): a committed attempt of the key →
    /// ``AlreadyDecided``; a range not active here, or not covering its new balances → ``NotSimple``.
    func insertDecision(_ decision: DecisionRecord, spans: [AccountSQL.Span], on c: MariaDBConnection) async throws {
        let inserted: Bool
        do throws(MariaDBError) {
            if spans.isEmpty {
                try await DecisionRows.insert(decision, state: .committed, on: c)
                inserted = true
            } else {
                inserted = try await DecisionRows.insertFenced(decision, within: spans, on: c)
            }
        } catch {
            if error.errorNumber == 1062 { throw AlreadyDecided() }
            throw error
        }
        guard inserted else { throw NotSimple() }
    }

    /// One node's part of ``lockFirst`` inside its (local or XA) transaction: the rows locked in
    /// ascending id; with `decision`, the decision row — the idempotency check and the fence by bounds
    /// of the ranges involved (the rows' own: active here, the new balances within the bounds the node
    /// holds, for the map may be behind a split), in one statement; then the new balances in one
    /// update and the postings in one insert. Without a decision row, the balance update carries the
    /// fence. A shared lock taken late protects as well as one taken first while it is held — in a
    /// local transaction to its COMMIT; in an XA branch only to its PREPARE (see "Ranges that split
    /// and move" in docs/LEDGER.md).
    func lockedPart(_ c: MariaDBConnection, node: String, key: String, attempt: AttemptID, changes: [(Int64, Int64)], home: Int64,
                    decision: DecisionRecord?, maps: LedgerMaps) async throws
        -> [Int64: (location: Location, balance: Money)] {
        let ids = changes.map(\.0).sorted()
        let rows = try await AccountSQL.lock(c, ids)
        guard rows.count == ids.count else { throw NotSimple() }
        if let homeRow = rows.first(where: { $0.accountID == home }), !homeRow.previousNodes.isEmpty { throw NotSimple() }
        var updates: [(id: Int64, balance: Int64, range: String)] = []
        var postings: [AccountSQL.Posting] = []
        for row in rows {
            let delta = changes.first { $0.0 == row.accountID }!.1
            let after = try newBalance(of: row.accountID, from: row.balance, adding: delta)
            let target = try maps.accounts.range(for: after)
            // Another range, even on this node, means the directory entry changes too: the general path's.
            guard target.node == node, target.id == row.range else { throw NotSimple() }
            updates.append((row.accountID, after, target.id))
            postings.append(.init(account: row.accountID, amount: delta, balanceAfter: after))
        }
        if let decision {
            try await insertDecision(decision, spans: AccountSQL.spans(updates), on: c)
            guard try await AccountSQL.update(c, updates, fenced: false) else { throw NotSimple() }
        } else {
            guard try await AccountSQL.update(c, updates, fenced: true) else { throw NotSimple() }
        }
        try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: postings)
        return Dictionary(uniqueKeysWithValues: updates.map { ($0.id, (Location(node: node, range: $0.range), Money(minorUnits: $0.balance))) })
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
