import Foundation
import Logging
import MariaDB
import Sharding
import Synchronization

/// The two shard maps a ledger operation routes by.
public struct LedgerMaps: Sendable {
    public var accounts: RangeMap
    public var directory: RangeMap
    public init(accounts: RangeMap, directory: RangeMap) {
        self.accounts = accounts
        self.directory = directory
    }
}

/// An account as stored.
public struct Account: Sendable, Hashable {
    public var id: Int64
    public var customerName: String
    public var balance: Money
    /// The id of the accounts-map range holding the row (`balance_range`).
    public var range: String
    public var node: String
}

/// What a money movement did; a retry with the same key returns the first attempt's result.
public struct MovementResult: Sendable, Hashable {
    public var transferID: String
    /// Balances after the movement, by account id.
    public var balances: [Int64: Money]
    /// Whether this answer replays an earlier attempt with the same idempotency key.
    public var replayed: Bool
}

/// The bank's operations over the sharded nodes: accounts live on the node whose accounts-map range
/// holds their balance; a balance that leaves its node's range moves the account in the same atomic
/// transaction; a retried request (same idempotency key) never moves money twice.
///
/// Every operation plans from unlocked reads, then executes with each row locked and checked against
/// the plan (row version, fence); a plan gone stale (a concurrent change, a move, a range handed over)
/// writes nothing and is planned again.
public final class Bank: Sendable {
    let connections: NodeConnections
    let maps: @Sendable () throws -> LedgerMaps
    let nextAccountID: @Sendable () async throws -> Int64
    let refreshMaps: @Sendable () async throws -> Void
    let logger: Logger
    let twoPhase: TwoPhaseCommit
    let limit: BalanceLimit
    /// Where an account's row was last seen. A hint: always verified on the node.
    struct Location: Sendable {
        var node: String
        var range: String
    }
    private let locations = Mutex<[Int64: Location]>([:])

    /// - Parameters:
    ///   - maps: the current shard maps (from the metadata cache; called on every operation).
    ///   - refreshMaps: re-reads the maps from their source; called when a node answers that it does
    ///     not own a range (`wrong_shard`), before the operation is planned again.
    ///   - limit: the highest balance an account may hold; a movement past it is refused (`balance_limit`).
    ///   - hook: test-only: called at each step of two-phase commit.
    public init(connections: NodeConnections, maps: @escaping @Sendable () throws -> LedgerMaps,
                refreshMaps: @escaping @Sendable () async throws -> Void = {},
                nextAccountID: @escaping @Sendable () async throws -> Int64, limit: BalanceLimit = BalanceLimit(), logger: Logger,
                hook: (@Sendable (TwoPhaseStep) async throws -> Void)? = nil) {
        self.limit = limit
        self.connections = connections
        self.maps = maps
        self.refreshMaps = refreshMaps
        self.nextAccountID = nextAccountID
        self.logger = logger
        self.twoPhase = TwoPhaseCommit(connections: connections, logger: logger, hook: hook)
    }

    // MARK: reads

    /// The account with `id`, read from its node.
    public func account(_ id: Int64) async throws -> Account {
        let (row, node) = try await locate(id)
        return Account(id: id, customerName: row.customerName, balance: Money(minorUnits: row.balance), range: row.range, node: node)
    }

    /// Finds an account's row: the cached node, else the directory entry; follows moves.
    func locate(_ id: Int64) async throws -> (AccountSQL.Row, String) {
        let maps = try self.maps()
        for attempt in 0..<6 {
            if let hint = locations.withLock({ $0[id]?.node }),
               let row = try await connections.withConnection(hint, { try await AccountSQL.read($0, id) }) {
                return (row, hint)
            }
            let directoryNode = try maps.directory.range(for: DirectoryHash.key(forAccount: id)).node
            guard let entry = try await connections.withConnection(directoryNode, { try await AccountSQL.directory($0, id) }) else {
                throw LedgerError(.notFound, "account \(id) does not exist")
            }
            if let row = try await connections.withConnection(entry.node, { try await AccountSQL.read($0, id) }) {
                locations.withLock { $0[id] = Location(node: entry.node, range: row.range) }
                return (row, entry.node)
            }
            // Moving right now: the directory commits with the row, so look again shortly.
            locations.withLock { _ = $0.removeValue(forKey: id) }
            try await Task.sleep(for: .milliseconds(5 << attempt))
        }
        throw LedgerError(.aborted, "account \(id) kept moving while it was looked up; try again")
    }

