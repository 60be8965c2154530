import Foundation
import MariaDB
import Sharding
import Synchronization

/// Where a request's idempotency key is claimed: the node owning the key's directory range
/// (``DirectoryHash/key(forIdempotencyKey:)``), the node an opening keeps its decision on.
///
/// A movement keeps its decision on its home account's node; with its key claimed on one node
/// cluster-wide, the same key used for a request with another home account — on another node,
/// where no decision row of the first is — is found and refused, and a transfer id names at most
/// one request.
struct KeyClaim: Sendable {
    var key: String
    var kind: String
    /// The movement's home account; nil for an opening.
    var home: Int64?
    /// The account a move's log line names: the movement's home account, or the opening's new one.
    var noted: Int64
    var requestHash: String
    /// The key's directory hash, and the directory range holding it, whose node holds the claim.
    var hashKey: Int64
    var range: ShardRange
    var node: String { range.node }

    /// A movement's claim.
    init(kind: String, key: String, home: Int64, requestHash: String, maps: LedgerMaps) throws {
        try self.init(kind: kind, key: key, home: home, noted: home, requestHash: requestHash, maps: maps)
    }

    /// An opening's claim, noting the account it opens.
    init(openingOf account: Int64, key: String, requestHash: String, maps: LedgerMaps) throws {
        try self.init(kind: "open", key: key, home: nil, noted: account, requestHash: requestHash, maps: maps)
    }

    private init(kind: String, key: String, home: Int64?, noted: Int64, requestHash: String, maps: LedgerMaps) throws {
        self.key = key
        self.kind = kind
        self.home = home
        self.noted = noted
        self.requestHash = requestHash
        self.hashKey = DirectoryHash.key(forIdempotencyKey: key)
        self.range = try maps.directory.range(for: hashKey)
    }
}

/// Whether a request's key claim is committed already: a claim made on its own (autocommitted)
/// stays — and moves with its directory range — so the request's later tries need not make it
/// again (one statement, perhaps on a third node, less per try). A claim made inside a try's
/// transaction is not remembered: it is gone if that try rolls back.
final class ClaimMemo: Sendable {
    private let committed = Atomic<Bool>(false)
    var isCommitted: Bool { committed.load(ordering: .acquiring) }
    func markCommitted() { committed.store(true, ordering: .releasing) }
}

/// SQL of the key claims (`key_claims`, schema v6): one row per key, never changed once written.
enum KeyClaims {
    /// The claim's insert with the fence folded in: a row only while the key's directory range is
    /// active on this node and holds the key's hash (the ownership row read with a shared lock, as
    /// `INSERT … SELECT` reads, held to the end of the transaction) — and, with `uncaptured`, is
    /// not captured for a move. At most 5 s of lock wait — on the ownership row or on a claim of
    /// the same key still uncommitted (a prepared branch whose coordinator died, until the resolver
    /// ends it) — then 1205, and the try is made again.
    private static func insert(uncaptured: Bool) -> String {
        """
        SET STATEMENT innodb_lock_wait_timeout = 5 FOR
        INSERT INTO key_claims (transfer_id, key_hash, kind, home_account, request_hash)
        SELECT ?, ?, ?, ?, ? FROM range_ownership
        WHERE map_name = 'directory' AND range_id = ? AND state = 'active' AND lower_bound <= ? AND (upper_bound IS NULL OR upper_bound > ?)\(uncaptured ? " AND capture = 0" : "")
        """
    }

    private enum Inserted { case claimed, sameRequest, refused }

    private static func insert(_ claim: KeyClaim, uncaptured: Bool, on c: MariaDBConnection) async throws -> Inserted {
        do throws(MariaDBError) {
            let rows = try await c.execute(insert(uncaptured: uncaptured), [
                .string(claim.key), .int(claim.hashKey), .string(claim.kind), claim.home.map(MariaDBValue.int) ?? .null, .string(claim.requestHash),
                .string(claim.range.id), .int(claim.hashKey), .int(claim.hashKey)]).affectedRows
            return rows == 1 ? .claimed : .refused
        } catch {
            guard error.errorNumber == 1062 else { throw error }
            // Committed (the insert waited for it): a locking read sees it, whatever the snapshot.
            let earlier = try await c.execute("SELECT request_hash FROM key_claims WHERE transfer_id = ? LOCK IN SHARE MODE",
                                              [.string(claim.key)]).rows.first?.string("request_hash")
            guard earlier == claim.requestHash else {
                throw LedgerError(.idempotencyConflict, "idempotency key \(claim.key) was already used for a different request; use a new key for a new request")
            }
            return .sameRequest
        }
    }

