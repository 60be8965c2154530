import MariaDB

/// The SQL of one node's part of a ledger operation. Every write transaction reads the fence first.
enum AccountSQL {
    /// An ownership row's key interval `[lower, upper)` (`upper` nil: unbounded).
    struct Bounds: Sendable {
        var lower: Int64
        var upper: Int64?
        func contains(_ key: Int64) -> Bool { key >= lower && upper.map { key < $0 } ?? true }
    }

    /// The fence: the node must own `range` of `map`, the range must be active, and `key` (when
    /// given: a new balance, or a directory hash) must lie in the range's bounds *as the node holds
    /// them* — after a split, a router on the old map would otherwise store a balance under the
    /// range id that no longer covers it. Share mode, so a move's freeze or a split's narrowing (an
    /// exclusive lock) waits for in-flight writes, and the bounds returned hold to the end of the
    /// transaction. A range frozen for a move is not a stale map: ``PlanStale/moving``.
    @discardableResult
    static func fence(_ c: MariaDBConnection, map: String, range: String, node: String, key: Int64? = nil) async throws -> Bounds {
        let rows = try await c.execute(
            "SELECT state, lower_bound, upper_bound FROM range_ownership WHERE map_name = ? AND range_id = ? LOCK IN SHARE MODE",
            [.string(map), .string(range)]).rows
        guard let row = rows.first, let state = try? row.string("state"), state == "active" else {
            if let state = try? rows.first?.string("state"), movingStates.contains(state) {
                throw PlanStale(reason: "\(map) range \(range) on \(node) is \(state) by a move", moving: true)
            }
            throw PlanStale(reason: "node \(node) does not own \(map) range \(range) (wrong shard)", wrongShard: true)
        }
        let bounds = Bounds(lower: try row.int64("lower_bound"), upper: try row.optionalInt64("upper_bound"))
        if let key { try check(key, in: bounds, map: map, range: range, node: node) }
        return bounds
    }

    /// Ownership states of a range in a move's switch: `frozen` (writes wait), then `moved` (the
    /// target takes over once the map names it). Neither is a stale map: the map is about to change.
    static let movingStates: Set<String> = ["frozen", "moved"]

    /// Whether accounts-map `range` is in a move's switch on this node (read without locks).
    static func isMoving(_ c: MariaDBConnection, range: String) async throws -> Bool {
        guard let state = try await c.execute("SELECT state FROM range_ownership WHERE map_name = 'accounts' AND range_id = ?",
                                              [.string(range)]).rows.first?.string("state") else { return false }
        return movingStates.contains(state)
    }

    /// `key` must lie in `bounds` (read by ``fence(_:map:range:node:key:)``), else the router's map is behind.
    static func check(_ key: Int64, in bounds: Bounds, map: String, range: String, node: String) throws {
        guard bounds.contains(key) else {
            throw PlanStale(reason: "\(map) range \(range) on \(node) covers [\(bounds.lower), \(bounds.upper.map(String.init) ?? "∞")), not \(key) (wrong shard: the map is behind)",
                            wrongShard: true)
        }
    }

    /// The new balances a write leaves in each accounts-map range: the lowest and the highest.
    struct Span: Sendable, Hashable {
        var range: String
        var low: Int64
        var high: Int64
    }

    /// Per range, the span of the new balances `changes` leave in it.
    static func spans(_ changes: [(id: Int64, balance: Int64, range: String)]) -> [Span] {
        var spans: [String: Span] = [:]
        for change in changes {
            var span = spans[change.range] ?? Span(range: change.range, low: change.balance, high: change.balance)
            span.low = min(span.low, change.balance)
            span.high = max(span.high, change.balance)
            spans[change.range] = span
        }
        return spans.values.sorted { $0.range < $1.range }
    }

