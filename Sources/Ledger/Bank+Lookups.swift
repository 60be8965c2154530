import MariaDB
import Sharding

// Finding rows and earlier decisions. Reads without locks: what they find is a hint that the
// transaction verifies on the node, or (earlier decisions) a committed fact.
extension Bank {
    /// Finds an account's row: the cached node, else the node owning its directory entry's range;
    /// follows moves. Only rows of ranges served on their node count (``AccountSQL/read(_:_:)``).
    /// A range in a move's switch (`frozen`, or `moved` before the map names its new node) serves
    /// no copy for a moment: the lookup waits for the maps to change, as a write does, up to the
    /// move wait (then `range_moving`).
    func locate(_ id: Int64) async throws -> (AccountSQL.Row, String) {
        var maps = try self.maps()
        var moving = MoveWait(limit: moveWait)
        var attempt = 0
        while attempt < 6 {
            if attempt == 2 {
                // Not where the map's owner of its range is, twice: the map may be behind a move.
                try? await refreshMaps()
                maps = try self.maps()
            }
            if let hint = locations.withLock({ $0[id]?.node }), connections.nodes.contains(hint),
               let row = try await connections.withConnection(hint, { try await AccountSQL.read($0, id) }) {
                return (row, hint)
            }
            guard let entry = try await directoryEntry(id) else {
                throw LedgerError(.notFound, "account \(id) does not exist")
            }
            maps = try self.maps()
            var node = Self.node(of: entry, maps: maps)
            // A map naming a node this process has no pool for (removed by a drain) is behind.
            if !connections.nodes.contains(node) {
                try? await refreshMaps()
                maps = try self.maps()
                node = Self.node(of: entry, maps: maps)
            }
            if let row = try await connections.withConnection(node, { try await AccountSQL.read($0, id) }) {
                locations.withLock { $0[id] = Location(node: node, range: row.range) }
                return (row, node)
            }
            locations.withLock { _ = $0.removeValue(forKey: id) }
            if try await connections.withConnection(node, { try await AccountSQL.isMoving($0, range: entry.range) }) {
                moving.planned(maps: maps)
                if moving.shouldRefresh { try? await refreshMaps() }
                try await moving.wait(maps: self.maps, what: "reading account \(id)", cause: nil)
                maps = try self.maps()
                continue
            }
            // Crossing to another node right now: the directory commits with the row, so look again shortly.
            try await Task.sleep(for: .milliseconds(5 << attempt))
            attempt += 1
        }
        throw LedgerError(.aborted, "account \(id) kept moving while it was looked up; try again")
    }

    /// An account's directory entry, read on the node the directory map names. A node that does
    /// not serve the entry's range (the map is behind a directory range's move) sends the lookup
    /// back to the maps, read again; a range in a move's switch is waited for, as a write waits
    /// (then `range_moving`). Nil: the node that serves the range has no entry.
    func directoryEntry(_ id: Int64) async throws -> AccountSQL.DirectoryEntry? {
        let key = DirectoryHash.key(forAccount: id)
        var moving = MoveWait(limit: moveWait)
        var refreshed = false
        while true {
            let maps = try self.maps()
            let node = try maps.directory.range(for: key).node
            // A map naming a node this process has no pool for (removed by a drain) is behind.
            if !connections.nodes.contains(node), !refreshed {
                refreshed = true
                try? await refreshMaps()
                continue
            }
            // One snapshot: the entry and whether the range is served are read as of one moment.
            let (entry, service) = try await connections.withConnection(node) { c -> (AccountSQL.DirectoryEntry?, AccountSQL.DirectoryService) in
                try await c.transaction(isolation: .repeatableRead) { c in
                    if let entry = try await AccountSQL.directory(c, id) { return (entry, .served) }
                    return (nil, try await AccountSQL.directoryService(c, key: key))
                }
            }
            if service == .served { return entry }
            if service == .elsewhere, !refreshed {
                refreshed = true
                try? await refreshMaps()
                continue
            }
            moving.planned(maps: maps)
            if moving.shouldRefresh { try? await refreshMaps() }
            try await moving.wait(maps: self.maps, what: "reading the directory entry of account \(id)", cause: nil)
        }
    }

    /// The node of a directory entry's account: the map's owner of the entry's range — a range
    /// move rewrites no entry — or, for a range the map no longer has, the node the entry names.
    static func node(of entry: AccountSQL.DirectoryEntry, maps: LedgerMaps) -> String {
        maps.accounts.range(id: entry.range)?.node ?? entry.node
    }

    /// The account's node now, then every node it lived on before.
    func nodesOf(_ account: Int64) async throws -> [String] {
        guard let entry = try await directoryEntry(account) else { return [] }
        let node = Self.node(of: entry, maps: try self.maps())
        return [node] + entry.previousNodes.filter { $0 != node }
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
