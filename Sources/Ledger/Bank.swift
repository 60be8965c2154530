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
/// Where the work is: `Bank+LockFirst.swift` (the common case: no read before the transaction),
/// `Bank+General.swift` (plan from reads, then execute with every row locked and checked: moves,
/// accounts that lived elsewhere), `Bank+Retry.swift` (which path, and what a failed try means, after
/// ``MovementRetryPolicy``), `Bank+Lookups.swift` (finding rows and earlier decisions) and
/// `Queries.swift` (listings, statements, transfer lookups).
public final class Bank: Sendable {
    let connections: NodeConnections
    let maps: @Sendable () throws -> LedgerMaps
    let nextAccountID: @Sendable () async throws -> Int64
    let refreshMaps: @Sendable () async throws -> Void
    let logger: Logger
    let twoPhase: TwoPhaseCommit
    let limit: BalanceLimit
    /// How long an operation waits for a range frozen by a move (see ``MoveWait``).
    let moveWait: Duration
    /// Where an account's row was last seen. A hint: always verified on the node.
    struct Location: Sendable {
        var node: String
        var range: String
    }
    let locations = Mutex<[Int64: Location]>([:])

    /// - Parameters:
    ///   - maps: the current shard maps (from the metadata cache; called on every operation).
    ///   - refreshMaps: re-reads the maps from their source; called when a node answers that it does
    ///     not own a range (`wrong_shard`), before the operation is planned again.
    ///   - limit: the highest balance an account may hold; a movement past it is refused (`balance_limit`).
    ///   - moveWait: how long an operation waits for a range frozen by a move to switch nodes before
    ///     it answers `range_moving`.
    public convenience init(connections: NodeConnections, maps: @escaping @Sendable () throws -> LedgerMaps,
                            refreshMaps: @escaping @Sendable () async throws -> Void = {},
                            nextAccountID: @escaping @Sendable () async throws -> Int64, limit: BalanceLimit = BalanceLimit(),
                            moveWait: Duration = .seconds(3), logger: Logger) {
        self.init(connections: connections, maps: maps, refreshMaps: refreshMaps, nextAccountID: nextAccountID, limit: limit,
                  moveWait: moveWait, logger: logger, faults: nil)
    }

    /// A bank whose two-phase commits stop at a test's crash points (`faults`).
    @_spi(FaultInjection) public init(connections: NodeConnections, maps: @escaping @Sendable () throws -> LedgerMaps,
                                      refreshMaps: @escaping @Sendable () async throws -> Void = {},
                                      nextAccountID: @escaping @Sendable () async throws -> Int64, limit: BalanceLimit = BalanceLimit(),
                                      moveWait: Duration = .seconds(3), logger: Logger, faults: FaultInjector?) {
        self.limit = limit
        self.moveWait = moveWait
        self.connections = connections
        self.maps = maps
        self.refreshMaps = refreshMaps
        self.nextAccountID = nextAccountID
        self.logger = logger
        self.twoPhase = TwoPhaseCommit(connections: connections, logger: logger, faults: faults)
    }

    // MARK: reads

    /// The account with `id`, read from its node.
    public func account(_ id: Int64) async throws -> Account {
        let (row, node) = try await locate(id)
        return Account(id: id, customerName: row.customerName, balance: Money(minorUnits: row.balance), range: row.range, node: node)
    }

    // MARK: writes

