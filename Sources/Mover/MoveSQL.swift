import BankSchema
import Ledger
import MariaDB

/// The range a move works on, and the epochs its steps compare.
public struct MoveSpec: Sendable, Hashable {
    /// The shard map (`accounts`).
    public var map: String
    public var range: String
    public var source: String
    public var target: String
    /// The source's ownership epoch: every step on the source compares it.
    public var sourceEpoch: Int64
    /// The target's ownership epoch for this runner: every copy into the target share-locks the
    /// target's row at this epoch, so a runner that was replaced (a higher epoch) writes nothing.
    public var targetEpoch: Int64
    /// The source's epoch before the job claimed it (a job cancelled before its first step finds it).
    public var sourceEpochBefore: Int64?
    /// The range's bounds (from the map; a range in a job is not split): a directory move picks
    /// the opening decisions whose key hashes into them.
    public var keyBounds = KeyBounds(lower: .min, upper: nil)

    /// `[lower, upper)`, `upper` nil for no end.
    public struct KeyBounds: Sendable, Hashable {
        public var lower: Int64
        public var upper: Int64?
        public func contains(_ key: Int64) -> Bool { key >= lower && upper.map { key < $0 } ?? true }
    }

    public init(map: String, range: String, source: String, target: String, sourceEpoch: Int64, targetEpoch: Int64, sourceEpochBefore: Int64? = nil) {
        self.sourceEpochBefore = sourceEpochBefore
        self.map = map
        self.range = range
        self.source = source
        self.target = target
        self.sourceEpoch = sourceEpoch
        self.targetEpoch = targetEpoch
    }
}

/// A range's ownership row on one node.
struct OwnershipRow: Sendable, Hashable {
    var state: String
    var epoch: Int64
    var lower: Int64
    var upper: Int64?
    var capture: Bool
}

/// The SQL of a range move's steps, one node or two at a time. Every step can run again after a
/// crash: states and epochs are compared before they change, copies are upserts, deletes are of
/// copies only.
enum MoveSQL {
    static func list(_ n: Int) -> String { Array(repeating: "?", count: n).joined(separator: ", ") }

    static func ownership(_ c: MariaDBConnection, map: String, range: String, lock: String = "") async throws -> OwnershipRow? {
        guard let r = try await c.execute(
            "SELECT state, epoch, lower_bound, upper_bound, capture FROM range_ownership WHERE map_name = ? AND range_id = ?" + lock,
            [.string(map), .string(range)]).rows.first else { return nil }
        return OwnershipRow(state: try r.string("state"), epoch: try r.int64("epoch"), lower: try r.int64("lower_bound"),
                            upper: try r.optionalInt64("upper_bound"), capture: try r.int64("capture") != 0)
    }

    // MARK: prepare and capture

    /// The target gets the range's row as `incoming` at the spec's epoch; a row left by an earlier
    /// runner of this move (incoming, a lower epoch) is taken over by raising its epoch. A target
    /// that holds the range otherwise, or holds rows labelled with it, is refused.
    static func prepareTarget(_ t: MariaDBConnection, _ spec: MoveSpec, lower: Int64, upper: Int64?) async throws {
        try await t.transaction { c in
            if let row = try await ownership(c, map: spec.map, range: spec.range, lock: " FOR UPDATE") {
                guard row.state == "incoming" else {
                    throw MoveError(.conflict, "\(spec.target) already holds \(spec.map) range \(spec.range) (\(row.state)); it cannot receive it")
                }
                guard row.epoch <= spec.targetEpoch else { throw MoveError.superseded(spec, row.epoch) }
                try await c.execute("UPDATE range_ownership SET epoch = ? WHERE map_name = ? AND range_id = ?",
                                    [.int(spec.targetEpoch), .string(spec.map), .string(spec.range)])
                return
            }
            let leftovers = try await RangeContent.rowCount(c, spec)
            guard leftovers == 0 else {
                throw MoveError(.conflict, "\(spec.target) holds \(leftovers) \(spec.map == "directory" ? "directory entries" : "account rows") labelled \(spec.range) but no ownership row for it: clean them before moving \(spec.range) there")
            }
            try await c.execute("""
                INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state, capture)
                VALUES (?, ?, ?, ?, ?, 'incoming', 0)
                """, [.string(spec.map), .string(spec.range), .int(lower), upper.map { .int($0) } ?? .null, .int(spec.targetEpoch)])
        }
    }