    /// The `FROM … WHERE` that selects one `range_ownership` row per range of `spans` that is active
    /// on this node and holds its span within the bounds the node has for it (bounds are in minor
    /// units): the fence holds when it counts `spans.count` rows. A statement that writes reads
    /// `range_ownership` this way with shared locks, held to the end: the fence, folded into a write
    /// the transaction makes anyway (`INSERT … SELECT … HAVING COUNT(*) = n`, or `UPDATE … WHERE
    /// (SELECT COUNT(*) …) = n`).
    static func within(_ spans: [Span]) -> (from: String, parameters: [MariaDBValue]) {
        let each = spans.map { _ in "(range_id = ? AND lower_bound <= ? AND (upper_bound IS NULL OR upper_bound > ?))" }.joined(separator: " OR ")
        return ("FROM range_ownership WHERE map_name = 'accounts' AND state = 'active' AND (\(each))",
                spans.flatMap { [MariaDBValue.string($0.range), .int($0.low), .int($0.high)] })
    }

    struct Row: Sendable {
        var accountID: Int64
        var customerName: String
        var balance: Int64
        var range: String
        var version: Int64
        var createdAt: SQLDateTime
        /// Nodes the account lived on before (comma-separated), as its directory entry also records.
        var previousNodes: String = ""
    }

    static let columns = "account_id, customer_name, balance, balance_range, row_version, created_at, previous_nodes"

    static func decode(_ r: MariaDBRow) throws -> Row {
        Row(accountID: try r.int64("account_id"), customerName: try r.string("customer_name"), balance: try r.minorUnits("balance"),
            range: try r.string("balance_range"), version: try r.int64("row_version"), createdAt: try r.dateTime("created_at"),
            previousNodes: try r.string("previous_nodes"))
    }

    /// Rows of ranges this node serves: `active`, or `frozen` for a move's switch. Any other row is
    /// not this node's to show — a move's copy on its target before the switch (`incoming`), the
    /// source's old copy after it — and counts as absent, so a stale hint never reads it.
    static let served = "JOIN range_ownership r ON r.map_name = 'accounts' AND r.range_id = a.balance_range AND r.state IN ('active', 'frozen')"
    static let servedColumns = "a.account_id, a.customer_name, a.balance, a.balance_range, a.row_version, a.created_at, a.previous_nodes"

    /// Reads a row without locking (planning, lookups); absent unless its range is served here.
    static func read(_ c: MariaDBConnection, _ id: Int64) async throws -> Row? {
        try await c.execute("SELECT \(servedColumns) FROM account_info a \(served) WHERE a.account_id = ?", [.int(id)]).rows.first.map(decode)
    }

    /// Locks rows for the rest of the transaction, in ascending id, and returns those that are here.
    static func lock(_ c: MariaDBConnection, _ ids: [Int64]) async throws -> [Row] {
        try await c.execute("SELECT \(columns) FROM account_info WHERE account_id IN (\(ids.map { _ in "?" }.joined(separator: ", "))) ORDER BY account_id FOR UPDATE",
                            ids.map(MariaDBValue.int)).rows.map(decode)
    }

    /// Accounts after `cursor` by ascending id, of one range or all; only rows of ranges served here.
    static func page(_ c: MariaDBConnection, after cursor: Int64, range: String?, limit: Int) async throws -> [Row] {
        try await c.execute("SELECT \(servedColumns) FROM account_info a \(served) WHERE a.account_id > ? AND (? IS NULL OR a.balance_range = ?) ORDER BY a.account_id LIMIT ?",
                            [.int(cursor), range.map(MariaDBValue.string) ?? .null, range.map(MariaDBValue.string) ?? .null, .int(Int64(limit))]).rows.map(decode)
    }

    /// The balance a committed attempt's posting left on an account, if this node holds that
    /// posting — read dirty, so that a participant's posting whose branch is still prepared (its
    /// decision committed, the resolver about to commit it) is seen too. Only the committed
    /// attempt's posting is read: another attempt's, in flight, is never taken for it.
    static func balanceAfter(_ c: MariaDBConnection, transferID: String, attempt: AttemptID, account: Int64) async throws -> Int64? {
        try await c.begin(isolation: .readUncommitted)
        do {
            let after = try await c.execute("SELECT balance_after FROM journal WHERE transfer_id = ? AND attempt = ? AND account_id = ?",
                                            [.string(transferID), .string(attempt.rawValue), .int(account)]).rows.first?.minorUnits("balance_after")
            try await c.commit()
            return after
        } catch {
            if !c.isBroken { _ = try? await c.rollback() }
            throw error
        }
    }

