import MariaDB

/// A move's steps on what a range holds, for either shard map: an accounts range holds account
/// rows with their postings and the decisions they are home of (``MoveSQL``); a directory range
/// holds directory entries, the decisions of the openings keyed into it and the claims of those
/// keys (``DirectoryMoveSQL``).
enum RangeContent {
    static func isDirectory(_ spec: MoveSpec) -> Bool { spec.map == "directory" }

    /// The range's keys (account ids) on the source after `after`, ascending.
    static func keys(_ s: MariaDBConnection, _ spec: MoveSpec, after: Int64?, limit: Int) async throws -> [Int64] {
        let (table, column) = isDirectory(spec) ? ("account_directory", "directory_range") : ("account_info", "balance_range")
        return try await s.execute("SELECT account_id FROM \(table) WHERE \(column) = ? AND account_id > ? ORDER BY account_id LIMIT \(limit)",
                                   [.string(spec.range), .int(after ?? Int64.min)]).rows.map { try $0.int64("account_id") }
    }

    /// How many rows a node holds labelled with the range.
    static func rowCount(_ c: MariaDBConnection, _ spec: MoveSpec) async throws -> Int64 {
        let (table, column) = isDirectory(spec) ? ("account_directory", "directory_range") : ("account_info", "balance_range")
        return try await c.execute("SELECT COUNT(*) AS n FROM \(table) WHERE \(column) = ?", [.string(spec.range)]).rows.first?.int64("n") ?? 0
    }

    /// Makes the target's copies of `ids` equal the source's; returns how many are copied.
    static func sync(_ ids: [Int64], source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, since: String? = nil) async throws -> Int {
        if isDirectory(spec) { return try await DirectoryMoveSQL.sync(ids, source: s, target: t, spec).kept }
        return try await MoveSQL.sync(ids, source: s, target: t, spec, since: since).kept
    }

    /// History that the change log does not cover, copied before it is compared: a directory
    /// range's opening decisions and key claims (an account's history goes with its row in ``sync(_:source:target:_:since:)``).
    static func copyHistory(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, window: MoveSQL.HistoryWindow) async throws {
        if isDirectory(spec) {
            try await DirectoryMoveSQL.copyOpenings(source: s, target: t, spec, window: window)
            try await DirectoryMoveSQL.copyClaims(source: s, target: t, spec, window: window)
        }
    }

    static func digest(_ c: MariaDBConnection, _ spec: MoveSpec, history: MoveSQL.HistoryWindow) async throws -> MoveSQL.Digest {
        if isDirectory(spec) { return try await DirectoryMoveSQL.digest(c, spec, history: history) }
        return try await MoveSQL.digest(c, range: spec.range, history: history)
    }

    static func difference(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, history: MoveSQL.HistoryWindow) async throws -> String? {
        if isDirectory(spec) { return try await DirectoryMoveSQL.difference(source: s, target: t, spec, history: history) }
        return try await MoveSQL.difference(source: s, target: t, spec, history: history)
    }

    static func cleanSourceChunk(_ s: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        if isDirectory(spec) { return try await DirectoryMoveSQL.cleanSourceChunk(s, spec, limit: limit) }
        return try await MoveSQL.cleanSourceChunk(s, spec, limit: limit)
    }

    static func undoTargetChunk(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec, limit: Int) async throws -> Int {
        if isDirectory(spec) { return try await DirectoryMoveSQL.undoTargetChunk(source: s, target: t, spec, limit: limit) }
        return try await MoveSQL.undoTargetChunk(source: s, target: t, spec, limit: limit)
    }

    /// Deletes the source's decision rows that the move gave to the target (the caller waits until
    /// nothing prepared may still ask the source for them).
    ///
    /// Each delete share-locks the source's row, which must still be `moved` at the job's epoch: a
    /// runner that slept through a takeover (and the range's move back) deletes nothing. With the
    /// row gone, an earlier runner finished cleaning.
    static func deleteMovedDecisions(source s: MariaDBConnection, target t: MariaDBConnection, _ spec: MoveSpec) async throws {
        guard try await MoveSQL.ownership(s, map: spec.map, range: spec.range) != nil else { return }
        func delete(_ keys: [(String, String)]) async throws {
            for start in stride(from: 0, to: keys.count, by: 500) {
                try await s.transaction { c in
                    _ = try await MoveSQL.checkSourceLocked(c, spec, state: "moved")
                    try await MoveSQL.deleteDecisions(c, Array(keys[start..<min(start + 500, keys.count)]))
                }
            }
        }
        if isDirectory(spec) {
            try await delete(try await DirectoryMoveSQL.movedOpenings(s, t, spec))
            let claims = try await DirectoryMoveSQL.movedClaims(s, t, spec)
            for start in stride(from: 0, to: claims.count, by: 500) {
                try await s.transaction { c in
                    _ = try await MoveSQL.checkSourceLocked(c, spec, state: "moved")
                    try await DirectoryMoveSQL.deleteClaims(c, Array(claims[start..<min(start + 500, claims.count)]))
                }
            }
            return
        }
        var after = ""
        while true {
            let (keys, last) = try await MoveSQL.movedDecisions(s, t, target: spec.target, after: after, limit: 1000)
            try await delete(keys)
            guard let last else { return }
            after = last
        }
    }
}