    /// Opens an account with an opening balance (≥ 0); its id comes from the allocator.
    ///
    /// The decision row lives on the node owning the idempotency key's directory range
    /// (``DirectoryHash/key(forIdempotencyKey:)``), a participant of every opening: the key's earlier
    /// use is found there whatever balance, and so whatever node, the request names. (Movements keep
    /// their decision on the home account's node, where the row they lock already is, and claim
    /// their key on the key's node: see ``KeyClaim``.)
    public func openAccount(customerName: String, balance: Money, idempotencyKey: String) async throws -> Account {
        try Self.validate(key: idempotencyKey)
        guard balance.minorUnits >= 0 else { throw LedgerError(.invalid, "an opening balance cannot be negative") }
        _ = try newBalance(of: nil, from: 0, adding: balance.minorUnits)
        let hash = requestHash("open", customerName, balance.description)
        // Tries as a movement does (``MovementRetryPolicy``): a stale map is read again, a range
        // frozen for a move is waited for, and each try looks for an earlier commit of the key first.
        var policy = MovementRetryPolicy()
        var moving = MoveWait(limit: moveWait)
        var lastCause: (any Error)?
        var id: Int64?
        var action = policy.start(allLocationsKnown: false)
        let began = ContinuousClock.now
        while true {
            switch action {
            case .lockFirst, .lookForEarlierCommit:
                let maps = try self.maps()
                let range = try maps.accounts.range(for: balance.minorUnits)
                let keyRange = try maps.directory.range(for: DirectoryHash.key(forIdempotencyKey: idempotencyKey))
                // The same request again. Openings before the key's node held their decisions kept them
                // on the balance's node: looked at too.
                if let earlier = try await openedEarlier(key: idempotencyKey, hash: hash, nodes: [keyRange.node, range.node],
                                                         request: (customerName, balance, range)) { return earlier }
                action = policy.noEarlierCommit()
            case .plan:
                let maps = try self.maps()
                moving.planned(maps: maps)
                if id == nil { id = try await nextAccountID() }
                switch try await openOnce(id: id!, customerName: customerName, balance: balance, key: idempotencyKey, hash: hash, maps: maps) {
                case .done(let account): return account
                case .stale(let stale, let cause):
                    lastCause = cause
                    action = policy.planStale(stale, elapsed: .now - began)
                }
            case .backOff(let pause, _, let refresh):
                if refresh {
                    do { try await refreshMaps() } catch {
                        logger.warning("could not refresh the shard maps after wrong_shard", metadata: ["error": "\(error)"])
                    }
                }
                try await Task.sleep(for: MovementRetryPolicy.jittered(pause))
                action = policy.backedOff(allLocationsKnown: false)
            case .awaitMapChange:
                if moving.shouldRefresh { try? await refreshMaps() }
                try await moving.wait(maps: maps, what: "opening account \(idempotencyKey)", cause: lastCause)
                action = policy.mapsChanged()
            case .giveUp:
                throw LedgerError(.aborted, "opening the account was rolled back: \(lastCause.map { "\($0)" } ?? "the maps kept changing"); nothing was changed, try again",
                                  underlying: lastCause)
            }
        }
    }

    private enum OpenTry {
        case done(Account)
        /// Nothing written; the next try first looks for a concurrent attempt of the key that committed.
        case stale(MovementRetryPolicy.Stale, cause: any Error)
    }

    /// One try of an opening: the row and its posting on the balance's node, the directory entry on
    /// its node, and the decision on the key's node, in one atomic transaction.
    private func openOnce(id: Int64, customerName: String, balance: Money, key: String, hash: String, maps: LedgerMaps) async throws -> OpenTry {
        let range = try maps.accounts.range(for: balance.minorUnits)
        let directory = try maps.directory.range(for: DirectoryHash.key(forAccount: id))
        let row = AccountSQL.Row(accountID: id, customerName: customerName, balance: balance.minorUnits, range: range.id, version: 1,
                                 createdAt: SQLDateTime(unixMicroseconds: Int64(Date().timeIntervalSince1970 * 1_000_000)))
        let attempt = AttemptID.random()
        var work: [String: [TwoPhaseCommit.Work]] = [:]
        work[range.node, default: []].append { c in
            try await AccountSQL.fence(c, map: "accounts", range: range.id, node: range.node, key: balance.minorUnits)
            try await AccountSQL.insert(c, row)
            try await AccountSQL.journal(c, transferID: key, attempt: attempt, postings: [.init(account: id, amount: balance.minorUnits, balanceAfter: balance.minorUnits)])
        }
        work[directory.node, default: []].append { c in
            try await AccountSQL.fence(c, map: "directory", range: directory.id, node: directory.node, key: DirectoryHash.key(forAccount: id))
            try await AccountSQL.insertDirectory(c, id, directoryRange: directory.id, node: range.node, range: range.id)
        }
        // The key is claimed on its node, as a movement claims its key, so neither reuses the
        // other's; the claim is fenced there (a stale map is refused, as for any write) and, under
        // a move's capture, notes the opening in the move's log.
        let claim = try KeyClaim(openingOf: id, key: key, requestHash: hash, maps: maps)
        work[claim.node, default: []].append { c in try await KeyClaims.claim(claim, on: c) }
        let decision = DecisionRecord(transferID: key, kind: "open", toAccount: id, amountMinorUnits: balance.minorUnits,
                                      requestHash: hash, participants: work.keys.sorted(), attempt: attempt)
        guard let cause = try await commit(decision, work: work, commitPoint: claim.node) else {
            locations.withLock { $0[id] = Location(node: range.node, range: range.id) }
            return .done(Account(id: id, customerName: customerName, balance: balance, range: range.id, node: range.node))
        }
        // Nothing of this attempt was written and the key is not spent. A collision (1062) may be a
        // concurrent attempt of the key that committed: the next try looks for it first.
        if case .stale(let stale, let cause) = try classify(cause) { return .stale(stale, cause: cause) }
        return .stale(.init(), cause: cause)
    }