    /// The job's first step on the source: its ownership row takes the job's epoch (from the one
    /// it had when the job was created). Every later step on the source compares that epoch.
    static func claimSource(_ s: MariaDBConnection, _ spec: MoveSpec, before: Int64) async throws -> OwnershipRow {
        try await s.execute("UPDATE range_ownership SET epoch = ? WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'active'",
                            [.int(spec.sourceEpoch), .string(spec.map), .string(spec.range), .int(before)])
        return try await checkSource(s, spec, states: ["active"])
    }

    /// Creates or drops the capture triggers without queueing the node's writes behind a long
    /// transaction for long: the DDL's metadata lock waits at most 5 s (then the step is retried).
    static func installTriggers(_ s: MariaDBConnection) async throws {
        try await withShortDDLWait(s) { try await BankSchema.installCaptureTriggers($0) }
    }

    static func withShortDDLWait(_ s: MariaDBConnection, _ body: (MariaDBConnection) async throws -> Void) async throws {
        try await s.query("SET SESSION lock_wait_timeout = 5")
        do {
            try await body(s)
        } catch {
            _ = try? await s.query("SET SESSION lock_wait_timeout = DEFAULT")
            throw error
        }
        try await s.query("SET SESSION lock_wait_timeout = DEFAULT")
    }

    /// The source's row must still be the one the move began from.
    static func checkSource(_ s: MariaDBConnection, _ spec: MoveSpec, states: Set<String>) async throws -> OwnershipRow {
        guard let row = try await ownership(s, map: spec.map, range: spec.range), row.epoch == spec.sourceEpoch, states.contains(row.state) else {
            throw MoveError(.conflict, "\(spec.source)'s ownership of \(spec.map) range \(spec.range) changed under the move (expected \(states.sorted().joined(separator: " or ")) at epoch \(spec.sourceEpoch))")
        }
        return row
    }

    /// `capture = 1` on the source's row. The UPDATE takes the row's exclusive lock, so writes that
    /// read `capture = 0` under their share lock have committed (or prepared: the caller waits for
    /// those) before it returns; every later write to the range is logged.
    static func startCapture(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await s.execute("UPDATE range_ownership SET capture = 1 WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'active'",
                            [.string(spec.map), .string(spec.range), .int(spec.sourceEpoch)])
        let row = try await checkSource(s, spec, states: ["active"])
        guard row.capture else { throw MoveError(.conflict, "capture could not be switched on for \(spec.range) on \(spec.source)") }
    }

    /// The ShardBank branches prepared on a node now (their xids as text).
    static func preparedBranches(_ c: MariaDBConnection) async throws -> Set<String> {
        Set(try await c.xaRecover().filter { BranchName.parse($0) != nil }.map { "\($0.gtrid)/\($0.bqual)" })
    }

    // MARK: copy

    static let accountColumns = "account_id, customer_name, balance, balance_range, row_version, created_at, updated_at, previous_nodes"
    static let journalColumns = "transfer_id, attempt, account_id, amount, balance_after, created_at"
    static let decisionColumns = "transfer_id, attempt, kind, state, from_account, to_account, amount, request_hash, participants, created_at"

    /// What the source holds of some accounts, read in one snapshot.
    struct Footprint: Sendable {
        var accounts: [Int64: MariaDBRow] = [:]
        var postings: [Int64: [MariaDBRow]] = [:]
        var decisions: [Int64: [MariaDBRow]] = [:]
    }

    /// `since`: only the postings and decisions made from then on (the source's clock) — what a
    /// catch-up needs for accounts whose older history the target has already.
    static func footprint(_ s: MariaDBConnection, _ ids: [Int64], since: String? = nil) async throws -> Footprint {
        let values = ids.map { MariaDBValue.int($0) }
        let recent = since.map { " AND created_at >= '\($0)'" } ?? "" // our own DATE_FORMAT output: nothing to escape
        return try await s.transaction(isolation: .repeatableRead) { c in
            var f = Footprint()
            for r in try await c.execute("SELECT \(accountColumns) FROM account_info WHERE account_id IN (\(list(ids.count)))", values).rows {
                f.accounts[try r.int64("account_id")] = r
            }
            // By account: a chunk's accounts hold little history each; the time index would read
            // every posting of the node since the cut-off.
            for r in try await c.execute("SELECT \(journalColumns) FROM journal FORCE INDEX (by_account) WHERE account_id IN (\(list(ids.count)))\(recent) ORDER BY entry_id", values).rows {
                f.postings[try r.int64("account_id"), default: []].append(r)
            }
            for r in try await c.execute("SELECT \(decisionColumns), home_account FROM transfers FORCE INDEX (by_home) WHERE home_account IN (\(list(ids.count)))\(recent)", values).rows {
                f.decisions[try r.int64("home_account"), default: []].append(r)
            }
            return f
        }
    }