    // MARK: writes

    /// Opens an account with an opening balance (≥ 0); its id comes from the allocator.
    public func openAccount(customerName: String, balance: Money, idempotencyKey: String) async throws -> Account {
        guard balance.minorUnits >= 0 else { throw LedgerError(.invalid, "an opening balance cannot be negative") }
        _ = try newBalance(of: nil, from: 0, adding: balance.minorUnits)
        let maps = try self.maps()
        let range = try maps.accounts.range(for: balance.minorUnits)
        let hash = requestHash("open", customerName, balance.description)
        // The same request again: its decision row is on the node its balance maps to.
        if let earlier = try await openedEarlier(key: idempotencyKey, hash: hash, node: range.node) { return earlier }
        let id = try await nextAccountID()
        let directory = try maps.directory.range(for: DirectoryHash.key(forAccount: id))
        let row = AccountSQL.Row(accountID: id, customerName: customerName, balance: balance.minorUnits, range: range.id, version: 1,
                                 createdAt: SQLDateTime(unixMicroseconds: Int64(Date().timeIntervalSince1970 * 1_000_000)))
        let key = idempotencyKey
        let attempt = AttemptID.random()
        var work: [String: [TwoPhaseCommit.Work]] = [:]
        work[range.node, default: []].append { c in
            try await AccountSQL.fence(c, map: "accounts", range: range.id, node: range.node)
            try await AccountSQL.insert(c, row)
            try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: balance.minorUnits, balanceAfter: balance.minorUnits)])
        }
        work[directory.node, default: []].append { c in
            try await AccountSQL.fence(c, map: "directory", range: directory.id, node: directory.node)
            try await AccountSQL.insertDirectory(c, id, directoryRange: directory.id, node: range.node, range: range.id)
        }
        let decision = DecisionRecord(transferID: key, kind: "open", toAccount: id, amountMinorUnits: balance.minorUnits,
                                      requestHash: hash, participants: work.keys.sorted(), attempt: attempt)
        do {
            try await commit(decision, work: work, commitPoint: range.node)
        } catch let error as LedgerError where error.code == .aborted {
            // A concurrent attempt with the same key won the decision row: answer as it did.
            if let earlier = try await openedEarlier(key: idempotencyKey, hash: hash, node: range.node) { return earlier }
            throw error
        }
        locations.withLock { $0[id] = Location(node: range.node, range: range.id) }
        return Account(id: id, customerName: customerName, balance: balance, range: range.id, node: range.node)
    }

    private func openedEarlier(key: String, hash: String, node: String) async throws -> Account? {
        guard let earlier = try await committedEarlier(key: key, hash: hash, on: node) else { return nil }
        guard let id = earlier.toAccount else {
            throw LedgerError(.idempotencyConflict, "idempotency key \(key) was already used for a different request")
        }
        return try await account(id)
    }

    /// The committed attempt of this key on `node`, if it is the same request; a committed
    /// different request is refused. Aborted attempts do not count: they changed nothing, and a
    /// retry with the same key may still commit.
    private func committedEarlier(key: String, hash: String, on node: String) async throws -> CommittedDecision? {
        guard let earlier = try await connections.withConnection(node, { try await DecisionRows.committed(key, on: $0) }) else { return nil }
        guard earlier.requestHash == hash else {
            throw LedgerError(.idempotencyConflict, "idempotency key \(key) was already used for a different request")
        }
        return earlier
    }

    /// `balance` + `delta` for `account` (nil: an opening balance), or the refusal: below zero is
    /// insufficient funds, above the ceiling a `balance_limit`. Never traps.
    private func newBalance(of account: Int64?, from balance: Int64, adding delta: Int64) throws -> Int64 {
        switch limit.apply(delta, to: balance) {
        case .balance(let after): return after
        case .belowZero:
            throw LedgerError(.insufficientFunds, "account \(account.map(String.init) ?? "") holds \(Money(minorUnits: balance)), less than \(Money(minorUnits: -delta))")
        case .aboveCeiling:
            let whose = account.map { "account \($0) would hold more than" } ?? "an account may not hold more than"
            throw LedgerError(.balanceLimit, "\(whose) the ledger's limit of \(limit.ceiling) per account; nothing was changed", node: nil)
        }
    }

    /// The decision row of a balance change.
    private func movementDecision(kind: String, key: String, changes: [(Int64, Int64)], hash: String, participants: [String]) -> DecisionRecord {
        DecisionRecord(transferID: key, kind: kind, fromAccount: changes.first { $0.1 < 0 }?.0, toAccount: changes.first { $0.1 > 0 }?.0,
                       amountMinorUnits: changes.map { $0.1.magnitude }.max().map { Int64(clamping: $0) } ?? 0, requestHash: hash, participants: participants)
    }

    /// Adds `amount` (> 0) to an account.
    public func deposit(_ id: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        guard amount.minorUnits > 0 else { throw LedgerError(.invalid, "a deposit must be more than 0.00") }
        return try await move(kind: "deposit", key: idempotencyKey, home: id, changes: [(id, amount.minorUnits)],
                              hash: requestHash("deposit", String(id), amount.description))
    }

    /// Takes `amount` (> 0) from an account; never below zero.
    public func withdraw(_ id: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        guard amount.minorUnits > 0 else { throw LedgerError(.invalid, "a withdrawal must be more than 0.00") }
        return try await move(kind: "withdraw", key: idempotencyKey, home: id, changes: [(id, -amount.minorUnits)],
                              hash: requestHash("withdraw", String(id), amount.description))
    }

    /// Moves `amount` (> 0) from one account to another, atomically across nodes.
    public func transfer(from: Int64, to: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        guard from != to else { throw LedgerError(.invalid, "a transfer needs two different accounts") }
        guard amount.minorUnits > 0 else { throw LedgerError(.invalid, "a transfer must be more than 0.00") }
        return try await move(kind: "transfer", key: idempotencyKey, home: from, changes: [(from, -amount.minorUnits), (to, amount.minorUnits)],
                              hash: requestHash("transfer", String(from), String(to), amount.description))
    }

    private func requestHash(_ parts: String...) -> String {
        // FNV-1a over the parts, twice with different seeds: a stable 128-bit fingerprint in hex.
        var a: UInt64 = 0xCBF2_9CE4_8422_2325
        var b: UInt64 = 0x8422_2325_CBF2_9CE4
        for byte in parts.joined(separator: "\u{1F}").utf8 {
            a = (a ^ UInt64(byte)) &* 0x100_0000_01B3
            b = (b ^ UInt64(byte)) &* 0x100_0000_01B3 ^ (b >> 29)
        }
        let hex = String(a, radix: 16) + String(b, radix: 16)
        return String(repeating: "0", count: max(0, 64 - hex.count)) + hex
    }

    /// Plans and runs a balance change of one or more accounts; retries stale plans.
    private func move(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String) async throws -> MovementResult {
        var lastError: (any Error)?
        var simple = true
        for attempt in 0..<8 {
            // Every account's place known (seen before, or read by the last attempt): try the
            // lock-first path, which cannot go stale under contention as a read-then-write plan can.
            let hints = locations.withLock { l in changes.reduce(into: [Int64: Location]()) { $0[$1.0] = l[$1.0] } }
            if simple && hints.count == Set(changes.map(\.0)).count {
                do {
                    if let result = try await lockFirst(kind: kind, key: key, home: home, changes: changes, hash: hash, hints: hints) { return result }
                    simple = false // a move, or an account that moved before: the general path's case
                } catch let error as LedgerError where error.code == .aborted && Self.worthRetrying(error.underlying) {
                    lastError = error // the general path below plans from fresh reads
                }
            }
            if let replay = try await previousOutcome(key: key, home: home, hash: hash, accounts: changes.map(\.0)) { return replay }
            do {
                return try await execute(kind: kind, key: key, home: home, changes: changes, hash: hash)
            } catch let error as LedgerError where error.code == .aborted && Self.worthRetrying(error.underlying) {
                lastError = error
                logger.debug("plan went stale; planning again", metadata: ["transfer_id": "\(key)", "attempt": "\(attempt)", "reason": "\(error.underlying.map { "\($0)" } ?? "")"])
                if (error.underlying as? PlanStale)?.stillThere != true {
                    locations.withLock { l in changes.forEach { l[$0.0] = nil } }
                }
                if (error.underlying as? PlanStale)?.wrongShard == true {
                    // A node refused a range the map gave it: the map is behind; read it again.
                    do { try await refreshMaps() } catch {
                        logger.warning("could not refresh the shard maps after wrong_shard", metadata: ["error": "\(error)"])
                    }
                }
                try await Task.sleep(for: .milliseconds(Int64(2 << attempt)))
            }
        }
        throw LedgerError(.aborted, "the accounts kept changing while \(kind) \(key) was planned; nothing was done, try again", underlying: lastError)
    }

    /// The common case, every decision made from locked rows and no read before the transaction: each
    /// account where it was last seen, no balance leaving its node, a home account that never lived
    /// elsewhere. One node: a local transaction of five statements, the decision row first. Several:
    /// two-phase commit whose branches lock first; the commit point (the home account's node) writes
    /// the decision row, fenced, after the others are prepared.
    /// Returns nil — having written nothing — when the case is not this simple; the general path
    /// takes over.
    private func lockFirst(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String,
                           hints: [Int64: Location]) async throws -> MovementResult? {
        let maps = try self.maps()
        guard let commitPoint = hints[home]?.node else { return nil }
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
                try await twoPhase.run(decision: decision, branches: branches, commitPoint: commitPoint) { c in
                    try await self.insertDecision(decision, ranges: pointRanges.withLock { $0 }, on: c)
                }
            }
        } catch {
            var cause: any Error = error
            if let e = error as? LedgerError, e.code == .aborted, let underlying = e.underlying { cause = underlying }
            if cause is NotSimple { return nil }
            if cause is AlreadyDecided { return try await previousOutcome(key: key, home: home, hash: hash, accounts: changes.map(\.0)) }
            if let e = cause as? LedgerError, e.code == .insufficientFunds || e.code == .balanceLimit { throw e }
            if error is LedgerError || error is CoordinatorCrash { throw error }
            throw LedgerError(.aborted, "\(kind) \(key) was rolled back: \(error)", node: commitPoint, underlying: error)
        }
        let seen = written.withLock { $0 }
        locations.withLock { l in l.merge(seen.mapValues(\.location)) { $1 } }
        return MovementResult(transferID: key, balances: seen.mapValues(\.balance), replayed: false)
    }

    /// Not the simple case (see ``lockFirst``); nothing is written.
    private struct NotSimple: Error {}
    /// Another attempt of this key committed already: answer as it did.
    private struct AlreadyDecided: Error {}

    /// The decision row of a lock-first attempt, fenced (see ``DecisionRows/insertFenced(_:ranges:on:)``):
    /// a committed attempt of the key → ``AlreadyDecided``; a range not active here → ``NotSimple``.
    private func insertDecision(_ decision: DecisionRecord, ranges: [String], on c: MariaDBConnection) async throws {
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
    private func lockedPart(_ c: MariaDBConnection, node: String, key: String, attempt: AttemptID, changes: [(Int64, Int64)], home: Int64,
                            decision: DecisionRecord?, ranges hinted: [String], maps: LedgerMaps, deferFence: Bool = false) async throws
        -> (written: [Int64: (location: Location, balance: Money)], unfenced: [String]) {
        var fenced: Set<String> = []
        if let decision {
            try await insertDecision(decision, ranges: hinted, on: c)
            fenced = Set(hinted)
        }
        let ids = changes.map(\.0).sorted()
        let rows = try await c.execute("SELECT \(AccountSQL.columns) FROM account_info WHERE account_id IN (\(ids.map { _ in "?" }.joined(separator: ", "))) ORDER BY account_id FOR UPDATE",
                                       ids.map(MariaDBValue.int)).rows.map(AccountSQL.decode)
        guard rows.count == ids.count else { throw NotSimple() }
        if let homeRow = rows.first(where: { $0.accountID == home }), !homeRow.previousNodes.isEmpty { throw NotSimple() }
        var updates: [(id: Int64, balance: Int64, range: String)] = []
        var postings: [AccountSQL.Posting] = []
        var needed: Set<String> = []
        for row in rows {
            let delta = changes.first { $0.0 == row.accountID }!.1
            let after = try newBalance(of: row.accountID, from: row.balance, adding: delta)
            let target = try maps.accounts.range(for: after)
            guard target.node == node else { throw NotSimple() }
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
        try await AccountSQL.update(c, updates)
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
    private func localTransaction(on node: String, decision: DecisionRecord, _ body: @escaping @Sendable (MariaDBConnection) async throws -> Void) async throws {
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

    static func worthRetrying(_ error: (any Error)?) -> Bool {
        if error is PlanStale || error is AlreadyDecided { return true } // plan again, or replay
        if let e = error as? MariaDBError { return e.isRetryable || e.errorNumber == 1062 }
        if let e = error as? LedgerError { return worthRetrying(e.underlying) }
        return false
    }

    /// A committed earlier attempt with this key, looked up on every node the home account has
    /// lived on (its decision is on the node the home account was on then).
    private func previousOutcome(key: String, home: Int64, hash: String, accounts: [Int64]) async throws -> MovementResult? {
        let homeNodes = try await nodesOf(home)
        guard !homeNodes.isEmpty else { throw LedgerError(.notFound, "account \(home) does not exist") }
        for node in homeNodes {
            guard try await committedEarlier(key: key, hash: hash, on: node) != nil else { continue }
            // The balances it left, from its journal entries wherever the accounts lived.
            var balances: [Int64: Money] = [:]
            for account in accounts {
                for n in try await nodesOf(account) where balances[account] == nil {
                    let j = try await connections.withConnection(n) { c in
                        try await c.execute("SELECT balance_after FROM journal WHERE transfer_id = ? AND account_id = ?",
                                            [.string(key), .int(account)]).rows.first
                    }
                    if let j { balances[account] = Money(minorUnits: try j.minorUnits("balance_after")) }
                }
            }
            return MovementResult(transferID: key, balances: balances, replayed: true)
        }
        return nil
    }

    func nodesOf(_ account: Int64) async throws -> [String] {
        let maps = try self.maps()
        let directoryNode = try maps.directory.range(for: DirectoryHash.key(forAccount: account)).node
        guard let entry = try await connections.withConnection(directoryNode, { try await AccountSQL.directory($0, account) }) else { return [] }
        return [entry.node] + entry.previousNodes
    }

    private func execute(kind: String, key: String, home: Int64, changes: [(Int64, Int64)], hash: String) async throws -> MovementResult {
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
            let (row, node) = try await locate(id)
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
            if target.node == node {
                add(node) { c in
                    try await AccountSQL.fence(c, map: "accounts", range: source, node: node)
                    if target.id != source { try await AccountSQL.fence(c, map: "accounts", range: target.id, node: node) }
                    // The row may have changed since it was read: what counts is that the plan's
                    // shape (ranges fenced, the row staying here) holds for the balance now locked.
                    let locked = try await AccountSQL.lock(c, id, node: node)
                    try await noEarlierCommit()
                    // Refusals (funds, ceiling) are the plan's to make: a changed row plans again.
                    guard locked.range == source, let now = try? self.newBalance(of: id, from: locked.balance, adding: delta),
                          try maps.accounts.range(for: now).id == target.id else {
                        throw PlanStale(reason: "account \(id) changed on \(node) since it was read", stillThere: true)
                    }
                    try await AccountSQL.update(c, id, balance: now, range: target.id)
                    try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: delta, balanceAfter: now)])
                    settled.withLock { $0[id] = Money(minorUnits: now) }
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
                    try await AccountSQL.fence(c, map: "accounts", range: target.id, node: target.node)
                    try await AccountSQL.insert(c, movedRow)
                    try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: delta, balanceAfter: after)])
                }
                add(directory.node) { c in
                    try await AccountSQL.fence(c, map: "directory", range: directory.id, node: directory.node)
                    try await AccountSQL.moveDirectory(c, id, from: node, to: target.node, range: target.id)
                }
            }
        }
        var decision = movementDecision(kind: kind, key: key, changes: changes, hash: hash, participants: work.keys.sorted())
        decision.attempt = attempt
        try await commit(decision, work: work, commitPoint: homeNode)
        return MovementResult(transferID: key, balances: moved.merging(settled.withLock { $0 }) { $1 }, replayed: false)
    }

    /// One node: a local transaction with the decision row. Several: two-phase commit whose branches
    /// visit the nodes in one global order (by node id), each node's locks taken in one visit. Two
    /// transactions then cannot wait on each other across nodes: the one holding locks on the lower
    /// node never waits on a lower node. Waits within a node are InnoDB's to detect (1213, retried).
    /// Ordering by account id instead leaves a move's insert on its target and its directory update
    /// out of order, and such cross-node cycles end only at the lock-wait timeout.
    private func commit(_ decision: DecisionRecord, work: [String: [TwoPhaseCommit.Work]], commitPoint: String) async throws {
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
            } catch let error as LedgerError {
                throw error // a down node, or a lost COMMIT answer settled (or not) by asking the node
            } catch {
                throw LedgerError(.aborted, "\(decision.kind) \(decision.transferID) was rolled back: \(error)", underlying: error)
            }
            return
        }
        try await twoPhase.run(decision: decision, branches: branches, commitPoint: commitPoint)
    }
}
