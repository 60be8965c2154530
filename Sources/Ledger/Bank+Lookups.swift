import MariaDB
import Sharding

// Finding rows and earlier decisions. Reads without locks: what they find is a hint that the
// transaction verifies on the node, or (earlier decisions) a committed fact.
extension Bank {
    /// Finds an account's row: the cached node, else the directory entry; follows moves.
    func locate(_ id: Int64) async throws -> (AccountSQL.Row, String) {
        let maps = try self.maps()
        for attempt in 0..<6 {
            if let hint = locations.withLock({ $0[id]?.node }),
               let row = try await connections.withConnection(hint, { try await AccountSQL.read($0, id) }) {
                return (row, hint)
            }
            let directoryNode = try maps.directory.range(for: DirectoryHash.key(forAccount: id)).node
            guard let entry = try await connections.withConnection(directoryNode, { try await AccountSQL.directory($0, id) }) else {
                throw LedgerError(.notFound, "account \(id) does not exist")
            }
            if let row = try await connections.withConnection(entry.node, { try await AccountSQL.read($0, id) }) {
                locations.withLock { $0[id] = Location(node: entry.node, range: row.range) }
                return (row, entry.node)
            }
            // Moving right now: the directory commits with the row, so look again shortly.
            locations.withLock { _ = $0.removeValue(forKey: id) }
            try await Task.sleep(for: .milliseconds(5 << attempt))
        }
        throw LedgerError(.aborted, "account \(id) kept moving while it was looked up; try again")
    }

    func nodesOf(_ account: Int64) async throws -> [String] {
        let maps = try self.maps()
        let directoryNode = try maps.directory.range(for: DirectoryHash.key(forAccount: account)).node
        guard let entry = try await connections.withConnection(directoryNode, { try await AccountSQL.directory($0, account) }) else { return [] }
        return [entry.node] + entry.previousNodes
    }

    /// A committed earlier attempt with this key, looked up on every node the home account has
    /// lived on (its decision is on the node the home account was on then).
    func previousOutcome(key: String, home: Int64, hash: String, accounts: [Int64]) async throws -> MovementResult? {
        let homeNodes = try await nodesOf(home)
        guard !homeNodes.isEmpty else { throw LedgerError(.notFound, "account \(home) does not exist") }
        for node in homeNodes {
            guard let earlier = try await committedEarlier(key: key, hash: hash, on: node) else { continue }
            // The balances it left, from its journal entries wherever the accounts lived.
            var balances: [Int64: Money] = [:]
            for account in accounts {
                for n in try await nodesOf(account) where balances[account] == nil {
                    let after = try await connections.withConnection(n) {
                        try await AccountSQL.balanceAfter($0, transferID: key, attempt: earlier.attempt, account: account)
                    }
                    if let after { balances[account] = Money(minorUnits: after) }
                }
            }
            return MovementResult(transferID: key, balances: balances, replayed: true)
        }
        return nil
    }
}