    /// Share-locks the target's row at this runner's epoch: a runner that was replaced stops here.
    static func fenceTarget(_ c: MariaDBConnection, _ spec: MoveSpec) async throws {
        guard let row = try await ownership(c, map: spec.map, range: spec.range, lock: " LOCK IN SHARE MODE"),
              row.state == "incoming", row.epoch == spec.targetEpoch else {
            let row = try await ownership(c, map: spec.map, range: spec.range)
            throw MoveError.superseded(spec, row?.epoch)
        }
    }

    /// Makes the target's copies of `ids` equal the source: an account in the range on the source
    /// is upserted with its postings and the decisions it is home of; one that left the range loses
    /// its copies (the postings and decisions the source still has of it — the history that stays
    /// where it was made). A row on the target in another range is a real account, never touched.
    /// Returns how many accounts are copied and how many copies were removed.
    @discardableResult
    ///
    /// With `since` (a catch-up), only the history made since then is read for accounts whose copy
    /// the target holds: a copy row exists only with all of the account's older postings beside it
    /// (it is created with its whole history, and removed with it). Accounts new to the target, and
    /// copies to remove, are read whole.
    static func sync(_ ids: [Int64], source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec,
                     since: String? = nil) async throws -> (kept: Int, removed: Int) {
        guard !ids.isEmpty else { return (0, 0) }
        var f = try await footprint(s, ids, since: since)
        return try await t.transaction { c in
            try await fenceTarget(c, spec)
            var existing: [Int64: String] = [:]
            for r in try await c.execute("SELECT account_id, balance_range FROM account_info WHERE account_id IN (\(list(ids.count))) FOR UPDATE",
                                         ids.map { .int($0) }).rows {
                existing[try r.int64("account_id")] = try r.string("balance_range")
            }
            var keep: [Int64] = []
            var drop: [Int64] = []
            for id in ids {
                let inRange = try f.accounts[id].map { try $0.string("balance_range") == spec.range } ?? false
                if inRange, existing[id] == nil || existing[id] == spec.range {
                    keep.append(id)
                } else if !inRange, existing[id] == spec.range {
                    drop.append(id)
                }
            }
            let whole = since == nil ? [] : keep.filter { existing[$0] == nil } + drop
            if !whole.isEmpty {
                let more = try await footprint(s, whole)
                for id in whole {
                    f.postings[id] = more.postings[id]
                    f.decisions[id] = more.decisions[id]
                }
            }
            try await upsert(c, table: "account_info", columns: accountColumns, rows: keep.compactMap { f.accounts[$0] },
                             update: "customer_name = VALUES(customer_name), balance = VALUES(balance), row_version = VALUES(row_version), "
                                + "created_at = VALUES(created_at), updated_at = VALUES(updated_at), previous_nodes = VALUES(previous_nodes)")
            try await upsert(c, table: "journal", columns: journalColumns, rows: keep.flatMap { f.postings[$0] ?? [] }, update: "amount = amount")
            let decisions = keep.flatMap { f.decisions[$0] ?? [] }
            try await checkDecisions(c, decisions, spec)
            try await upsert(c, table: "transfers", columns: decisionColumns, rows: decisions.map { MariaDBRow(columns: Array($0.columns.dropLast()), values: Array($0.values.dropLast())) },
                             update: "state = VALUES(state)")
            if !drop.isEmpty {
                try await deleteCopies(c, of: drop, footprint: f, spec)
            }
            return (keep.count, drop.count)
        }
    }

