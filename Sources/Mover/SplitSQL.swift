import MariaDB
import Sharding
import Synchronization

/// What a split divides: range `range` of `map` on `node`, `[lower, upper)`, at `at`.
struct SplitSpec: Sendable, Hashable {
    var map: String
    var range: String
    var newRange: String
    var node: String
    var lower: Int64
    var upper: Int64?
    var at: Int64
    /// The old row's epoch when the job was created; the new row starts with it.
    var epoch: Int64

    /// The table holding the map's rows and the column naming their range.
    var table: String { map == "accounts" ? "account_info" : "account_directory" }
    var column: String { map == "accounts" ? "balance_range" : "directory_range" }

    /// The split key as the SQL literal of a balance (accounts maps): minor units as a decimal.
    var atDecimal: String { Money(minorUnits: at).description }

    /// A row's key: its balance in minor units (accounts), or its account id's directory hash.
    func key(account: Int64, cents: Int64?) -> Int64 { cents ?? DirectoryHash.key(forAccount: account) }
}

/// The SQL of a split's steps on the range's node. Every step can run again after a crash: the
/// new row is added once, relabels only touch rows of the old range at or above the key, and the
/// narrowing is skipped when the old row is narrow already.
enum SplitSQL {
    /// Adds the new range's ownership row `[at, upper)` (active, the old row's epoch), checking
    /// under the old row's share lock that the node still holds the range as the job recorded it.
    static func addRange(_ c: MariaDBConnection, _ spec: SplitSpec) async throws {
        try await c.transaction { c in
            guard let old = try await MoveSQL.ownership(c, map: spec.map, range: spec.range, lock: " LOCK IN SHARE MODE") else {
                throw MoveError(.conflict, "\(spec.node) has no ownership row for \(spec.map) range \(spec.range)")
            }
            guard old.state == "active", old.lower == spec.lower, old.upper == spec.upper || old.upper == spec.at else {
                throw MoveError(.conflict, "\(spec.node) holds \(spec.range) as \(old.state) [\(old.lower), \(old.upper.map(String.init) ?? "∞")), not as the split recorded it: the range changed")
            }
            if let new = try await MoveSQL.ownership(c, map: spec.map, range: spec.newRange, lock: " FOR UPDATE") {
                guard new.lower == spec.at, new.upper == spec.upper else {
                    throw MoveError(.conflict, "\(spec.node) already holds a range \(spec.newRange) with other bounds")
                }
                return
            }
            try await c.execute("""
                INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state)
                VALUES (?, ?, ?, ?, ?, 'active')
                """, [.string(spec.map), .string(spec.newRange), .int(spec.at), spec.upper.map { .int($0) } ?? .null, .int(spec.epoch)])
        }
    }

    /// Removes the new range's row (a cancelled split): only while no row is labelled with it.
    static func removeRange(_ c: MariaDBConnection, _ spec: SplitSpec) async throws {
        try await c.transaction { c in
            guard try await MoveSQL.ownership(c, map: spec.map, range: spec.newRange, lock: " FOR UPDATE") != nil else { return }
            let labelled = try await c.execute("SELECT COUNT(*) AS n FROM \(spec.table) WHERE \(spec.column) = ?", [.string(spec.newRange)]).rows[0].int64("n")
            guard labelled == 0 else {
                throw MoveError(.conflict, "\(labelled) rows on \(spec.node) are labelled \(spec.newRange) already: the split can only go forward")
            }
            try await c.execute("DELETE FROM range_ownership WHERE map_name = ? AND range_id = ?", [.string(spec.map), .string(spec.newRange)])
        }
    }

    /// The old range's rows after `after` (by account id, at most `limit`), locked; those at or
    /// above the split key are relabelled. Their directory entries are pointed later (the ledger
    /// takes an entry naming any range on the row's node meanwhile). Returns the last account id
    /// read and how many rows were read.
    static func relabelChunk(_ c: MariaDBConnection, _ spec: SplitSpec, after: Int64?, limit: Int) async throws -> (last: Int64?, read: Int) {
        try await c.transaction { c in
            let cents = spec.map == "accounts" ? ", CAST(balance * 100 AS SIGNED) AS k" : ""
            let rows = try await c.execute("""
                SELECT account_id\(cents) FROM \(spec.table) WHERE \(spec.column) = ? AND account_id > ?
                ORDER BY account_id LIMIT \(limit) FOR UPDATE
                """, [.string(spec.range), .int(after ?? .min)]).rows
            var upper: [Int64] = []
            for r in rows {
                let id = try r.int64("account_id")
                if spec.key(account: id, cents: spec.map == "accounts" ? try r.int64("k") : nil) >= spec.at { upper.append(id) }
            }
            try await relabel(c, spec, upper)
            return (try rows.last?.int64("account_id"), rows.count)
        }
    }