    /// Whether a committed posting of `transferID` to `account` is on this node.
    static func postingExists(_ c: MariaDBConnection, transferID: String, account: Int64) async throws -> Bool {
        try await !c.execute("SELECT 1 AS x FROM journal WHERE transfer_id = ? AND account_id = ? LIMIT 1", [.string(transferID), .int(account)]).rows.isEmpty
    }

    /// An account's postings on this node written at or before `notAfter`, newest first.
    static func statement(_ c: MariaDBConnection, account: Int64, notAfter: SQLDateTime, limit: Int) async throws -> [MariaDBRow] {
        try await c.execute("""
            SELECT entry_id, transfer_id, amount, balance_after, created_at FROM journal
            WHERE account_id = ? AND created_at <= ? ORDER BY created_at DESC, entry_id DESC LIMIT ?
            """, [.int(account), .dateTime(notAfter), .int(Int64(limit))]).rows
    }

    /// Locks a row for the rest of the transaction and returns it as it is now.
    static func lock(_ c: MariaDBConnection, _ id: Int64, node: String) async throws -> Row {
        guard let row = try await c.execute("SELECT \(columns) FROM account_info WHERE account_id = ? FOR UPDATE", [.int(id)]).rows.first.map(decode) else {
            throw PlanStale(reason: "account \(id) is no longer on \(node)")
        }
        return row
    }

    /// Locks a row for the rest of the transaction; the plan must still hold exactly.
    /// The range is compared too: the plan fenced the range it read, and a relabel that kept the
    /// version (a split's) would leave that fence on the wrong ownership row.
    static func lock(_ c: MariaDBConnection, _ expected: Row, node: String) async throws {
        let locked = try await lock(c, expected.accountID, node: node)
        guard locked.version == expected.version, locked.range == expected.range else {
            throw PlanStale(reason: "account \(expected.accountID) changed on \(node) since it was read", stillThere: true)
        }
    }

    static func update(_ c: MariaDBConnection, _ id: Int64, balance: Int64, range: String) async throws {
        try await c.execute("UPDATE account_info SET balance = ?, balance_range = ?, row_version = row_version + 1 WHERE account_id = ?",
                            [.money(minorUnits: balance), .string(range), .int(id)])
    }

    /// The balances of locked rows in one statement. With `fenced`, written only if each new balance
    /// lies in the bounds of its range as this node holds them, the range active (``within(_:)`` as a
    /// subquery, whose shared locks are held to the end): the fence of a lock-first branch that has no
    /// decision row to carry it. False: nothing was written — the router's map is behind (a split
    /// moved a bound), or a range is not active here.
    static func update(_ c: MariaDBConnection, _ changes: [(id: Int64, balance: Int64, range: String)], fenced: Bool) async throws -> Bool {
        let set: String
        let setParameters: [MariaDBValue]
        if changes.count == 1 {
            set = "balance = ?, balance_range = ?"
            setParameters = [.money(minorUnits: changes[0].balance), .string(changes[0].range)]
        } else {
            let cases = changes.map { _ in "WHEN ? THEN ?" }.joined(separator: " ")
            set = "balance = CASE account_id \(cases) END, balance_range = CASE account_id \(cases) END"
            setParameters = changes.flatMap { [MariaDBValue.int($0.id), .money(minorUnits: $0.balance)] } + changes.flatMap { [MariaDBValue.int($0.id), .string($0.range)] }
        }
        let ids = changes.map { _ in "?" }.joined(separator: ", ")
        var sql = "UPDATE account_info SET \(set), row_version = row_version + 1 WHERE account_id IN (\(ids))"
        var parameters = setParameters + changes.map { .int($0.id) }
        if fenced {
            let spans = spans(changes)
            let fence = within(spans)
            sql += " AND (SELECT COUNT(*) \(fence.from)) = ?"
            parameters += fence.parameters + [.int(Int64(spans.count))]
        }
        return try await c.execute(sql, parameters).affectedRows == UInt64(changes.count)
    }

