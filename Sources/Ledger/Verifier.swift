import MariaDB
import Sharding

/// `ctl verify`: checks the ledger's invariants over every node.
public struct LedgerVerifier: Sendable {
    public struct Report: Sendable {
        public var violations: [String] = []
        public var accounts = 0
        public var transfers = 0
        public var balances: Int64 = 0
        public var journal: Int64 = 0
        public var nodes = 0
        public var clean: Bool { violations.isEmpty }

        public var summary: String {
            clean
                ? "verify: clean — \(accounts) accounts on \(nodes) nodes, Σ balances \(Money(minorUnits: balances)) = Σ journal, \(transfers) decisions, no stale prepared XA"
                : "verify: \(violations.count) violation(s)\n" + violations.map { "  - " + $0 }.joined(separator: "\n")
        }
    }

    let connections: NodeConnections
    let maps: LedgerMaps

    public init(connections: NodeConnections, maps: LedgerMaps) {
        self.connections = connections
        self.maps = maps
    }

    /// Runs every check. A ShardBank XA branch still prepared after `xaBound` is a violation.
    public func run(xaBound: Duration = .seconds(10)) async throws -> Report {
        var report = Report()
        report.nodes = connections.nodes.count
        var homes: [Int64: [String]] = [:]
        var directory: [Int64: (node: String, dataNode: String, dataRange: String)] = [:]
        var postings: Set<String> = []
        var decisions: [(id: String, kind: String, from: Int64?, to: Int64?, node: String)] = []
        for node in connections.nodes {
            try await connections.withConnection(node) { c in
                // One consistent snapshot per node.
                try await c.begin(isolation: .repeatableRead)
                for r in try await c.query("SELECT account_id, balance, balance_range FROM account_info").rows {
                    let id = try r.int64("account_id")
                    let balance = try r.minorUnits("balance")
                    let range = try r.string("balance_range")
                    report.accounts += 1
                    report.balances += balance
                    homes[id, default: []].append(node)
                    if balance < 0 { report.violations.append("account \(id) on \(node) has a negative balance \(Money(minorUnits: balance))") }
                    let owner = try maps.accounts.range(for: max(balance, 0))
                    if owner.id != range || owner.node != node {
                        report.violations.append("account \(id) with balance \(Money(minorUnits: balance)) is on \(node) in range \(range), but the map puts it in \(owner.id) on \(owner.node)")
                    }
                }
                for r in try await c.query("SELECT account_id, data_node, data_range FROM account_directory").rows {
                    directory[try r.int64("account_id")] = (node, try r.string("data_node"), try r.string("data_range"))
                }
                report.journal += try await c.query("SELECT COALESCE(SUM(amount), 0) AS s FROM journal").rows[0].minorUnits("s")
                for r in try await c.query("SELECT transfer_id, account_id FROM journal").rows {
                    postings.insert("\(try r.string("transfer_id"))|\(try r.int64("account_id"))")
                }
                for r in try await c.query("SELECT transfer_id, kind, from_account, to_account FROM transfers WHERE state = 'committed'").rows {
                    decisions.append((try r.string("transfer_id"), try r.string("kind"), try r.optionalInt64("from_account"), try r.optionalInt64("to_account"), node))
                }
                try await c.commit()
            }
        }
        report.transfers = decisions.count
        if report.balances != report.journal {
            report.violations.append("Σ balances \(Money(minorUnits: report.balances)) differs from Σ journal \(Money(minorUnits: report.journal))")
        }
        for (id, nodes) in homes.sorted(by: { $0.key < $1.key }) {
            if nodes.count > 1 { report.violations.append("account \(id) exists on several nodes: \(nodes.joined(separator: ", "))") }
            guard let entry = directory[id] else {
                report.violations.append("account \(id) has no directory entry"); continue
            }
            let expected = try maps.directory.range(for: DirectoryHash.key(forAccount: id)).node
            if entry.node != expected { report.violations.append("the directory entry of account \(id) is on \(entry.node), the directory map says \(expected)") }
            if !nodes.contains(entry.dataNode) { report.violations.append("the directory entry of account \(id) points at \(entry.dataNode), the row is on \(nodes.joined(separator: ", "))") }
        }
        for id in directory.keys where homes[id] == nil {
            report.violations.append("directory entry for account \(id) but no account row")
        }
        for d in decisions {
            for account in [d.from, d.to].compactMap({ $0 }) where !postings.contains("\(d.id)|\(account)") {
                report.violations.append("committed \(d.kind) \(d.id) (decision on \(d.node)) has no posting for account \(account)")
            }
        }
        // Prepared branches: tolerated while young; the resolver must end them within the bound.
        var prepared = try await preparedBranches()
        if !prepared.isEmpty {
            try await Task.sleep(for: xaBound)
            prepared = prepared.intersection(try await preparedBranches())
            for p in prepared.sorted() { report.violations.append("XA branch \(p) is still prepared after \(xaBound)") }
        }
        return report
    }

    private func preparedBranches() async throws -> Set<String> {
        var all: Set<String> = []
        for node in connections.nodes {
            for xid in try await connections.withConnection(node, { try await $0.xaRecover() }) where BranchName.parse(xid) != nil {
                all.insert("\(xid.gtrid) on \(node)")
            }
        }
        return all
    }
}