    static func relabel(_ c: MariaDBConnection, _ spec: SplitSpec, _ ids: [Int64]) async throws {
        for start in stride(from: 0, to: ids.count, by: 1000) {
            let chunk = Array(ids[start..<min(start + 1000, ids.count)])
            try await c.execute("UPDATE \(spec.table) SET \(spec.column) = ? WHERE \(spec.column) = ? AND account_id IN (\(MoveSQL.list(chunk.count)))",
                                [.string(spec.newRange), .string(spec.range)] + chunk.map { .int($0) })
        }
    }

    struct NarrowTimeout: Error {}

    /// In one transaction under the old row's exclusive lock (waiting at most a second for the
    /// writes holding its share lock: ``NarrowTimeout``): the rows written under the old range at
    /// or above the key since the relabel passed are relabelled, and the old row narrowed to
    /// `[lower, at)`. Returns the relabelled stragglers' account ids, how long the lock was waited
    /// for, and how long the transaction held it (writes to the old range wait that long).
    static func narrow(_ c: MariaDBConnection, _ spec: SplitSpec) async throws -> (stragglers: [Int64], lockWait: Duration, held: Duration) {
        try await c.query("SET SESSION innodb_lock_wait_timeout = 1")
        do {
            let started = ContinuousClock.now
            let locked = Mutex<ContinuousClock.Instant?>(nil)
            let stragglers = try await c.transaction { c -> [Int64] in
                let row = try await MoveSQL.ownership(c, map: spec.map, range: spec.range, lock: " FOR UPDATE")
                locked.withLock { $0 = .now }
                guard let old = row else {
                    throw MoveError(.conflict, "\(spec.node) has no ownership row for \(spec.range)")
                }
                if old.upper == spec.at { return [] } // narrowed already (an earlier runner's answer was lost)
                guard old.state == "active", old.upper == spec.upper else {
                    throw MoveError(.conflict, "\(spec.node) holds \(spec.range) as \(old.state) up to \(old.upper.map(String.init) ?? "∞"), not as the split recorded it")
                }
                var ids: [Int64] = []
                if spec.map == "accounts" {
                    ids = try await c.execute("SELECT account_id FROM account_info WHERE balance_range = ? AND balance >= \(spec.atDecimal) FOR UPDATE",
                                              [.string(spec.range)]).rows.map { try $0.int64("account_id") }
                } else {
                    ids = try await c.execute("SELECT account_id FROM account_directory WHERE directory_range = ? FOR UPDATE", [.string(spec.range)]).rows
                        .map { try $0.int64("account_id") }.filter { spec.key(account: $0, cents: nil) >= spec.at }
                }
                try await relabel(c, spec, ids)
                try await c.execute("UPDATE range_ownership SET upper_bound = ? WHERE map_name = ? AND range_id = ?",
                                    [.int(spec.at), .string(spec.map), .string(spec.range)])
                return ids
            }
            let ended = ContinuousClock.now
            try await c.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            let at = locked.withLock { $0 } ?? ended
            return (stragglers, at - started, ended - at)
        } catch {
            _ = try? await c.query("SET SESSION innodb_lock_wait_timeout = DEFAULT")
            // A lock wait timeout, or a deadlock with a write that locked its rows before its fence.
            if let e = error as? MariaDBError, e.errorNumber == 1205 || e.errorNumber == 1213 { throw NarrowTimeout() }
            throw error
        }
    }

    /// The new range's account ids after `after` (by id, at most `limit`), read without locks
    /// (``lockNewRangeRows(_:_:_:)`` confirms them).
    static func newRangeIDs(_ c: MariaDBConnection, _ spec: SplitSpec, after: Int64?, limit: Int) async throws -> [Int64] {
        try await c.execute("SELECT account_id FROM account_info WHERE balance_range = ? AND account_id > ? ORDER BY account_id LIMIT \(limit)",
                            [.string(spec.newRange), .int(after ?? .min)]).rows.map { try $0.int64("account_id") }
    }