    /// One line of an account's statement, written by one attempt of a transfer.
    struct Posting: Sendable {
        var account: Int64
        var amount: Int64
        var balanceAfter: Int64
    }

    private static func values(_ p: Posting, _ transferID: String, _ attempt: AttemptID) -> [MariaDBValue] {
        [.int(p.account), .string(transferID), .string(attempt.rawValue), .money(minorUnits: p.amount), .money(minorUnits: p.balanceAfter)]
    }

    /// Postings in one statement. `journal.one_posting` (transfer, account) is unique: a second
    /// attempt's posting waits for, then collides with, a committed first one.
    static func journal(_ c: MariaDBConnection, transferID: String, attempt: AttemptID, postings: [Posting]) async throws {
        try await c.execute("INSERT INTO journal (account_id, transfer_id, attempt, amount, balance_after) VALUES "
                            + postings.map { _ in "(?, ?, ?, ?, ?)" }.joined(separator: ", "),
                            postings.flatMap { values($0, transferID, attempt) })
    }

    static func insert(_ c: MariaDBConnection, _ row: Row) async throws {
        try await c.execute("INSERT INTO account_info (\(columns)) VALUES (?, ?, ?, ?, ?, ?, ?)", [
            .int(row.accountID), .string(row.customerName), .money(minorUnits: row.balance), .string(row.range),
            .int(row.version), .dateTime(row.createdAt), .string(row.previousNodes),
        ])
    }

    /// Inserts a row that arrives by crossing onto this node. A range move may hold a copy of the
    /// account here (its range `incoming` on this node, or `moved` away and not yet cleaned): the
    /// crossing then waits for the move to end (``PlanStale/moving``) instead of failing.
    static func insertArriving(_ c: MariaDBConnection, _ row: Row, node: String) async throws {
        do {
            try await insert(c, row)
        } catch let error as MariaDBError where error.errorNumber == 1062 {
            let copy = try await c.execute("""
                SELECT o.state FROM account_info a JOIN range_ownership o ON o.map_name = 'accounts' AND o.range_id = a.balance_range
                WHERE a.account_id = ? AND o.state IN ('incoming', 'moved')
                """, [.int(row.accountID)]).rows.first
            guard let state = try copy?.string("state") else { throw error }
            throw PlanStale(reason: "account \(row.accountID) has a copy on \(node) (range \(state) by a move)", moving: true)
        }
    }

    static func delete(_ c: MariaDBConnection, _ id: Int64) async throws {
        try await c.execute("DELETE FROM account_info WHERE account_id = ?", [.int(id)])
    }

    struct DirectoryEntry: Sendable {
        var node: String
        var range: String
        var previousNodes: [String]
    }

    /// Reads an account's directory entry; absent unless its directory range is served here
    /// (`active` or `frozen`): a moved range's old copy, or a copy on its way in, is not the entry.
    static func directory(_ c: MariaDBConnection, _ id: Int64) async throws -> DirectoryEntry? {
        guard let r = try await c.execute("""
            SELECT d.data_node, d.data_range, d.previous_nodes FROM account_directory d
            JOIN range_ownership r ON r.map_name = 'directory' AND r.range_id = d.directory_range AND r.state IN ('active', 'frozen')
            WHERE d.account_id = ?
            """, [.int(id)]).rows.first else { return nil }
        return DirectoryEntry(node: try r.string("data_node"), range: try r.string("data_range"),
                              previousNodes: try r.string("previous_nodes").split(separator: ",").map(String.init))
    }

    /// Whether this node serves the directory range that holds `key` (read without locks): an
    /// absent entry is known absent only where the range is served.
    enum DirectoryService: Sendable, Equatable {
        case served
        /// In a move's switch (`moved`, the map about to name the new node).
        case moving
        /// Not here (a stale map): the range moved away, or has not arrived yet.
        case elsewhere
    }

