import Ledger
import MariaDB
import Sharding

/// The SQL of a directory range's move: what the range holds on its node is its directory entries
/// (`account_directory` rows labelled with it), the decisions of the account openings whose
/// idempotency key hashes into it (an opening keeps its decision on the key's directory node, so
/// that a retry finds it whatever balance it names) and the claims of those keys (`key_claims`:
/// every request claims its key there). Entries are copied and caught up by key as account rows
/// are (the capture triggers log them); opening decisions and claims are never changed once
/// written, so they are copied whole before the comparison and, inside the freeze, those written
/// since its cut-off. Every step can run again, as ``MoveSQL``'s can.
enum DirectoryMoveSQL {
    static let entryColumns = "account_id, directory_range, data_node, data_range, previous_nodes, updated_at"

    // MARK: entries

    /// Makes the target's entries of `ids` equal the source's: an entry in the range is upserted;
    /// a copy whose entry the source no longer holds in the range is removed. An entry on the target
    /// in another range is never touched.
    @discardableResult
    static func sync(_ ids: [Int64], source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec) async throws -> (kept: Int, removed: Int) {
        guard !ids.isEmpty else { return (0, 0) }
        var source: [Int64: MariaDBRow] = [:]
        for r in try await s.execute("SELECT \(entryColumns) FROM account_directory WHERE account_id IN (\(MoveSQL.list(ids.count)))", ids.map { .int($0) }).rows
        where try r.string("directory_range") == spec.range {
            source[try r.int64("account_id")] = r
        }
        return try await t.transaction { c in
            try await MoveSQL.fenceTarget(c, spec)
            var existing: [Int64: String] = [:]
            for r in try await c.execute("SELECT account_id, directory_range FROM account_directory WHERE account_id IN (\(MoveSQL.list(ids.count))) FOR UPDATE",
                                         ids.map { .int($0) }).rows {
                existing[try r.int64("account_id")] = try r.string("directory_range")
            }
            let keep = ids.filter { source[$0] != nil && (existing[$0] == nil || existing[$0] == spec.range) }
            let drop = ids.filter { source[$0] == nil && existing[$0] == spec.range }
            try await MoveSQL.upsert(c, table: "account_directory", columns: entryColumns, rows: keep.compactMap { source[$0] },
                                     update: "data_node = VALUES(data_node), data_range = VALUES(data_range), previous_nodes = VALUES(previous_nodes), updated_at = VALUES(updated_at)")
            if !drop.isEmpty {
                try await c.execute("DELETE FROM account_directory WHERE directory_range = ? AND account_id IN (\(MoveSQL.list(drop.count)))",
                                    [.string(spec.range)] + drop.map { .int($0) })
            }
            return (keep.count, drop.count)
        }
    }

    // MARK: opening decisions

    /// Whether a row's idempotency key (`transfer_id`) hashes into the range.
    private static func keyedInto(_ spec: MoveSpec) -> (MariaDBRow) throws -> Bool {
        { spec.keyBounds.contains(DirectoryHash.key(forIdempotencyKey: try $0.string("transfer_id"))) }
    }

