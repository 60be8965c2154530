import Ledger
import MariaDB

/// The SQL of a drain's last step: the history a draining node holds of accounts that live
/// elsewhere (they left it by a crossing, which leaves history where it was made) goes to each
/// account's node, in one two-phase transaction per account, and the node leaves the account's
/// `previous_nodes` (on its row and its directory entry), so that no retry looks there again.
enum RehomeSQL {
    /// `previous_nodes` without `node` (a comma-separated list).
    static func without(_ column: String) -> String {
        "TRIM(BOTH ',' FROM REPLACE(CONCAT(',', \(column), ','), CONCAT(',', ?, ','), ','))"
    }

    /// The accounts that the drain must rehome: those with postings or decisions on `node`, and
    /// (read on every other node) those whose row or directory entry names `node` as a previous node.
    static func accountsOn(_ c: MariaDBConnection) async throws -> Set<Int64> {
        var ids = Set(try await c.execute("SELECT DISTINCT account_id FROM journal").rows.map { try $0.int64("account_id") })
        ids.formUnion(try await c.execute("SELECT DISTINCT home_account FROM transfers WHERE home_account IS NOT NULL").rows.map { try $0.int64("home_account") })
        return ids
    }

    static func accountsNaming(_ c: MariaDBConnection, node: String) async throws -> Set<Int64> {
        var ids = Set(try await c.execute("SELECT account_id FROM account_info WHERE FIND_IN_SET(?, previous_nodes) > 0", [.string(node)]).rows.map { try $0.int64("account_id") })
        ids.formUnion(try await c.execute("SELECT account_id FROM account_directory WHERE FIND_IN_SET(?, previous_nodes) > 0", [.string(node)]).rows.map { try $0.int64("account_id") })
        return ids
    }

    /// What the draining node holds of one account, read in one snapshot.
    struct History: Sendable {
        var postings: [MariaDBRow] = []
        var decisions: [MariaDBRow] = []
        var isEmpty: Bool { postings.isEmpty && decisions.isEmpty }
    }

    static func history(_ c: MariaDBConnection, of account: Int64) async throws -> History {
        try await c.transaction(isolation: .repeatableRead) { c in
            var h = History()
            h.postings = try await c.execute("SELECT \(MoveSQL.journalColumns) FROM journal FORCE INDEX (by_account) WHERE account_id = ? ORDER BY entry_id", [.int(account)]).rows
            h.decisions = try await c.execute("SELECT \(MoveSQL.decisionColumns) FROM transfers FORCE INDEX (by_home) WHERE home_account = ?", [.int(account)]).rows
            return h
        }
    }

    /// The account's node's part (the commit point's local transaction): the account's row locked
    /// where its range is served `active` (else the location is stale: ``Stale``), the history
    /// upserted, the node taken out of the row's `previous_nodes`.
    static func receive(_ c: MariaDBConnection, account: Int64, history: History, leaving node: String, spec: MoveSpec) async throws {
        guard let range = try await c.execute("SELECT balance_range FROM account_info WHERE account_id = ? FOR UPDATE", [.int(account)]).rows.first?.string("balance_range"),
              let ownership = try await MoveSQL.ownership(c, map: "accounts", range: range, lock: " LOCK IN SHARE MODE"), ownership.state == "active" else {
            throw Stale(reason: "account \(account) is not served here any more")
        }
        // A range in a move catches up only recent history: old history written into it now would
        // not reach the move's target. Wait for the move to end.
        guard !ownership.capture else { throw Stale(reason: "account \(account)'s range \(range) is being moved") }
        try await MoveSQL.upsert(c, table: "journal", columns: MoveSQL.journalColumns, rows: history.postings, update: "amount = amount")
        try await MoveSQL.checkDecisions(c, history.decisions, spec)
        try await MoveSQL.upsert(c, table: "transfers", columns: MoveSQL.decisionColumns, rows: history.decisions, update: "state = VALUES(state)")
        // The version moves on: a crossing planned from the row as it was (its previous nodes
        // naming the drained node) is refused and planned again.
        try await c.execute("UPDATE account_info SET previous_nodes = \(without("previous_nodes")), row_version = row_version + 1 WHERE account_id = ?", [.string(node), .int(account)])
    }

    /// The directory node's part: the entry's range active here, the node out of its `previous_nodes`.
    static func forget(_ c: MariaDBConnection, account: Int64, leaving node: String) async throws {
        guard let range = try await c.execute("SELECT directory_range FROM account_directory WHERE account_id = ? FOR UPDATE", [.int(account)]).rows.first?.string("directory_range"),
              try await MoveSQL.ownership(c, map: "directory", range: range, lock: " LOCK IN SHARE MODE")?.state == "active" else {
            throw Stale(reason: "the directory entry of account \(account) is not served here any more")
        }
        try await c.execute("UPDATE account_directory SET previous_nodes = \(without("previous_nodes")) WHERE account_id = ?", [.string(node), .int(account)])
    }

    /// The draining node's part (an XA branch): exactly the rows read, deleted.
    static func release(_ c: MariaDBConnection, history: History) async throws {
        let postings = history.postings
        for start in stride(from: 0, to: postings.count, by: 500) {
            let batch = Array(postings[start..<min(start + 500, postings.count)])
            try await c.execute("DELETE FROM journal WHERE (transfer_id, account_id) IN (\(batch.map { _ in "(?, ?)" }.joined(separator: ", ")))",
                                batch.flatMap { [$0["transfer_id"], $0["account_id"]] })
        }
        let keys = try history.decisions.map { (try $0.string("transfer_id"), try $0.string("attempt")) }
        for start in stride(from: 0, to: keys.count, by: 500) {
            try await MoveSQL.deleteDecisions(c, Array(keys[start..<min(start + 500, keys.count)]))
        }
    }

    /// A location read before the transaction no longer holds: look again.
    struct Stale: Error, CustomStringConvertible {
        var reason: String
        var description: String { reason }
    }

    /// What is left on a drained node (empty when nothing).
    static func leftovers(_ c: MariaDBConnection) async throws -> [String] {
        var left: [String] = []
        for (table, what) in [("account_info", "accounts"), ("account_directory", "directory entries"), ("journal", "postings"),
                              ("transfers", "decision rows"), ("key_claims", "key claims"), ("range_ownership", "ranges")] {
            let n = try await c.execute("SELECT COUNT(*) AS n FROM \(table)").rows.first?.int64("n") ?? 0
            if n > 0 { left.append("\(n) \(what)") }
        }
        return left
    }

    /// The resolver's notes of presumed aborts (no request, no home account): once no branch names
    /// the node as commit point, nothing asks for them.
    static func deleteAbortNotes(_ c: MariaDBConnection) async throws {
        try await c.execute("DELETE FROM transfers WHERE state = 'aborted' AND home_account IS NULL AND request_hash = ''")
    }
}