    static func directoryService(_ c: MariaDBConnection, key: Int64) async throws -> DirectoryService {
        let states = Set(try await c.execute("""
            SELECT state FROM range_ownership WHERE map_name = 'directory' AND lower_bound <= ? AND (upper_bound IS NULL OR upper_bound > ?)
            """, [.int(key), .int(key)]).rows.map { try $0.string("state") })
        if !states.isDisjoint(with: ["active", "frozen"]) { return .served }
        return states.contains("moved") ? .moving : .elsewhere
    }

    static func insertDirectory(_ c: MariaDBConnection, _ id: Int64, directoryRange: String, node: String, range: String) async throws {
        try await c.execute("INSERT INTO account_directory (account_id, directory_range, data_node, data_range) VALUES (?, ?, ?, ?)",
                            [.int(id), .string(directoryRange), .string(node), .string(range)])
    }

    /// Points the entry at the account's new range on the same node. The entry must still name a
    /// range on that node (`from`, or one of `sameNode`, the ranges the router's map places there):
    /// a split relabels an account's row before its entry, so for a while the entry may name the
    /// range the row's range was split from. The row itself is locked and checked by the caller's
    /// branch on the node, so an account that left the node is caught there.
    static func relabelDirectory(_ c: MariaDBConnection, _ id: Int64, from: String, sameNode: [String], to: String) async throws {
        let names = Array(Set([from] + sameNode)).sorted()
        let result = try await c.execute("UPDATE account_directory SET data_range = ? WHERE account_id = ? AND data_range IN (\(placeholders(names.count)))",
                                         [.string(to), .int(id)] + names.map { .string($0) })
        guard result.affectedRows == 1 else {
            // Nothing changed: the entry may name `to` already (a split's relabel got there first).
            let now = try await c.execute("SELECT data_range FROM account_directory WHERE account_id = ? FOR UPDATE", [.int(id)]).rows.first?.string("data_range")
            guard now == to else {
                throw PlanStale(reason: "the directory entry of account \(id) no longer points at range \(from) or another range on its node")
            }
            return
        }
    }

    /// Points the entry at the account's new range (and node) and remembers the node it leaves
    /// (idempotent retries look there). The entry must still name `fromRange` or another range
    /// on the node it leaves (`sameNode`, as ``relabelDirectory(_:_:from:sameNode:to:)`` says):
    /// the account's node is the map's owner of that range, so a range move rewrites no entry and
    /// `data_node` may be old.
    static func moveDirectory(_ c: MariaDBConnection, _ id: Int64, from: String, fromRange: String, sameNode: [String], to: String, range: String) async throws {
        let names = Array(Set([fromRange] + sameNode)).sorted()
        let result = try await c.execute("""
            UPDATE account_directory SET data_node = ?, data_range = ?,
              previous_nodes = IF(previous_nodes = '', ?, IF(FIND_IN_SET(?, previous_nodes) > 0, previous_nodes, CONCAT(previous_nodes, ',', ?)))
            WHERE account_id = ? AND data_range IN (\(placeholders(names.count)))
            """, [.string(to), .string(range), .string(from), .string(from), .string(from), .int(id)] + names.map { .string($0) })
        guard result.affectedRows == 1 else { throw PlanStale(reason: "the directory entry of account \(id) no longer points at range \(fromRange) or another range on \(from)") }
    }

    static func placeholders(_ n: Int) -> String { Array(repeating: "?", count: n).joined(separator: ", ") }
}

/// The plan no longer matches the data (a row moved or changed, or a range changed hands):
/// nothing was written; plan again.
struct PlanStale: Error, Sendable, CustomStringConvertible {
    var reason: String
    var wrongShard = false
    /// The row changed but is where it was read: the locations learnt still hold.
    var stillThere = false
    /// A range involved is frozen for a move: not a stale map — wait for the map to change.
    var moving = false
    var description: String { reason }
}