    /// Of `ids`, those still in the new range, share-locked: no transfer changes their range
    /// until the transaction ends.
    static func lockNewRangeRows(_ c: MariaDBConnection, _ spec: SplitSpec, _ ids: [Int64]) async throws -> Set<Int64> {
        // By primary key: only these rows are locked (a range scan would lock its gaps too).
        Set(try await c.execute("SELECT account_id FROM account_info FORCE INDEX (PRIMARY) WHERE account_id IN (\(MoveSQL.list(ids.count))) AND balance_range = ? LOCK IN SHARE MODE",
                                ids.map { .int($0) } + [.string(spec.newRange)]).rows.map { try $0.int64("account_id") })
    }

    /// On a directory node: fences the directory ranges holding `ids`' entries as a write does
    /// (share lock on each range's ownership row, active, every hash inside its bounds; else
    /// ``DirectoryBusy``: the map is behind or the range is moving) and locks the entries.
    static func lockEntries(_ c: MariaDBConnection, _ ids: [Int64], ranges: [String: [Int64]]) async throws {
        for (range, members) in ranges.sorted(by: { $0.key < $1.key }) {
            guard let owned = try await MoveSQL.ownership(c, map: "directory", range: range, lock: " LOCK IN SHARE MODE"), owned.state == "active",
                  members.allSatisfy({ h in h >= owned.lower && owned.upper.map { h < $0 } ?? true }) else {
                throw DirectoryBusy(ranges: [range])
            }
        }
        _ = try await c.execute("SELECT account_id FROM account_directory WHERE account_id IN (\(MoveSQL.list(ids.count))) FOR UPDATE", ids.map { .int($0) })
    }

    /// The entries of `ids` that name the old range name the new one.
    static func pointEntries(_ c: MariaDBConnection, _ spec: SplitSpec, _ ids: [Int64]) async throws {
        guard !ids.isEmpty else { return }
        try await c.execute("UPDATE account_directory SET data_range = ? WHERE data_range = ? AND account_id IN (\(MoveSQL.list(ids.count)))",
                            [.string(spec.newRange), .string(spec.range)] + ids.map { .int($0) })
    }

    /// Directory ranges not active on the node they were looked for (in a move's switch): the step is retried.
    struct DirectoryBusy: Error, CustomStringConvertible {
        var ranges: [String]
        var description: String { "directory range(s) \(ranges.joined(separator: ", ")) not active where the map says (moving?)" }
    }

    /// The key that halves the range by rows: the middle row's balance in minor units (by
    /// balance), or the middle entry's hash (directory); with the row count, how many rows hold
    /// exactly that key, and the smallest key above it (nil: none). Nil for an empty range.
    static func median(_ c: MariaDBConnection, map: String, range: String) async throws -> Median? {
        if map == "accounts" {
            let n = try await c.execute("SELECT COUNT(*) AS n FROM account_info WHERE balance_range = ?", [.string(range)]).rows[0].int64("n")
            guard n > 0 else { return nil }
            let key = try await c.execute("SELECT CAST(balance * 100 AS SIGNED) AS k FROM account_info WHERE balance_range = ? ORDER BY balance LIMIT 1 OFFSET \(n / 2)",
                                          [.string(range)]).rows[0].int64("k")
            let at = Money(minorUnits: key).description
            let same = try await c.execute("SELECT COUNT(*) AS n FROM account_info WHERE balance_range = ? AND balance = \(at)", [.string(range)]).rows[0].int64("n")
            let next = try await c.execute("SELECT CAST(MIN(balance) * 100 AS SIGNED) AS k FROM account_info WHERE balance_range = ? AND balance > \(at)",
                                           [.string(range)]).rows[0].optionalInt64("k")
            return Median(key: key, rows: n, atKey: same, next: next)
        }
        let hashes = try await c.execute("SELECT account_id FROM account_directory WHERE directory_range = ?", [.string(range)]).rows
            .map { DirectoryHash.key(forAccount: try $0.int64("account_id")) }.sorted()
        guard !hashes.isEmpty else { return nil }
        let key = hashes[hashes.count / 2]
        return Median(key: key, rows: Int64(hashes.count), atKey: 1, next: hashes.first { $0 > key })
    }

    struct Median: Sendable, Hashable {
        var key: Int64
        var rows: Int64
        var atKey: Int64
        var next: Int64?
    }
}