    /// Claims the key for the request on the key's node, inside the caller's transaction — or, with
    /// `autocommit`, on a connection outside any: a new key is claimed; a key claimed by the same
    /// request (a retry) goes on; a key claimed by another request is refused with
    /// ``LedgerError/Code/idempotencyConflict``; a range not active here, or not holding the key,
    /// throws ``PlanStale`` as the fence does. Returns whether this call wrote the claim. A claim
    /// made in a transaction that rolls back is gone with it; one made by a try whose request never
    /// committed stays, and keeps the key for that request.
    ///
    /// The common case is one statement: the range not captured for a move. While it is, a new
    /// claim also notes itself in the move's log (`openings`, the range, ``KeyClaim/noted``),
    /// stamped with its own `claimed_at`: its transaction may commit long after `claimed_at` — a
    /// prepared branch, or a statement held up — and with it an opening's decision row; a
    /// directory range's move copies claims and opening decisions by time, from the earliest line
    /// logged on. The
    /// ownership row stays share-locked to the end, so capture cannot begin between the claim and
    /// the line; a claim made with capture off commits before capture can begin, and the move's
    /// copy of the whole history sees it.
    @discardableResult
    static func claim(_ claim: KeyClaim, on c: MariaDBConnection, autocommit: Bool = false) async throws -> Bool {
        switch try await insert(claim, uncaptured: true, on: c) {
        case .claimed: return true
        case .sameRequest: return false
        case .refused: break
        }
        if autocommit { return try await c.transaction { try await capturedClaim(claim, on: $0) } }
        return try await capturedClaim(claim, on: c)
    }

    /// The claim while the range is captured (or refuses it), with its log line.
    private static func capturedClaim(_ claim: KeyClaim, on c: MariaDBConnection) async throws -> Bool {
        switch try await insert(claim, uncaptured: false, on: c) {
        case .sameRequest: return false
        case .refused:
            // Why the range refused, as the fence says it (moving, or not this node's).
            try await AccountSQL.fence(c, map: "directory", range: claim.range.id, node: claim.node, key: claim.hashKey)
            throw PlanStale(reason: "directory range \(claim.range.id) on \(claim.node) refused the claim of key \(claim.key)")
        case .claimed:
            try await c.execute("""
                INSERT INTO range_changes (map_name, range_id, account_id, changed_at)
                SELECT 'openings', o.range_id, ?, k.claimed_at FROM range_ownership o JOIN key_claims k ON k.transfer_id = ?
                WHERE o.map_name = 'directory' AND o.range_id = ? AND o.capture = 1
                """, [.int(claim.noted), .string(claim.key), .string(claim.range.id)])
            return true
        }
    }
}

extension Bank {
    /// A key for a request that brought none: a random one (a lower-case UUID) that hashes into a
    /// directory range on `node` when one is given and one of 64 draws does — so that the key's
    /// claim (an opening's decision) is written in a transaction that writes on that node anyway,
    /// not in one of its own on another node, which would also need that node up.
    func freshKey(on node: String?) -> String {
        let maps = try? self.maps()
        var key = UUID().uuidString.lowercased()
        guard let node, let maps else { return key }
        for _ in 0..<64 {
            if (try? maps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)).node) == node { return key }
            key = UUID().uuidString.lowercased()
        }
        return key
    }

    /// A fresh key for a movement whose home account is `account`: claimed on the node the account
    /// was last seen on, when it was seen.
    public func freshKey(home account: Int64) -> String {
        freshKey(on: locations.withLock { $0[account]?.node })
    }

    /// A fresh key for an opening with `balance`: on the node its balance maps to.
    public func freshKey(opening balance: Money) -> String {
        freshKey(on: try? maps().accounts.range(for: balance.minorUnits).node)
    }
}
