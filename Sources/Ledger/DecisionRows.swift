import MariaDB
import Sharding

/// The state a decision row records for one attempt.
public enum DecisionState: String, Sendable {
    case committed, aborted
}

/// The committed decision of a transfer id on one node.
struct CommittedDecision: Sendable {
    var attempt: AttemptID
    var kind: String
    var fromAccount: Int64?
    var toAccount: Int64?
    var amount: Int64
    var requestHash: String
}

/// SQL of the decision rows (`transfers`), shared by the coordinator, the resolver and the lookups.
///
/// One row per attempt (primary key `(transfer_id, attempt)`): the key arbitrates, per attempt,
/// between its coordinator committing and a resolver presuming abort. `committed_id` (the transfer id
/// on committed rows, NULL on aborted ones) is unique, so a node holds at most one committed attempt
/// per transfer id — and an aborted attempt does not spend its key: a retry may still commit.
enum DecisionRows {
    private static let columns = "transfer_id, attempt, kind, state, from_account, to_account, amount, request_hash, participants"
    private static let placeholders = "?, ?, ?, ?, ?, ?, ?, ?, ?"

    private static func values(_ record: DecisionRecord, _ state: DecisionState) -> [MariaDBValue] {
        [.string(record.transferID), .string(record.attempt.rawValue), .string(record.kind), .string(state.rawValue),
         record.fromAccount.map(MariaDBValue.int) ?? .null, record.toAccount.map(MariaDBValue.int) ?? .null,
         .money(minorUnits: record.amountMinorUnits), .string(record.requestHash), .string(record.participants.joined(separator: ","))]
    }

    /// Inserts the row. 1062 means another attempt of the transfer committed (or this attempt was
    /// already decided, by a resolver that presumed abort).
    static func insert(_ record: DecisionRecord, state: DecisionState, on c: MariaDBConnection) async throws(MariaDBError) {
        try await c.execute("INSERT INTO transfers (\(columns)) VALUES (\(placeholders))", values(record, state))
    }

    /// Inserts a committed decision row only if every range of `spans` is active on this node and
    /// holds its span of new balances (``AccountSQL/within(_:)``). One statement is both the
    /// idempotency check (1062 when the transfer is committed already) and the fence by bounds.
    /// Returns false (nothing written) when a range is not active here or does not cover its span.
    static func insertFenced(_ record: DecisionRecord, within spans: [AccountSQL.Span], on c: MariaDBConnection) async throws(MariaDBError) -> Bool {
        let fence = AccountSQL.within(spans)
        let result = try await c.execute("INSERT INTO transfers (\(columns)) SELECT \(placeholders) \(fence.from) HAVING COUNT(*) = ?",
                                         values(record, .committed) + fence.parameters + [.int(Int64(spans.count))])
        return result.affectedRows == 1
    }

    /// The decision recorded for one attempt, if any.
    static func state(of transferID: String, attempt: AttemptID, on c: MariaDBConnection) async throws -> DecisionState? {
        let rows = try await c.execute("SELECT state FROM transfers WHERE transfer_id = ? AND attempt = ?",
                                       [.string(transferID), .string(attempt.rawValue)]).rows
        guard let row = rows.first else { return nil }
        return DecisionState(rawValue: try row.string("state")) ?? .aborted
    }

    /// Reads an attempt's decision, and where there is none, records its abort (presumed abort: the
    /// primary key arbitrates against its coordinator, which may still be running). Returns the
    /// decision that stands for that attempt.
    static func decideIfAbsent(_ transferID: String, attempt: AttemptID, on c: MariaDBConnection) async throws -> DecisionState {
        if let state = try await state(of: transferID, attempt: attempt, on: c) { return state }
        let aborted = DecisionRecord(transferID: transferID, kind: "unknown", amountMinorUnits: 0, requestHash: "", participants: [], attempt: attempt)
        do {
            try await insert(aborted, state: .aborted, on: c)
            return .aborted
        } catch {
            guard error.errorNumber == 1062 else { throw error }
            return try await state(of: transferID, attempt: attempt, on: c) ?? .aborted
        }
    }

    /// The committed attempt of `transferID` on this node, if any.
    static func committed(_ transferID: String, on c: MariaDBConnection) async throws -> CommittedDecision? {
        guard let r = try await c.execute("""
            SELECT attempt, kind, from_account, to_account, amount, request_hash FROM transfers
            WHERE transfer_id = ? AND state = 'committed'
            """, [.string(transferID)]).rows.first else { return nil }
        return CommittedDecision(attempt: AttemptID(rawValue: try r.string("attempt")) ?? AttemptID(rawValue: "")!, kind: try r.string("kind"),
                                 fromAccount: try r.optionalInt64("from_account"), toAccount: try r.optionalInt64("to_account"),
                                 amount: try r.minorUnits("amount"), requestHash: try r.string("request_hash"))
    }

    /// Whether any attempt of `transferID` is recorded on this node (aborted ones included).
    static func anyAttempt(_ transferID: String, on c: MariaDBConnection) async throws -> Bool {
        try await !c.execute("SELECT 1 AS x FROM transfers WHERE transfer_id = ? LIMIT 1", [.string(transferID)]).rows.isEmpty
    }
}
