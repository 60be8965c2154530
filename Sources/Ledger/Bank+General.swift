import MariaDB
import Sharding
import Synchronization

// The general path: plan from unlocked reads, then execute with every row locked and checked against
// the plan — balances that leave their node (the row, its range and its directory entry move in the
// same transaction) and accounts that lived elsewhere.
extension Bank {
    func execute(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String, claimed: ClaimMemo) async throws -> Try {
        // Rows first: a lookup that finds the maps behind refreshes them, and the plan uses the newest.
        var located: [Int64: (row: AccountSQL.Row, node: String)] = [:]
        for (id, _) in changes.sorted(by: { $0.0 < $1.0 }) { located[id] = try await locate(id) }
        let maps = try self.maps()
        let attempt = AttemptID.random()
        var work: [String: [TwoPhaseCommit.Work]] = [:]
        // The balances left: a moved row's from the plan (its version must match), the others' from
        // the rows locked at execution.
        var moved: [Int64: Money] = [:]
        let settled = Mutex<[Int64: Money]>([:])
        var homeNode = ""
        func add(_ node: String, _ w: @escaping TwoPhaseCommit.Work) {
            work[node, default: []].append(w)
        }
        // Ascending account ids within each node's part; the nodes are visited in ``commit``'s order.
        for (id, delta) in changes.sorted(by: { $0.0 < $1.0 }) {
            let (row, node) = located[id]!
            let after = try newBalance(of: id, from: row.balance, adding: delta)
            if id == home { homeNode = node }
            // The home account lived elsewhere: another attempt of this key may have committed there
            // after ``previousOutcome`` looked. Its decision needed the home row locked there, so once
            // this attempt holds the row here, a look at those nodes is final.
            let lookBack = id == home ? row.previousNodes.split(separator: ",").map(String.init).filter { $0 != node } : []
            @Sendable func noEarlierCommit() async throws {
                for earlier in lookBack where try await connections.withConnection(earlier, { try await DecisionRows.committed(key, on: $0) }) != nil {
                    throw AlreadyDecided()
                }
            }
            let target = try maps.accounts.range(for: after)
            let source = row.range
            // The ranges on the account's node: its directory entry may name any of them for a while after a split.
            let siblings = maps.accounts.ranges.filter { $0.node == node }.map(\.id)
            if target.node == node {
                add(node) { c in
                    let sourceBounds = try await AccountSQL.fence(c, map: "accounts", range: source, node: node)
                    let targetBounds = target.id == source ? sourceBounds : try await AccountSQL.fence(c, map: "accounts", range: target.id, node: node)
                    // The row may have changed since it was read: what counts is that the plan's
                    // shape (ranges fenced, the row staying here) holds for the balance now locked.
                    let locked = try await AccountSQL.lock(c, id, node: node)
                    try await noEarlierCommit()
                    // Refusals (funds, ceiling) are the plan's to make: a changed row plans again.
                    guard locked.range == source, let now = try? self.newBalance(of: id, from: locked.balance, adding: delta),
                          try maps.accounts.range(for: now).id == target.id else {
                        throw PlanStale(reason: "account \(id) changed on \(node) since it was read", stillThere: true)
                    }
                    // The router's map may be behind a split: the node's bounds decide.
                    try AccountSQL.check(now, in: targetBounds, map: "accounts", range: target.id, node: node)
                    try await AccountSQL.update(c, id, balance: now, range: target.id)
                    try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: delta, balanceAfter: now)])
                    settled.withLock { $0[id] = Money(minorUnits: now) }
                }
                if target.id != source {
                    // The directory entry names the range (its node is the map's owner of it).
                    let directory = try maps.directory.range(for: DirectoryHash.key(forAccount: id))
                    add(directory.node) { c in
                        try await AccountSQL.fence(c, map: "directory", range: directory.id, node: directory.node, key: DirectoryHash.key(forAccount: id))
                        try await AccountSQL.relabelDirectory(c, id, from: source, sameNode: siblings, to: target.id)
                    }
                }
            } else {
                // The balance leaves this node's ranges: the row, its range and its directory entry move together.
                moved[id] = Money(minorUnits: after)
                let directory = try maps.directory.range(for: DirectoryHash.key(forAccount: id))
                add(node) { c in
                    try await AccountSQL.fence(c, map: "accounts", range: source, node: node)
                    try await AccountSQL.lock(c, row, node: node)
                    try await noEarlierCommit()
                    try await AccountSQL.delete(c, id)
                }
                var moved = row
                moved.balance = after
                moved.range = target.id
                moved.version = row.version + 1
                let earlier = row.previousNodes.split(separator: ",").map(String.init)
                moved.previousNodes = (earlier.contains(node) ? earlier : earlier + [node]).joined(separator: ",")
                let movedRow = moved
                add(target.node) { c in
                    try await AccountSQL.fence(c, map: "accounts", range: target.id, node: target.node, key: after)
                    try await AccountSQL.insertArriving(c, movedRow, node: target.node)
                    try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: delta, balanceAfter: after)])
                }
                add(directory.node) { c in
                    try await AccountSQL.fence(c, map: "directory", range: directory.id, node: directory.node, key: DirectoryHash.key(forAccount: id))
                    try await AccountSQL.moveDirectory(c, id, from: node, fromRange: source, sameNode: siblings, to: target.node, range: target.id)
                }
            }
        }
        // The key is claimed on its node: in the try's transaction there, or first, alone.
        let claim = try KeyClaim(kind: kind, key: key, home: home, requestHash: hash, maps: maps)
        if work[claim.node] != nil {
            if !claimed.isCommitted { work[claim.node]!.insert({ c in try await KeyClaims.claim(claim, on: c) }, at: 0) }
        } else {
            do { try await claimAlone(claim, memo: claimed) } catch { return try classify(error) }
        }
        var decision = movementDecision(kind: kind, key: key, changes: changes, hash: hash, participants: work.keys.sorted())
        decision.attempt = attempt
        if let cause = try await commit(decision, work: work, commitPoint: homeNode) {
            return try classify(cause)
        }
        return .done(MovementResult(transferID: key, balances: moved.merging(settled.withLock { $0 }) { $1 }, replayed: false))
    }

    /// One node: a local transaction with the decision row. Several: two-phase commit whose branches
    /// visit the nodes in one global order (by node id), each node's locks taken in one visit. Two
    /// transactions then cannot wait on each other across nodes: the one holding locks on the lower
    /// node never waits on a lower node. Waits within a node are InnoDB's to detect (1213, retried).
    /// Ordering by account id instead leaves a move's insert on its target and its directory update
    /// out of order, and such cross-node cycles end only at the lock-wait timeout.
    /// Returns nil when committed, else why everything was rolled back (nothing of this attempt is
    /// committed, and nothing will be); throws when the outcome is unknown (or at a test's crash point).
    func commit(_ decision: DecisionRecord, work: [String: [TwoPhaseCommit.Work]], commitPoint: String) async throws -> (any Error)? {
        let branches = work.keys.sorted().map { node in
            let steps = work[node] ?? []
            return TwoPhaseCommit.Branch(node: node) { c in for step in steps { try await step(c) } }
        }
        if branches.count == 1 {
            do {
                try await localTransaction(on: commitPoint, decision: decision) { c in
                    try await branches[0].work(c)
                    try await DecisionRows.insert(decision, state: .committed, on: c)
                }
                return nil
            } catch let error as LedgerError where error.code == .outcomeUnknown {
                throw error
            } catch {
                return error
            }
        }
        switch try await twoPhase.run(decision: decision, branches: branches, commitPoint: commitPoint) {
        case .committed: return nil
        case .rolledBack(let cause): return cause
        case .unknown(let error): throw error
        }
    }
}
