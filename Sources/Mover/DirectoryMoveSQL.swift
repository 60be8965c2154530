import Ledger
import MariaDB
import Sharding

/// The SQL of a directory range's move: what the range holds on its node is its directory entries
/// (`account_directory` rows labelled with it) and the decisions of the account openings whose
/// idempotency key hashes into it (an opening keeps its decision on the key's directory node, so
/// that a retry finds it whatever balance it names). Entries are copied and caught up by key as
/// account rows are (the capture triggers log them); opening decisions are never changed once
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

    /// The opening decisions on a node whose key hashes into the range, in `window` (by the time
    /// index for the last seconds; otherwise every opening, read in chunks by key).
    static func openings(_ c: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws -> [MariaDBRow] {
        func mine(_ r: MariaDBRow) throws -> Bool { spec.keyBounds.contains(DirectoryHash.key(forIdempotencyKey: try r.string("transfer_id"))) }
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

    /// The earliest opening keyed into the range that the ledger logged under capture (one second
    /// early), in the source's clock: an opening's decision may commit long after it was written, so
    /// the freeze copies the openings from then on too. Nil for none (or an accounts range).
    static func firstLoggedOpening(_ s: MariaDBConnection, _ spec: MoveSpec) async throws -> String? {
        guard RangeContent.isDirectory(spec) else { return nil }
        return try await s.execute("""
            SELECT DATE_FORMAT(MIN(changed_at) - INTERVAL 1 SECOND, '%Y-%m-%d %H:%i:%s.%f') AS t FROM range_changes WHERE map_name = 'openings' AND range_id = ?
            """, [.string(spec.range)]).rows.first?.optionalString("t")
    }

    /// Copies the source's opening decisions of the range in `window` to the target (a key the
    /// target holds for another request stops the move, naming it).
    static func copyOpenings(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws {
        let rows = try await openings(s, spec, window: window)
        for start in stride(from: 0, to: rows.count, by: 1000) {
            let batch = Array(rows[start..<min(start + 1000, rows.count)])
            try await t.transaction { c in
                try await MoveSQL.fenceTarget(c, spec)
                try await MoveSQL.checkDecisions(c, batch, spec)
                try await MoveSQL.upsert(c, table: "transfers", columns: MoveSQL.decisionColumns, rows: batch, update: "state = VALUES(state)")
            }
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
            d.decisions = [String(rows.count), String(sum)]
            return d
        }
    }

    /// The first difference between the nodes' entries and opening decisions of the range.
    static func difference(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, history: MoveSQL.HistoryWindow) async throws -> String? {
        func read(_ c: MariaDBConnection) async throws -> (entries: [Int64: String], openings: [String: String]) {
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
                return (entries, openings)
            }
        }
        let (se, so) = try await read(s)
        let (te, to) = try await read(t)
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
        return nil
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
    /// opening decisions it holds that the source holds too. Returns how many entries it removed.
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