    /// The account an earlier opening with this key made, as it is now — or, while that opening's
    /// directory entry is still in doubt (its branch prepared, the resolver about to commit it), as
    /// the opening left it: the first answer, never "no such account".
    func openedEarlier(key: String, hash: String, nodes: [String],
                       request: (customerName: String, balance: Money, range: ShardRange)) async throws -> Account? {
        for node in Set(nodes).sorted() {
            guard let earlier = try await committedEarlier(key: key, hash: hash, on: node) else { continue }
            guard let id = earlier.toAccount else {
                throw LedgerError(.idempotencyConflict, "idempotency key \(key) was already used for a different request")
            }
            do {
                return try await account(id)
            } catch let error as LedgerError where error.code == .notFound {
                return Account(id: id, customerName: request.customerName, balance: request.balance, range: request.range.id, node: request.range.node)
            }
        }
        return nil
    }

    /// Keys are 1–64 bytes (the XA name and the decision row's key); anything else is refused up
    /// front — never a try that could only fail.
    static func validate(key: String) throws {
        guard (1...64).contains(key.utf8.count) else {
            throw LedgerError(.invalid, "an idempotency key has 1 to 64 bytes, not \(key.utf8.count)")
        }
    }

    /// The committed attempt of this key on `node`, if it is the same request; a committed
    /// different request is refused. Aborted attempts do not count: they changed nothing, and a
    /// retry with the same key may still commit.
    func committedEarlier(key: String, hash: String, on node: String) async throws -> CommittedDecision? {
        guard let earlier = try await connections.withConnection(node, { try await DecisionRows.committed(key, on: $0) }) else { return nil }
        guard earlier.requestHash == hash else {
            throw LedgerError(.idempotencyConflict, "idempotency key \(key) was already used for a different request")
        }
        return earlier
    }

    /// `balance` + `delta` for `account` (nil: an opening balance), or the refusal: below zero is
    /// insufficient funds, above the ceiling a `balance_limit`. Never traps.
    func newBalance(of account: Int64?, from balance: Int64, adding delta: Int64) throws -> Int64 {
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
    func movementDecision(kind: String, key: String, changes: [(Int64, Int64)], hash: String, participants: [String]) -> DecisionRecord {
        DecisionRecord(transferID: key, kind: kind, fromAccount: changes.first { $0.1 < 0 }?.0, toAccount: changes.first { $0.1 > 0 }?.0,
                       amountMinorUnits: changes.map { $0.1.magnitude }.max().map { Int64(clamping: $0) } ?? 0, requestHash: hash, participants: participants)
    }

    /// Adds `amount` (> 0) to an account.
    public func deposit(_ id: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        try Self.validate(key: idempotencyKey)
        guard amount.minorUnits > 0 else { throw LedgerError(.invalid, "a deposit must be more than 0.00") }
        return try await move(kind: "deposit", key: idempotencyKey, home: id, changes: [(id, amount.minorUnits)],
                              hash: requestHash("deposit", String(id), amount.description))
    }

    /// Takes `amount` (> 0) from an account; never below zero.
    public func withdraw(_ id: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        try Self.validate(key: idempotencyKey)
        guard amount.minorUnits > 0 else { throw LedgerError(.invalid, "a withdrawal must be more than 0.00") }
        return try await move(kind: "withdraw", key: idempotencyKey, home: id, changes: [(id, -amount.minorUnits)],
                              hash: requestHash("withdraw", String(id), amount.description))
    }

    /// Moves `amount` (> 0) from one account to another, atomically across nodes.
    public func transfer(from: Int64, to: Int64, amount: Money, idempotencyKey: String) async throws -> MovementResult {
        try Self.validate(key: idempotencyKey)
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

}