    /// The opening decisions on a node whose key hashes into the range, in `window` (by the time
    /// index for the last seconds; otherwise every opening, read in chunks by key).
    static func openings(_ c: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws -> [MariaDBRow] {
        let mine = keyedInto(spec)
        if case .since(let t) = window {
            return try await c.execute("SELECT \(MoveSQL.decisionColumns) FROM transfers FORCE INDEX (by_time) WHERE created_at >= '\(t)' AND kind = 'open'").rows.filter(mine)
        }
        var found: [MariaDBRow] = []
        var after = ""
        while true {
            let rows = try await c.execute("SELECT \(MoveSQL.decisionColumns) FROM transfers WHERE kind = 'open' AND transfer_id > ?\(window.condition("created_at")) ORDER BY transfer_id LIMIT 5000",
                                           [.string(after)]).rows
            found += try rows.filter(mine)
            guard rows.count == 5000, let last = rows.last else { return found }
            after = try last.string("transfer_id")
        }
    }

    // MARK: key claims

    static let claimColumns = "transfer_id, key_hash, kind, home_account, request_hash, claimed_at"

    /// The claims whose stored hash lies in the range (`by_hash`, in chunks by hash and key; the
    /// time index for the last seconds): a move reads its range's claims, not every claim of the node.
    private static func claimsByHash(_ c: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws -> [MariaDBRow] {
        let bounds = "key_hash >= ?" + (spec.keyBounds.upper == nil ? "" : " AND key_hash < ?")
        let boundValues: [MariaDBValue] = [.int(spec.keyBounds.lower)] + (spec.keyBounds.upper.map { [MariaDBValue.int($0)] } ?? [])
        if case .since(let t) = window {
            return try await c.execute("SELECT \(claimColumns) FROM key_claims FORCE INDEX (by_time) WHERE claimed_at >= '\(t)' AND \(bounds)", boundValues).rows
        }
        var found: [MariaDBRow] = []
        var after: (hash: Int64, key: String)?
        while true {
            let cursor = after == nil ? "" : " AND (key_hash > ? OR (key_hash = ? AND transfer_id > ?))"
            let cursorValues: [MariaDBValue] = after.map { [.int($0.hash), .int($0.hash), .string($0.key)] } ?? []
            let rows = try await c.execute("SELECT \(claimColumns) FROM key_claims FORCE INDEX (by_hash) WHERE \(bounds)\(cursor)\(window.condition("claimed_at")) ORDER BY key_hash, transfer_id LIMIT 5000",
                                           boundValues + cursorValues).rows
            found += rows
            guard rows.count == 5000, let last = rows.last else { return found }
            after = (try last.int64("key_hash"), try last.string("transfer_id"))
        }
    }

    /// The key claims on a node whose key hashes into the range, in `window` (a claim is written
    /// once and never changed: copied as the opening decisions are).
    static func claims(_ c: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws -> [MariaDBRow] {
        try await claimsByHash(c, spec, window: window).filter(keyedInto(spec))
    }

    /// Copies the source's claims of the range in `window` to the target. A key the target holds
    /// claimed for another request stops the move, naming it: the copy would overwrite it.
    static func copyClaims(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws {
        try await copy(try await claims(s, spec, window: window), to: t, spec, table: "key_claims", columns: claimColumns, update: "transfer_id = transfer_id") { c, batch in
            let keys = try batch.map { try $0.string("transfer_id") }
            var there: [String: String] = [:]
            for r in try await c.execute("SELECT transfer_id, request_hash FROM key_claims WHERE transfer_id IN (\(MoveSQL.list(keys.count)))", keys.map { .string($0) }).rows {
                there[try r.string("transfer_id")] = try r.string("request_hash")
            }
            for r in batch {
                let key = try r.string("transfer_id")
                if let other = there[key], try other != r.string("request_hash") {
                    throw MoveError(.mismatch, "idempotency key \(key.prefix(64)) is claimed on \(spec.target) for another request than on \(spec.source): the move would overwrite it")
                }
            }
        }
    }

    /// Upserts `rows` into the target's `table` in fenced transactions of 1,000 rows, each after
    /// `check` (which throws when the target holds a key for another request).
    private static func copy(_ rows: [MariaDBRow], to t: MariaDBConnection, _ spec: MoveSpec, table: String, columns: String, update: String,
                             check: @escaping (MariaDBConnection, [MariaDBRow]) async throws -> Void) async throws {
        for start in stride(from: 0, to: rows.count, by: 1000) {
            let batch = Array(rows[start..<min(start + 1000, rows.count)])
            try await t.transaction { c in
                try await MoveSQL.fenceTarget(c, spec)
                try await check(c, batch)
                try await MoveSQL.upsert(c, table: table, columns: columns, rows: batch, update: update)
            }
        }
    }

    /// Those of `keys` that `c` holds claimed too.
    static func claimed(_ keys: [String], on c: MariaDBConnection) async throws -> [String] {
        var found: [String] = []
        for start in stride(from: 0, to: keys.count, by: 500) {
            let batch = Array(keys[start..<min(start + 500, keys.count)])
            found += try await c.execute("SELECT transfer_id FROM key_claims WHERE transfer_id IN (\(MoveSQL.list(batch.count)))",
                                         batch.map { .string($0) }).rows.map { try $0.string("transfer_id") }
        }
        return found
    }

    /// Deletes `keys`' claims on `c` (a transaction of the caller's, fenced), 500 a statement.
    static func deleteClaims(_ c: MariaDBConnection, _ keys: [String]) async throws {
        for start in stride(from: 0, to: keys.count, by: 500) {
            let batch = Array(keys[start..<min(start + 500, keys.count)])
            try await c.execute("DELETE FROM key_claims WHERE transfer_id IN (\(MoveSQL.list(batch.count)))", batch.map { .string($0) })
        }
    }

    /// The source's claims of the range that the target holds too (the ones the move copied).
    static func movedClaims(_ s: MariaDBConnection, _ t: MariaDBConnection, _ spec: MoveSpec) async throws -> [String] {
        try await claimed(try await claims(s, spec, window: .all).map { try $0.string("transfer_id") }, on: t)
    }

    /// The earliest opening or key claim keyed into the range that the ledger logged under capture
    /// and the comparison before the freeze did not cover (``loggedOpenings(_:_:)``), one second
    /// early, in the source's clock: a branch may commit long after it was written (a claim's line
    /// carries its `claimed_at`), so the freeze copies the openings and claims from then on too.
    /// Nil for none (or an accounts range).
    static func firstLoggedOpening(_ s: MariaDBConnection, _ spec: MoveSpec) async throws -> String? {
        guard RangeContent.isDirectory(spec) else { return nil }
        return try await s.execute("""
            SELECT DATE_FORMAT(MIN(changed_at) - INTERVAL 1 SECOND, '%Y-%m-%d %H:%i:%s.%f') AS t FROM range_changes WHERE map_name = 'openings' AND range_id = ?
            """, [.string(spec.range)]).rows.first?.optionalString("t")
    }

    /// The lines of the range's openings and claims logged and committed now (their sequence
    /// numbers). Read before the comparison's copy of the whole history: what they note is
    /// committed, so that copy carries it, and ``forgetLoggedOpenings(_:_:)`` may drop them once the
    /// comparison matched — else, under load, the earliest line would reach back to the start of the
    /// capture and the freeze would copy every opening and claim since.
    static func loggedOpenings(_ s: MariaDBConnection, _ spec: MoveSpec) async throws -> [Int64] {
        guard RangeContent.isDirectory(spec) else { return [] }
        return try await s.execute("SELECT seq FROM range_changes WHERE map_name = 'openings' AND range_id = ?", [.string(spec.range)]).rows.map { try $0.int64("seq") }
    }

    /// Drops the lines ``loggedOpenings(_:_:)`` read (only those: a line numbered between them may
    /// belong to a branch that was not committed then).
    static func forgetLoggedOpenings(_ s: MariaDBConnection, _ seqs: [Int64]) async throws {
        for start in stride(from: 0, to: seqs.count, by: 1000) {
            let batch = seqs[start..<min(start + 1000, seqs.count)]
            try await s.execute("DELETE FROM range_changes WHERE map_name = 'openings' AND seq IN (\(MoveSQL.list(batch.count)))", batch.map { .int($0) })
        }
    }

    /// Copies the source's opening decisions of the range in `window` to the target (a key the
    /// target holds for another request stops the move, naming it).
    static func copyOpenings(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws {
        try await copy(try await openings(s, spec, window: window), to: t, spec, table: "transfers", columns: MoveSQL.decisionColumns, update: "state = VALUES(state)") { c, batch in
            try await MoveSQL.checkDecisions(c, batch, spec)
        }
    }

    // MARK: compare

    /// Count and checksum of the range's entries (not before the freeze: they still change) and of
    /// its opening decisions in `window`.
    static func digest(_ c: MariaDBConnection, _ spec: MoveSpec, history: MoveSQL.HistoryWindow) async throws -> MoveSQL.Digest {
        try await c.transaction(isolation: .repeatableRead) { c in
            var d = MoveSQL.Digest()
            if history.withAccounts {
                let e = try await c.execute("""
                    SELECT COUNT(*) AS n, 0 AS s, COALESCE(BIT_XOR(CRC32(CONCAT_WS('|', account_id, data_node, data_range, previous_nodes))), 0) AS x
                    FROM account_directory WHERE directory_range = ?
                    """, [.string(spec.range)]).rows[0]
                d.accounts = [try e.string("n"), try e.string("s"), try e.string("x")]
            } else {
                d.accounts = ["-", "-", "-"]
            }
            d.postings = ["0", "0", "0"]
            var sum: UInt64 = 0
            let rows = try await openings(c, spec, window: history)
            for r in rows { sum ^= fingerprint(try openingText(r)) }
            var claimSum: UInt64 = 0
            let claimRows = try await claims(c, spec, window: history)
            for r in claimRows { claimSum ^= fingerprint(try claimText(r)) }
            d.decisions = [String(rows.count), String(sum), String(claimRows.count), String(claimSum)]
            return d
        }
    }

    /// The first difference between the nodes' entries and opening decisions of the range.
    static func difference(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, history: MoveSQL.HistoryWindow) async throws -> String? {
        func read(_ c: MariaDBConnection) async throws -> (entries: [Int64: String], openings: [String: String], claims: [String: String]) {
            try await c.transaction(isolation: .repeatableRead) { c in
                var entries: [Int64: String] = [:]
                if history.withAccounts {
                    for r in try await c.execute("SELECT account_id, CONCAT_WS('|', data_node, data_range, previous_nodes) AS v FROM account_directory WHERE directory_range = ?",
                                                 [.string(spec.range)]).rows {
                        entries[try r.int64("account_id")] = try r.string("v")
                    }
                }
                var openings: [String: String] = [:]
                for r in try await self.openings(c, spec, window: history) {
                    openings["\(try r.string("transfer_id"))\u{0}\(try r.string("attempt"))"] = try openingText(r)
                }
                var claims: [String: String] = [:]
                for r in try await self.claims(c, spec, window: history) { claims[try r.string("transfer_id")] = try claimText(r) }
                return (entries, openings, claims)
            }
        }
        let (se, so, sc) = try await read(s)
        let (te, to, tc) = try await read(t)
        for (id, v) in se.sorted(by: { $0.key < $1.key }) where te[id] != v {
            return te[id] == nil ? "the directory entry of account \(id) is on \(spec.source) but not copied to \(spec.target)"
                : "the directory entry of account \(id) differs between \(spec.source) and \(spec.target)"
        }
        if let extra = Set(te.keys).subtracting(se.keys).min() {
            return "the directory entry of account \(extra) is copied to \(spec.target) but not in \(spec.range) on \(spec.source)"
        }
        for (key, v) in so.sorted(by: { $0.key < $1.key }) where to[key] != v {
            let id = key.split(separator: "\u{0}").first.map { String($0.prefix(64)) } ?? key
            return to[key] == nil ? "the opening decision of key \(id) is on \(spec.source) but not copied to \(spec.target)"
                : "the opening decision of key \(id) differs between \(spec.source) and \(spec.target)"
        }
        for (key, v) in sc.sorted(by: { $0.key < $1.key }) where tc[key] != v {
            return tc[key] == nil ? "the claim of idempotency key \(key.prefix(64)) is on \(spec.source) but not copied to \(spec.target)"
                : "the claim of idempotency key \(key.prefix(64)) differs between \(spec.source) and \(spec.target)"
        }
        return nil
    }

    static func claimText(_ r: MariaDBRow) throws -> String {
        [try r.string("transfer_id"), try r.string("kind"), try r.optionalInt64("home_account").map(String.init) ?? "-", try r.string("request_hash")].joined(separator: "|")
    }

    static func openingText(_ r: MariaDBRow) throws -> String {
        [try r.string("transfer_id"), try r.string("attempt"), try r.string("state"), try r.string("request_hash")].joined(separator: "|")
    }

    /// FNV-1a 64 of a row's text: the digest's checksum is their XOR, order-free.
    static func fingerprint(_ text: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return h
    }

    // MARK: clean and undo

    /// Deletes a chunk of the source's moved entries. Returns how many it removed.
    static func cleanSourceChunk(_ s: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        try await s.transaction { c in
            guard try await MoveSQL.ownership(c, map: spec.map, range: spec.range) != nil else { return 0 }
            _ = try await MoveSQL.checkSourceLocked(c, spec, state: "moved")
            let ids = try await c.execute("SELECT account_id FROM account_directory WHERE directory_range = ? ORDER BY account_id LIMIT \(limit) FOR UPDATE",
                                          [.string(spec.range)]).rows.map { try $0.int64("account_id") }
            guard !ids.isEmpty else { return 0 }
            try await c.execute("DELETE FROM account_directory WHERE directory_range = ? AND account_id IN (\(MoveSQL.list(ids.count)))",
                                [.string(spec.range)] + ids.map { .int($0) })
            return ids.count
        }
    }

    /// The source's opening decisions of the range that the target holds too (the ones the move
    /// copied): deleted by the caller once nothing prepared may still ask the source for them.
    static func movedOpenings(_ s: MariaDBConnection, _ t: MariaDBConnection, _ spec: MoveSpec) async throws -> [(String, String)] {
        let keys = try await openings(s, spec, window: .all).map { (try $0.string("transfer_id"), try $0.string("attempt")) }
        return try await both(keys, on: t)
    }

    /// Those of `keys` (transfer id, attempt) that `c` holds too.
    static func both(_ keys: [(String, String)], on c: MariaDBConnection) async throws -> [(String, String)] {
        var found: [(String, String)] = []
        for start in stride(from: 0, to: keys.count, by: 500) {
            let batch = Array(keys[start..<min(start + 500, keys.count)])
            let there = Set(try await c.execute("SELECT transfer_id, attempt FROM transfers WHERE (transfer_id, attempt) IN (\(batch.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                                                batch.flatMap { [.string($0.0), .string($0.1)] }).rows.map { "\(try $0.string("transfer_id"))\u{0}\(try $0.string("attempt"))" })
            found += batch.filter { there.contains("\($0.0)\u{0}\($0.1)") }
        }
        return found
    }

    /// Undo on the target: a chunk of its copied entries removed, then (when none is left) the
    /// opening decisions and key claims it holds that the source holds too. Returns how many entries it removed.
    static func undoTargetChunk(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        let ids = try await t.execute("SELECT account_id FROM account_directory WHERE directory_range = ? ORDER BY account_id LIMIT \(limit)",
                                      [.string(spec.range)]).rows.map { try $0.int64("account_id") }
        if ids.isEmpty {
            // The target never served the range: an opening of it there is a copy of the source's.
            let copies = try await both(try await openings(t, spec, window: .all).map { (try $0.string("transfer_id"), try $0.string("attempt")) }, on: s)
            for start in stride(from: 0, to: copies.count, by: 500) {
                let batch = Array(copies[start..<min(start + 500, copies.count)])
                try await t.transaction { c in
                    try await MoveSQL.fenceTarget(c, spec)
                    try await MoveSQL.deleteDecisions(c, batch)
                }
            }
            let claimCopies = try await claimed(try await claims(t, spec, window: .all).map { try $0.string("transfer_id") }, on: s)
            for start in stride(from: 0, to: claimCopies.count, by: 500) {
                try await t.transaction { c in
                    try await MoveSQL.fenceTarget(c, spec)
                    try await deleteClaims(c, Array(claimCopies[start..<min(start + 500, claimCopies.count)]))
                }
            }
            return 0
        }
        try await t.transaction { c in
            try await MoveSQL.fenceTarget(c, spec)
            try await c.execute("DELETE FROM account_directory WHERE directory_range = ? AND account_id IN (\(MoveSQL.list(ids.count)))",
                                [.string(spec.range)] + ids.map { .int($0) })
        }
        return ids.count
    }
}
