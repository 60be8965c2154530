import MariaDB
import Sharding

/// A posting of an account's statement.
public struct JournalEntry: Sendable, Hashable {
    public var transferID: String
    public var amount: Money
    public var balanceAfter: Money
    public var createdAt: SQLDateTime
    /// The node that holds the entry (accounts that moved have entries on several).
    public var node: String
    public var entryID: Int64

    /// Newest first; ties broken by node and entry id, so a cursor is exact.
    func isBefore(_ other: JournalEntry) -> Bool {
        let a = createdAt.unixMicroseconds, b = other.createdAt.unixMicroseconds
        if a != b { return a > b }
        if node != other.node { return node < other.node }
        return entryID > other.entryID
    }

    /// `micros.node.entryID`: where the next page starts.
    public var cursor: String { "\(createdAt.unixMicroseconds).\(node).\(entryID)" }
}

/// A transfer's decision record.
public struct TransferRecord: Sendable, Hashable {
    public var transferID: String
    public var kind: String
    public var state: String
    public var fromAccount: Int64?
    public var toAccount: Int64?
    public var amount: Money
    public var node: String
}

extension Bank {
    /// Accounts of one node (`node`) or one accounts-map range (`range`), by ascending id after `cursor`.
    public func accounts(node: String?, range: String?, limit: Int, after cursor: Int64?) async throws -> (accounts: [Account], next: Int64?) {
        guard (node == nil) != (range == nil) else { throw LedgerError(.invalid, "give either a node or a range") }
        let maps = try self.maps()
        let target: String
        if let range {
            guard let r = maps.accounts.range(id: range) else { throw LedgerError(.notFound, "no accounts range \(range)") }
            target = r.node
        } else {
            target = node!
        }
        let limit = max(1, min(limit, 1000))
        let rows = try await connections.withConnection(target) { try await AccountSQL.page($0, after: cursor ?? 0, range: range, limit: limit + 1) }
        let accounts = rows.prefix(limit).map {
            Account(id: $0.accountID, customerName: $0.customerName, balance: Money(minorUnits: $0.balance), range: $0.range, node: target)
        }
        return (accounts, rows.count > limit ? accounts.last?.id : nil)
    }

    /// An account's statement, newest first, from every node it has lived on.
    public func entries(of account: Int64, limit: Int, after cursor: String?) async throws -> (entries: [JournalEntry], next: String?) {
        let limit = max(1, min(limit, 1000))
        let nodes = try await nodesOf(account)
        guard !nodes.isEmpty else { throw LedgerError(.notFound, "account \(account) does not exist") }
        var start: JournalEntry?
        if let cursor {
            let parts = cursor.split(separator: ".")
            guard parts.count == 3, let micros = Int64(parts[0]), let entry = Int64(parts[2]) else {
                throw LedgerError(.invalid, "cursor \(cursor.prefix(40)) is not one this API returned")
            }
            start = JournalEntry(transferID: "", amount: .zero, balanceAfter: .zero, createdAt: SQLDateTime(unixMicroseconds: micros), node: String(parts[1]), entryID: entry)
        }
        var all: [JournalEntry] = []
        for node in Set(nodes) {
            let rows = try await connections.withConnection(node) {
                try await AccountSQL.statement($0, account: account, notAfter: start?.createdAt ?? SQLDateTime(unixMicroseconds: 253_402_300_799_000_000), limit: limit + 1)
            }
            for r in rows {
                let e = JournalEntry(transferID: try r.string("transfer_id"), amount: Money(minorUnits: try r.minorUnits("amount")),
                                     balanceAfter: Money(minorUnits: try r.minorUnits("balance_after")), createdAt: try r.dateTime("created_at"),
                                     node: node, entryID: try r.int64("entry_id"))
                if let start, !start.isBefore(e) { continue }
                all.append(e)
            }
        }
        all.sort { $0.isBefore($1) }
        // A range move copies an account's postings before it deletes the source's: a posting
        // read on two nodes is one posting (one per transfer and account).
        // Only the same posting counts once (a copy has the original's transfer, amounts and time).
        struct Posting: Hashable { var transfer: String; var amount: Money; var after: Money; var at: Int64 }
        var seen = Set<Posting>()
        all = all.filter { seen.insert(Posting(transfer: $0.transferID, amount: $0.amount, after: $0.balanceAfter, at: $0.createdAt.unixMicroseconds)).inserted }
        let page = Array(all.prefix(limit))
        return (page, all.count > limit ? page.last?.cursor : nil)
    }

    /// A transfer (or deposit, withdrawal, opening) by id: its committed attempt, wherever it is;
    /// else, when only aborted attempts are recorded, `aborted` (nothing was changed, and a retry
    /// with the same key may still commit).
    public func transferRecord(_ id: String) async throws -> TransferRecord {
        var aborted: TransferRecord?
        for node in connections.nodes {
            if let d = try await connections.withConnection(node, { try await DecisionRows.committed(id, on: $0) }) {
                return TransferRecord(transferID: id, kind: d.kind, state: DecisionState.committed.rawValue, fromAccount: d.fromAccount,
                                      toAccount: d.toAccount, amount: Money(minorUnits: d.amount), node: node)
            }
            if aborted == nil, try await connections.withConnection(node, { try await DecisionRows.anyAttempt(id, on: $0) }) {
                aborted = TransferRecord(transferID: id, kind: "unknown", state: DecisionState.aborted.rawValue, fromAccount: nil, toAccount: nil,
                                         amount: .zero, node: node)
            }
        }
        if let aborted { return aborted }
        throw LedgerError(.notFound, "no transfer \(id.prefix(64))")
    }
}