    /// Removes the target's copies of `ids`: their postings and decisions that the source has
    /// too, and their rows in the moving range.
    static func deleteCopies(_ c: MariaDBConnection, of ids: [Int64], footprint f: Footprint, _ spec: MoveSpec) async throws {
        let postings = ids.flatMap { f.postings[$0] ?? [] }
        for batch in stride(from: 0, to: postings.count, by: 500).map({ Array(postings[$0..<min($0 + 500, postings.count)]) }) {
            try await c.execute("DELETE FROM journal WHERE (transfer_id, account_id) IN (\(batch.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                                batch.flatMap { [$0["transfer_id"], $0["account_id"]] })
        }
        let decisions = ids.flatMap { f.decisions[$0] ?? [] }
        for batch in stride(from: 0, to: decisions.count, by: 500).map({ Array(decisions[$0..<min($0 + 500, decisions.count)]) }) {
            try await c.execute("DELETE FROM transfers WHERE (transfer_id, attempt) IN (\(batch.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                                batch.flatMap { [$0["transfer_id"], $0["attempt"]] })
        }
        try await c.execute("DELETE FROM account_info WHERE balance_range = ? AND account_id IN (\(list(ids.count)))",
                            [.string(spec.range)] + ids.map { .int($0) })
    }

    /// A decision on the target under the same key as one being copied must be the same request:
    /// a key used for another request there is never overwritten (the move stops, naming it).
    static func checkDecisions(_ c: MariaDBConnection, _ decisions: [MariaDBRow], _ spec: MoveSpec) async throws {
        guard !decisions.isEmpty else { return }
        let keys = Array(Set(try decisions.map { try $0.string("transfer_id") }))
        var onTarget: [String: [MariaDBRow]] = [:]
        for r in try await c.execute("SELECT transfer_id, attempt, state, request_hash FROM transfers WHERE transfer_id IN (\(list(keys.count)))",
                                     keys.map { .string($0) }).rows {
            onTarget[try r.string("transfer_id"), default: []].append(r)
        }
        // A presumed abort (kind `unknown`, no request hash) is a resolver's note about one attempt,
        // not a request: it conflicts with nothing.
        func presumed(_ row: MariaDBRow) throws -> Bool { try row.string("request_hash").isEmpty }
        for d in decisions where try !presumed(d) {
            let key = try d.string("transfer_id")
            for other in onTarget[key] ?? [] where try !presumed(other) {
                let sameAttempt = try other.string("attempt") == d.string("attempt")
                if try other.string("request_hash") != d.string("request_hash")
                    || (!sameAttempt && other.string("state") == "committed" && d.string("state") == "committed") {
                    throw MoveError(.mismatch, "transfer id \(key.prefix(64)) is recorded on \(spec.target) for another request than on \(spec.source): the move would overwrite it")
                }
            }
        }
    }

    /// Multi-row `INSERT … ON DUPLICATE KEY UPDATE`, 500 rows a statement; the values are bound as read.
    static func upsert(_ c: MariaDBConnection, table: String, columns: String, rows: [MariaDBRow], update: String) async throws {
        guard let width = rows.first?.values.count else { return }
        let row = "(" + list(width) + ")"
        for start in stride(from: 0, to: rows.count, by: 500) {
            let batch = rows[start..<min(start + 500, rows.count)]
            try await c.execute("INSERT INTO \(table) (\(columns)) VALUES " + Array(repeating: row, count: batch.count).joined(separator: ", ")
                                + " ON DUPLICATE KEY UPDATE " + update, batch.flatMap(\.values))
        }
    }

    /// Per accounts range this node holds `active`: its rows and how many distinct balances they
    /// hold (a move's copies, `incoming` or `moved`, are not counted). Rebalances and drains plan from it.
    static func activeRowsPerRange(_ c: MariaDBConnection) async throws -> [(range: String, rows: Int, balances: Int64)] {
        try await c.execute("""
            SELECT a.balance_range AS r, COUNT(*) AS n, COUNT(DISTINCT a.balance) AS d FROM account_info a
            JOIN range_ownership o ON o.map_name = 'accounts' AND o.range_id = a.balance_range AND o.state = 'active'
            GROUP BY a.balance_range
            """).rows.map { (try $0.string("r"), Int(try $0.int64("n")), try $0.int64("d")) }
    }

    // MARK: catch-up

    /// Logged changes of the range, oldest first: (seq, account).
    static func changes(_ s: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> [(seq: Int64, account: Int64)] {
        try await s.execute("SELECT seq, account_id FROM range_changes WHERE map_name = ? AND range_id = ? ORDER BY seq LIMIT \(limit)",
                            [.string(spec.map), .string(spec.range)]).rows.map { (try $0.int64("seq"), try $0.int64("account_id")) }
    }

    /// Removes the changes applied. By their numbers, not "up to": a change whose transaction
    /// commits late has a lower number than ones already read, and must still be applied.
    static func deleteChanges(_ s: MariaDBConnection, _ seqs: [Int64]) async throws {
        for start in stride(from: 0, to: seqs.count, by: 1000) {
            let batch = seqs[start..<min(start + 1000, seqs.count)]
            try await s.execute("DELETE FROM range_changes WHERE seq IN (\(list(batch.count)))", batch.map { .int($0) })
        }
    }

    static func pendingChanges(_ s: MariaDBConnection, _ spec: MoveSpec) async throws -> Int64 {
        try await s.execute("SELECT COUNT(*) AS n FROM range_changes WHERE map_name = ? AND range_id = ?",
                            [.string(spec.map), .string(spec.range)]).rows.first?.int64("n") ?? 0
    }

    /// The range's log, with (a directory range) the openings the ledger logged into it.
    static func clearChanges(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        let maps = RangeContent.isDirectory(spec) ? [spec.map, "openings"] : [spec.map]
        try await s.execute("DELETE FROM range_changes WHERE map_name IN (\(list(maps.count))) AND range_id = ?", maps.map { .string($0) } + [.string(spec.range)])
    }

    // MARK: freeze and switch

    /// The source's row `frozen`, waiting at most a second for the writes that hold its share lock.
    /// Throws ``FreezeTimeout`` when they did not let go.
    static func freeze(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await s.query("SET SESSION innodb_lock_wait_timeout = 1")
        do {
            try await s.execute("UPDATE range_ownership SET state = 'frozen' WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'active' AND capture = 1",
                                [.string(spec.map), .string(spec.range), .int(spec.sourceEpoch)])
        } catch {
            // The pooled connection goes back with the server's default, whatever happened.
            _ = try? await s.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            if let e = error as? MariaDBError, e.errorNumber == 1205 { throw FreezeTimeout() }
            throw error
        }
        try await s.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
        _ = try await checkSource(s, spec, states: ["frozen"])
    }

    struct FreezeTimeout: Error {}

    static func markSourceMoved(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await s.execute("UPDATE range_ownership SET state = 'moved', capture = 0 WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'frozen'",
                            [.string(spec.map), .string(spec.range), .int(spec.sourceEpoch)])
        _ = try await checkSource(s, spec, states: ["moved"])
    }

    static func activateTarget(_ t: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await t.execute("UPDATE range_ownership SET state = 'active' WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'incoming'",
                            [.string(spec.map), .string(spec.range), .int(spec.targetEpoch)])
        guard let row = try await ownership(t, map: spec.map, range: spec.range), row.state == "active", row.epoch == spec.targetEpoch else {
            throw MoveError.superseded(spec, try await ownership(t, map: spec.map, range: spec.range)?.epoch)
        }
    }

    // MARK: compare

    /// Count, sum and checksum of the range's account rows, of their postings and of the decisions
    /// they are home of, on one node (`since`: only history older than that, which cannot change).
    struct Digest: Sendable, Hashable, CustomStringConvertible {
        var accounts: [String] = []
        var postings: [String] = []
        var decisions: [String] = []
        var description: String {
            "accounts \(accounts[0]) Σ \(accounts[1]) crc \(accounts[2]); postings \(postings[0]) Σ \(postings[1]) crc \(postings[2]); decisions \(decisions[0]) crc \(decisions[1])"
        }
    }

    /// Which postings and decisions a comparison covers, by `created_at` (a time the source's clock
    /// gave: ``historyCutoff(_:)``). Before the freeze the history older than ten seconds is
    /// compared; inside it, the rows and what is newer than that — the freeze stays short.
    enum HistoryWindow: Sendable {
        case all
        case before(String)
        case since(String)
        func condition(_ column: String) -> String {
            switch self {
            case .all: return ""
            case .before(let t): return " AND \(column) < '\(t)'" // our own DATE_FORMAT output: nothing to escape
            case .since(let t): return " AND \(column) >= '\(t)'"
            }
        }
        /// The index to read history by: the time index for the last seconds' history (the
        /// optimizer, left alone, may walk every posting of the range's accounts instead).
        var index: String { if case .since = self { return " FORCE INDEX (by_time)" } else { return "" } }
        /// Whether the account rows are compared too (not before the freeze: they still change).
        var withAccounts: Bool { if case .before = self { return false } else { return true } }
    }

    static func digest(_ c: MariaDBConnection, range: String, history: HistoryWindow = .all) async throws -> Digest {
        try await c.transaction(isolation: .repeatableRead) { c in
            var d = Digest()
            let before = history.condition("j.created_at")
            let a = try await c.execute("""
                SELECT COUNT(*) AS n, COALESCE(SUM(balance * 100), 0) AS s,
                  COALESCE(BIT_XOR(CRC32(CONCAT_WS('|', account_id, customer_name, balance, row_version, previous_nodes))), 0) AS x
                FROM account_info WHERE balance_range = ?
                """, [.string(range)]).rows[0]
            d.accounts = [try a.string("n"), try a.string("s"), try a.string("x")]
            let j = try await c.execute("""
                SELECT COUNT(*) AS n, COALESCE(SUM(j.amount * 100), 0) AS s,
                  COALESCE(BIT_XOR(CRC32(CONCAT_WS('|', j.transfer_id, j.attempt, j.account_id, j.amount, j.balance_after))), 0) AS x
                FROM journal j\(history.index) JOIN account_info a ON a.account_id = j.account_id WHERE a.balance_range = ?\(before)
                """, [.string(range)]).rows[0]
            d.postings = [try j.string("n"), try j.string("s"), try j.string("x")]
            let t = try await c.execute("""
                SELECT COUNT(*) AS n, COALESCE(BIT_XOR(CRC32(CONCAT_WS('|', t.transfer_id, t.attempt, t.state, t.request_hash))), 0) AS x
                FROM transfers t\(history.index) JOIN account_info a ON a.account_id = t.home_account WHERE a.balance_range = ?\(history.condition("t.created_at"))
                """, [.string(range)]).rows[0]
            d.decisions = [try t.string("n"), try t.string("x")]
            return d
        }
    }

    /// Where the digests differ, what each node holds of the range, compared row by row: the
    /// target may hold more history of an account than the source only when the account lived on
    /// the target before (its `previous_nodes` name the target). Returns the first difference.
    static func difference(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, history: HistoryWindow = .all) async throws -> String? {
        let whole = history.withAccounts
        let window = history
        func read(_ c: MariaDBConnection) async throws -> (accounts: [Int64: String], history: [String: (account: Int64, text: String)]) {
            try await c.transaction(isolation: .repeatableRead) { c in
                var accounts: [Int64: String] = [:]
                for r in try await c.execute("SELECT CONCAT_WS('|', customer_name, balance, row_version, previous_nodes) AS v, account_id FROM account_info WHERE balance_range = ?",
                                             [.string(spec.range)]).rows {
                    accounts[try r.int64("account_id")] = try r.string("v")
                }
                var history: [String: (Int64, String)] = [:]
                for r in try await c.execute("""
                    SELECT CONCAT('p|', j.transfer_id, '|', j.account_id) AS k, CONCAT_WS('|', j.attempt, j.amount, j.balance_after) AS v, j.account_id
                    FROM journal j\(window.index) JOIN account_info a ON a.account_id = j.account_id WHERE a.balance_range = ?\(window.condition("j.created_at"))
                    UNION ALL
                    SELECT CONCAT('d|', t.transfer_id, '|', t.attempt), CONCAT_WS('|', t.state, t.request_hash), t.home_account
                    FROM transfers t\(window.index) JOIN account_info a ON a.account_id = t.home_account WHERE a.balance_range = ?\(window.condition("t.created_at"))
                    """, [.string(spec.range), .string(spec.range)]).rows {
                    history[try r.string("k")] = (try r.int64("account_id"), try r.string("v"))
                }
                return (accounts, history)
            }
        }
        let (sa, sh) = try await read(s)
        let (ta, th) = try await read(t)
        for (id, v) in sa.sorted(by: { $0.key < $1.key }) where whole && ta[id] != v {
            return ta[id] == nil ? "account \(id) is on \(spec.source) but not copied to \(spec.target)" : "account \(id) differs between \(spec.source) and \(spec.target)"
        }
        if whole, let extra = Set(ta.keys).subtracting(sa.keys).min() { return "account \(extra) is copied to \(spec.target) but not in \(spec.range) on \(spec.source)" }
        for (key, v) in sh.sorted(by: { $0.key < $1.key }) where th[key]?.text != v.text {
            return th[key] == nil ? "\(describe(key)) is on \(spec.source) but not copied to \(spec.target)" : "\(describe(key)) differs between \(spec.source) and \(spec.target)"
        }
        for (key, v) in th.sorted(by: { $0.key < $1.key }) where sh[key] == nil {
            let lived = (sa[v.account] ?? "").split(separator: "|").last.map { $0.split(separator: ",").contains(Substring(spec.target)) } ?? false
            if !lived { return "\(describe(key)) is on \(spec.target) but not on \(spec.source), and account \(v.account) never lived on \(spec.target)" }
        }
        return nil
    }

    private static func describe(_ key: String) -> String {
        let parts = key.split(separator: "|", maxSplits: 2).map(String.init)
        guard parts.count == 3 else { return key }
        return parts[0] == "p" ? "the posting of transfer \(parts[1].prefix(64)) to account \(parts[2])" : "the decision of transfer \(parts[1].prefix(64)) (attempt \(parts[2]))"
    }

    // MARK: clean and undo

    /// Deletes a chunk of the source's moved rows with their postings (all of them: the account's
    /// footprint went to the target). Returns how many accounts it removed.
    static func cleanSourceChunk(_ s: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        try await s.transaction { c in
            // No row any more: an earlier runner of this job finished cleaning (retireSource).
            guard try await ownership(c, map: spec.map, range: spec.range) != nil else { return 0 }
            _ = try await checkSourceLocked(c, spec, state: "moved")
            let ids = try await c.execute("SELECT account_id FROM account_info WHERE balance_range = ? ORDER BY account_id LIMIT \(limit) FOR UPDATE",
                                          [.string(spec.range)]).rows.map { try $0.int64("account_id") }
            guard !ids.isEmpty else { return 0 }
            let values = ids.map { MariaDBValue.int($0) }
            try await c.execute("DELETE FROM journal WHERE account_id IN (\(list(ids.count)))", values)
            try await c.execute("DELETE FROM account_info WHERE balance_range = ? AND account_id IN (\(list(ids.count)))", [.string(spec.range)] + values)
            return ids.count
        }
    }

    static func checkSourceLocked(_ c: MariaDBConnection, _ spec: MoveSpec, state: String) async throws -> OwnershipRow {
        guard let row = try await ownership(c, map: spec.map, range: spec.range, lock: " LOCK IN SHARE MODE"), row.state == state, row.epoch == spec.sourceEpoch else {
            throw MoveError(.conflict, "\(spec.source)'s row for \(spec.range) is no longer \(state) at epoch \(spec.sourceEpoch)")
        }
        return row
    }

    /// The source's decision rows that the target holds too (the ones the move copied), after
    /// `after`; deleted by the caller once nothing prepared may still ask the source for them.
    /// Those whose home account is not on the source; and those whose home account came back to
    /// the source from the target after the switch (a crossing: its `previous_nodes` name the
    /// target, so a retry of the key still finds the target's copy) — else the decision would be
    /// kept on both nodes.
    static func movedDecisions(_ s: MariaDBConnection, _ t: MariaDBConnection, target: String, after: String, limit: Int) async throws -> (keys: [(String, String)], last: String?) {
        let rows = try await s.execute("""
            SELECT t.transfer_id, t.attempt FROM transfers t LEFT JOIN account_info a ON a.account_id = t.home_account
            WHERE t.home_account IS NOT NULL AND t.transfer_id > ?
              AND (a.account_id IS NULL OR FIND_IN_SET(?, a.previous_nodes) > 0)
            ORDER BY t.transfer_id LIMIT \(limit)
            """, [.string(after), .string(target)]).rows
        guard !rows.isEmpty else { return ([], nil) }
        let keys = try rows.map { (try $0.string("transfer_id"), try $0.string("attempt")) }
        let onTarget = Set(try await t.execute("SELECT transfer_id, attempt FROM transfers WHERE (transfer_id, attempt) IN (\(keys.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                                               keys.flatMap { [.string($0.0), .string($0.1)] }).rows.map { "\(try $0.string("transfer_id"))\u{0}\(try $0.string("attempt"))" })
        return (keys.filter { onTarget.contains("\($0.0)\u{0}\($0.1)") }, keys.last?.0)
    }

    static func deleteDecisions(_ c: MariaDBConnection, _ keys: [(String, String)]) async throws {
        guard !keys.isEmpty else { return }
        try await c.execute("DELETE FROM transfers WHERE (transfer_id, attempt) IN (\(keys.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                            keys.flatMap { [.string($0.0), .string($0.1)] })
    }

    /// The end of a move on the source: its row for the range goes; the triggers go too when no
    /// other range there captures.
    static func retireSource(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await clearChanges(s, spec)
        try await s.execute("DELETE FROM range_ownership WHERE map_name = ? AND range_id = ? AND epoch = ? AND state = 'moved'",
                            [.string(spec.map), .string(spec.range), .int(spec.sourceEpoch)])
        try await removeTriggersIfIdle(s)
    }

    static func removeTriggersIfIdle(_ s: MariaDBConnection) async throws {
        let capturing = try await s.execute("SELECT COUNT(*) AS n FROM range_ownership WHERE capture = 1").rows.first?.int64("n") ?? 0
        if capturing == 0 { try await withShortDDLWait(s) { try await BankSchema.removeCaptureTriggers($0) } }
    }

    /// Undo on the source: active again, no capture, no log (only while the target has not
    /// activated the range: the caller checks).
    static func restoreSource(_ s: MariaDBConnection, _ spec: MoveSpec) async throws {
        // The epoch goes one up: a runner of this job that wakes late matches nothing here.
        try await s.execute("UPDATE range_ownership SET state = 'active', capture = 0, epoch = ? WHERE map_name = ? AND range_id = ? AND epoch = ? AND state IN ('active', 'frozen', 'moved')",
                            [.int(spec.sourceEpoch + 1), .string(spec.map), .string(spec.range), .int(spec.sourceEpoch)])
        guard let row = try await ownership(s, map: spec.map, range: spec.range), row.state == "active", row.epoch == spec.sourceEpoch + 1 || row.epoch == spec.sourceEpochBefore else {
            throw MoveError(.conflict, "\(spec.source)'s ownership of \(spec.map) range \(spec.range) changed under the undo")
        }
        try await clearChanges(s, spec)
        try await removeTriggersIfIdle(s)
    }

    /// Undo on the target: a chunk of its copies removed (their postings and decisions that the
    /// source has too). Returns how many accounts it removed.
    static func undoTargetChunk(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        let ids = try await t.execute("SELECT account_id FROM account_info WHERE balance_range = ? ORDER BY account_id LIMIT \(limit)",
                                      [.string(spec.range)]).rows.map { try $0.int64("account_id") }
        guard !ids.isEmpty else { return 0 }
        let f = try await footprint(s, ids)
        try await t.transaction { c in
            try await fenceTarget(c, spec)
            try await deleteCopies(c, of: ids, footprint: f, spec)
        }
        return ids.count
    }

    /// A runner taking the move over raises the target's epoch: the runner it replaces, should it
    /// wake, can no longer copy into the target (its copies share-lock the row at the old epoch).
    static func raiseTargetEpoch(_ t: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await t.execute("UPDATE range_ownership SET epoch = ? WHERE map_name = ? AND range_id = ? AND state = 'incoming' AND epoch < ?",
                            [.int(spec.targetEpoch), .string(spec.map), .string(spec.range), .int(spec.targetEpoch)])
    }

    /// Cut-off for immutable history, in the source's clock: ten seconds ago.
    static func historyCutoff(_ s: MariaDBConnection) async throws -> String {
        try await s.execute("SELECT DATE_FORMAT(NOW(6) - INTERVAL 10 SECOND, '%Y-%m-%d %H:%i:%s.%f') AS t").rows[0].string("t")
    }

    static func retireTarget(_ t: MariaDBConnection, _ spec: MoveSpec) async throws {
        try await t.execute("DELETE FROM range_ownership WHERE map_name = ? AND range_id = ? AND state = 'incoming' AND epoch <= ?",
                            [.string(spec.map), .string(spec.range), .int(spec.targetEpoch)])
    }
}
