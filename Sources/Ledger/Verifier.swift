import MariaDB
import Sharding

/// `ctl verify`: checks, over every node, the invariants the ledger relies on.
///
/// Each node is read in one consistent snapshot, but the nodes one after another: a transaction
/// that commits between two nodes' snapshots can look like a violation. So a pass that finds
/// something waits for in-flight transactions to finish and runs again, and only what both passes
/// find (by subject: an account, a transfer, a range) counts. An account still suspect then is read
/// once more with its row locked — no transaction can post to it meanwhile — and reported only if
/// it is still wrong. Σ balances = Σ journal follows from the per-account checks and the check for
/// postings without an account, so its difference is reported only beside a confirmed cause. Under
/// a running load this raises no false alarm; a real violation is still there every time.
public struct LedgerVerifier: Sendable {
    public struct Report: Sendable {
        public var violations: [String] = []
        public var accounts = 0
        public var transfers = 0
        /// Σ balances and Σ postings, in minor units (`Int128`: a sum of many balances may pass `Int64`).
        public var balances: Int128 = 0
        public var journal: Int128 = 0
        public var nodes = 0
        public var clean: Bool { violations.isEmpty }

        public var summary: String {
            clean
                ? "verify: clean — \(accounts) accounts on \(nodes) nodes, Σ balances \(Self.money(balances)) = Σ journal, \(transfers) committed transfers, no stale prepared XA"
                : "verify: \(violations.count) violation(s)\n" + violations.map { "  - " + $0 }.joined(separator: "\n")
        }

        /// A sum of minor units as money text (it may exceed what `Money` holds).
        static func money(_ minorUnits: Int128) -> String {
            let sign = minorUnits < 0 ? "-" : ""
            let magnitude = minorUnits.magnitude
            let cents = magnitude % 100
            return "\(sign)\(magnitude / 100).\(cents < 10 ? "0" : "")\(cents)"
        }
    }

    /// One finding: `subject` identifies what it is about across passes.
    struct Violation: Sendable {
        var subject: String
        var message: String
    }

    /// The findings of one section.
    struct Findings {
        var list: [Violation] = []
        mutating func add(_ subject: String, _ message: String) { list.append(Violation(subject: subject, message: message)) }
    }

    private func money(_ minorUnits: Int64) -> String { Money(minorUnits: minorUnits).description }

    let connections: NodeConnections
    let maps: LedgerMaps

    public init(connections: NodeConnections, maps: LedgerMaps) {
        self.connections = connections
        self.maps = maps
    }

    /// Runs every check. A ShardBank XA branch still prepared after `xaBound` is a violation; a
    /// finding of the first pass is re-checked after `settle`.
    public func run(xaBound: Duration = .seconds(10), settle: Duration = .seconds(2)) async throws -> Report {
        var snapshot = try await Snapshot.read(connections)
        var found = check(snapshot)
        if !found.isEmpty {
            try await Task.sleep(for: settle)
            let again = try await Snapshot.read(connections)
            let subjects = Set(found.map(\.subject))
            found = check(again).filter { subjects.contains($0.subject) }
            snapshot = again
            var confirmed = found.filter { !$0.subject.hasPrefix("account ") && $0.subject != "sum" }
            for id in Set(found.compactMap { $0.subject.hasPrefix("account ") ? Int64($0.subject.dropFirst(8)) : nil }).sorted() {
                confirmed += try await recheck(account: id)
            }
            if found.contains(where: { $0.subject == "sum" }) && confirmed.contains(where: { $0.subject.hasPrefix("account ") }) {
                confirmed.insert(contentsOf: found.filter { $0.subject == "sum" }, at: 0)
            }
            found = confirmed
        }
        var report = Report()
        report.nodes = connections.nodes.count
        report.accounts = snapshot.accounts.count
        report.transfers = Set(snapshot.decisions.filter { $0.state == "committed" }.map(\.transferID)).count
        report.balances = snapshot.accounts.reduce(0) { $0 + Int128($1.balance) }
        report.journal = snapshot.postings.reduce(0) { $0 + Int128($1.amount) }
        report.violations = found.map(\.message)
        // Prepared branches: tolerated while young; the resolver must end them within the bound.
        var prepared = try await preparedBranches()
        for (xid, node) in prepared.sorted(by: { $0.key < $1.key }) {
            if let name = BranchName.parse(xid.xid), !connections.nodes.contains(name.commitPoint) {
                report.violations.append("XA branch \(xid.label) on \(node) names commit point \(name.commitPoint), which is not a registered node")
            }
        }
        if !prepared.isEmpty {
            try await Task.sleep(for: xaBound)
            let later = try await preparedBranches()
            prepared = prepared.filter { later[$0.key] != nil }
            for p in prepared.keys.map(\.label).sorted() { report.violations.append("XA branch \(p) is still prepared after \(xaBound)") }
        }
        return report
    }

    // MARK: what is read

    struct AccountRow: Sendable { var id: Int64; var balance: Int64; var range: String; var previousNodes: Set<String>; var node: String }
    struct DirectoryRow: Sendable { var id: Int64; var directoryRange: String; var dataNode: String; var dataRange: String; var previousNodes: Set<String>; var node: String }
    struct PostingRow: Sendable {
        var transferID: String; var attempt: String; var account: Int64; var amount: Int64; var balanceAfter: Int64; var entry: Int64; var node: String
        /// `created_at` in microseconds: the order of an account's postings (a drain moves old
        /// postings to the account's node, where they get new entry ids).
        var micros: Int64 = 0
    }
    struct DecisionRow: Sendable {
        var transferID: String; var attempt: String; var kind: String; var state: String; var from: Int64?; var to: Int64?; var amount: Int64; var node: String
        var requestHash = ""
    }
    struct ClaimRow: Sendable { var key: String; var requestHash: String; var node: String }
    struct OwnershipRow: Sendable { var map: String; var range: String; var lower: Int64; var upper: Int64?; var state: String; var node: String }

    struct Snapshot: Sendable {
        var accounts: [AccountRow] = []
        var directory: [DirectoryRow] = []
        var postings: [PostingRow] = []
        var decisions: [DecisionRow] = []
        var ownership: [OwnershipRow] = []
        var claims: [ClaimRow] = []
        /// Transfer ids (their bytes) with a prepared ShardBank branch on some node.
        var inDoubt: Set<[UInt8]> = []

        /// Every node's rows, or with `account` only that account's rows, postings and directory entry.
        static func read(_ connections: NodeConnections, account: Int64? = nil) async throws -> Snapshot {
            var s = Snapshot()
            let only = account.map { " WHERE account_id = \($0)" } ?? "" // an Int64: nothing to escape
            for node in connections.nodes {
                try await connections.withConnection(node) { c in
                    try await c.begin(isolation: .repeatableRead) // one consistent snapshot per node
                    func nodes(_ text: String) -> Set<String> { Set(text.split(separator: ",").map(String.init)) }
                    for r in try await c.query("SELECT account_id, balance, balance_range, previous_nodes FROM account_info" + only).rows {
                        s.accounts.append(AccountRow(id: try r.int64("account_id"), balance: try r.minorUnits("balance"), range: try r.string("balance_range"),
                                                     previousNodes: nodes(try r.string("previous_nodes")), node: node))
                    }
                    for r in try await c.query("SELECT account_id, directory_range, data_node, data_range, previous_nodes FROM account_directory" + only).rows {
                        s.directory.append(DirectoryRow(id: try r.int64("account_id"), directoryRange: try r.string("directory_range"), dataNode: try r.string("data_node"),
                                                        dataRange: try r.string("data_range"), previousNodes: nodes(try r.string("previous_nodes")), node: node))
                    }
                    for r in try await c.query("SELECT entry_id, transfer_id, attempt, account_id, amount, balance_after, CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS SIGNED) AS micros FROM journal" + only).rows {
                        s.postings.append(PostingRow(transferID: try r.string("transfer_id"), attempt: try r.string("attempt"), account: try r.int64("account_id"),
                                                     amount: try r.minorUnits("amount"), balanceAfter: try r.minorUnits("balance_after"), entry: try r.int64("entry_id"), node: node,
                                                     micros: try r.int64("micros")))
                    }
                    for r in try await c.query("SELECT transfer_id, attempt, kind, state, from_account, to_account, amount, request_hash FROM transfers" + (account == nil ? "" : " WHERE FALSE")).rows {
                        s.decisions.append(DecisionRow(transferID: try r.string("transfer_id"), attempt: try r.string("attempt"), kind: try r.string("kind"),
                                                       state: try r.string("state"), from: try r.optionalInt64("from_account"), to: try r.optionalInt64("to_account"),
                                                       amount: try r.minorUnits("amount"), node: node, requestHash: try r.string("request_hash")))
                    }
                    if account == nil {
                        for r in try await c.query("SELECT transfer_id, request_hash FROM key_claims").rows {
                            s.claims.append(ClaimRow(key: try r.string("transfer_id"), requestHash: try r.string("request_hash"), node: node))
                        }
                    }
                    for r in try await c.query("SELECT map_name, range_id, lower_bound, upper_bound, state FROM range_ownership").rows {
                        s.ownership.append(OwnershipRow(map: try r.string("map_name"), range: try r.string("range_id"), lower: try r.int64("lower_bound"),
                                                        upper: try r.optionalInt64("upper_bound"), state: try r.string("state"), node: node))
                    }
                    try await c.commit()
                    if account == nil {
                        for xid in try await c.xaRecover() where BranchName.parse(xid) != nil { s.inDoubt.insert(Array(xid.gtrid.utf8)) }
                    }
                }
            }
            return s.withoutMoveCopies()
        }

        /// What a range move has copied and not yet cleaned counts once. A node's rows in a range
        /// it holds `incoming` (copies before the switch) or `moved` (the source's after it) are
        /// not accounts there; their postings and decisions are dropped where the same posting or
        /// decision is on another node. A copy that differs stays and is reported.
        func withoutMoveCopies() -> Snapshot {
            let copyStates: Set<String> = ["incoming", "moved"]
            let copying = Set(ownership.filter { copyStates.contains($0.state) }.map { "\($0.node)\u{0}\($0.map)\u{0}\($0.range)" })
            guard !copying.isEmpty else { return self }
            var s = self
            var copies = Set<String>() // node + account
            s.accounts = accounts.filter { row in
                guard copying.contains("\(row.node)\u{0}accounts\u{0}\(row.range)") else { return true }
                copies.insert("\(row.node)\u{0}\(row.id)")
                return false
            }
            s.directory = directory.filter { !copying.contains("\($0.node)\u{0}directory\u{0}\($0.directoryRange)") }
            func key(_ p: PostingRow) -> String { "\(p.transferID)\u{0}\(p.attempt)\u{0}\(p.account)\u{0}\(p.amount)\u{0}\(p.balanceAfter)" }
            let nodesOfPosting = Dictionary(grouping: postings, by: key).mapValues { Set($0.map(\.node)) }
            s.postings = postings.filter { p in
                !(copies.contains("\(p.node)\u{0}\(p.account)") && (nodesOfPosting[key(p)]?.count ?? 0) > 1)
            }
            var seen = Set<String>()
            s.decisions = decisions.sorted { $0.node < $1.node }.filter { d in
                seen.insert("\(d.transferID)\u{0}\(d.attempt)\u{0}\(d.kind)\u{0}\(d.state)\u{0}\(d.from ?? 0)\u{0}\(d.to ?? 0)\u{0}\(d.amount)").inserted
            }
            return s
        }
    }

    /// Reads one account again with its row locked on its node (a transaction that would post to it
    /// waits for the lock), its postings and directory entry everywhere; returns what is still wrong.
    private func recheck(account id: Int64) async throws -> [Violation] {
        let directoryNode = try maps.directory.range(for: DirectoryHash.key(forAccount: id)).node
        let entry = try await connections.withConnection(directoryNode) { try await AccountSQL.directory($0, id) }
        let home = entry.map { Bank.node(of: $0, maps: maps) }
        guard let home, connections.nodes.contains(home) else {
            return try await accountSections(Snapshot.read(connections, account: id))
        }
        return try await connections.withConnection(home) { c in
            try await c.begin()
            do {
                _ = try await c.execute("SELECT account_id FROM account_info WHERE account_id = ? FOR UPDATE", [.int(id)])
                let found = accountSections(try await Snapshot.read(connections, account: id))
                try await c.commit()
                return found
            } catch {
                if !c.isBroken { _ = try? await c.rollback() }
                throw error
            }
        }
    }

    // MARK: the checks

    func check(_ s: Snapshot) -> [Violation] {
        var found: [Violation] = []
        // Σ balances = Σ postings, without overflow.
        let balances = s.accounts.reduce(Int128(0)) { $0 + Int128($1.balance) }
        let journal = s.postings.reduce(Int128(0)) { $0 + Int128($1.amount) }
        if balances != journal {
            found.append(Violation(subject: "sum", message: "Σ balances \(Report.money(balances)) differs from Σ journal \(Report.money(journal))"))
        }
        return found + accountSections(s) + transferSection(s) + claimSection(s) + ownershipSection(s)
    }

    /// Idempotency keys (schema v6): a key is claimed for one request cluster-wide (a move's copy
    /// of a claim is the same claim), on the node of its key's directory range, and a committed
    /// decision under the key is of the request it was claimed for. Keys used before v6 have no
    /// claim and are not judged here.
    func claimSection(_ s: Snapshot) -> [Violation] {
        var found = Findings()
        let committed = Dictionary(grouping: s.decisions.filter { $0.state == "committed" }, by: { Array($0.transferID.utf8) })
        for (bytes, claims) in Dictionary(grouping: s.claims, by: { Array($0.key.utf8) }).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            let key = claims[0].key
            let subject = "key \(key)"
            let requests = Set(claims.map(\.requestHash))
            if requests.count > 1 {
                found.add(subject, "idempotency key \(key) is claimed for \(requests.count) different requests (on \(claims.map(\.node).sorted().joined(separator: ", ")))")
                continue
            }
            if let range = try? maps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)), !claims.contains(where: { $0.node == range.node }) {
                found.add(subject, "the claim of idempotency key \(key) is on \(claims.map(\.node).sorted().joined(separator: ", ")), not on \(range.node), the node of its directory range \(range.id)")
            }
            for d in committed[bytes] ?? [] where !s.inDoubt.contains(bytes) && d.requestHash != claims[0].requestHash {
                found.add(subject, "committed \(d.kind) \(key) (attempt \(d.attempt) on \(d.node)) is another request than the one its key was claimed for")
            }
        }
        return found.list
    }

    /// Accounts, their postings and their directory entries.
    func accountSections(_ s: Snapshot) -> [Violation] {
        var found = Findings()

        // Accounts: one row each, in the range and on the node the map gives its balance.
        let rowsByAccount = Dictionary(grouping: s.accounts, by: \.id)
        let postingsByAccount = Dictionary(grouping: s.postings, by: \.account)
        for (id, rows) in rowsByAccount.sorted(by: { $0.key < $1.key }) {
            let subject = "account \(id)"
            if rows.count > 1 { found.add(subject, "account \(id) exists on several nodes: \(rows.map(\.node).sorted().joined(separator: ", "))"); continue }
            let row = rows[0]
            if row.balance < 0 { found.add(subject, "account \(id) on \(row.node) has a negative balance \(money(row.balance))") }
            if let owner = try? maps.accounts.range(for: max(row.balance, 0)), owner.id != row.range || owner.node != row.node {
                found.add(subject, "account \(id) with balance \(money(row.balance)) is on \(row.node) in range \(row.range), but the map puts it in \(owner.id) on \(owner.node)")
            }
            // Its balance is the sum of its postings on every node it lived on, and its last posting's balance_after.
            let postings = postingsByAccount[id] ?? []
            let sum = postings.reduce(Int128(0)) { $0 + Int128($1.amount) }
            if sum != Int128(row.balance) {
                found.add(subject, "account \(id) holds \(money(row.balance)) but its postings on \(Set(postings.map(\.node)).sorted().joined(separator: ", ")) sum to \(Report.money(sum))")
            }
            if let last = postings.filter({ $0.node == row.node }).max(by: { ($0.micros, $0.entry) < ($1.micros, $1.entry) }), last.balanceAfter != row.balance {
                found.add(subject, "account \(id) holds \(money(row.balance)) but its last posting (\(last.transferID) on \(row.node)) left \(money(last.balanceAfter))")
            }
            let elsewhere = Set(postings.map(\.node)).subtracting([row.node])
            if !elsewhere.isSubset(of: row.previousNodes) {
                found.add(subject, "account \(id) has postings on \(elsewhere.subtracting(row.previousNodes).sorted().joined(separator: ", ")) that its previous nodes (\(row.previousNodes.sorted().joined(separator: ",")) ) do not name")
            }
        }

        // Directory entries: on the directory map's node, pointing at the row's range, whose owner in
        // the map is the row's node (`data_node` only for a range the map no longer has).
        let entries = Dictionary(grouping: s.directory, by: \.id)
        for (id, list) in entries.sorted(by: { $0.key < $1.key }) {
            let subject = "account \(id)"
            if list.count > 1 { found.add(subject, "account \(id) has directory entries on several nodes: \(list.map(\.node).sorted().joined(separator: ", "))") }
            let entry = list[0]
            if let expected = try? maps.directory.range(for: DirectoryHash.key(forAccount: id)), expected.node != entry.node || expected.id != entry.directoryRange {
                found.add(subject, "the directory entry of account \(id) is in \(entry.directoryRange) on \(entry.node), the directory map says \(expected.id) on \(expected.node)")
            }
            guard let rows = rowsByAccount[id], rows.count == 1 else {
                if rowsByAccount[id] == nil { found.add(subject, "directory entry for account \(id) but no account row") }
                continue
            }
            let row = rows[0]
            let entryNode = maps.accounts.range(id: entry.dataRange)?.node ?? entry.dataNode
            if entryNode != row.node || entry.dataRange != row.range {
                found.add(subject, "the directory entry of account \(id) points at \(entry.dataRange) on \(entryNode), the row is in \(row.range) on \(row.node)")
            }
            if entry.previousNodes != row.previousNodes {
                found.add(subject, "account \(id) lived on \(row.previousNodes.sorted().joined(separator: ",")) says its row, \(entry.previousNodes.sorted().joined(separator: ",")) says its directory entry")
            }
        }
        for id in rowsByAccount.keys.sorted() where entries[id] == nil {
            found.add("account \(id)", "account \(id) has no directory entry")
        }
        for (id, postings) in postingsByAccount.sorted(by: { $0.key < $1.key }) where rowsByAccount[id] == nil {
            found.add("account \(id)", "postings to account \(id) (on \(Set(postings.map(\.node)).sorted().joined(separator: ", "))) but no account row")
        }
        return found.list
    }

    /// Decisions and the postings they imply.
    func transferSection(_ s: Snapshot) -> [Violation] {
        var found = Findings()

        // Decisions: at most one committed attempt per transfer id cluster-wide; its postings are
        // exactly the ones its kind implies, of its attempt; no posting without a committed attempt.
        // Ids are compared as the database does, byte for byte (Swift's String equality would merge
        // two spellings of one accented key). A transfer with a prepared branch is in flight: the
        // prepared-branch check judges it (a branch still prepared after the bound is reported).
        let committed = Dictionary(grouping: s.decisions.filter { $0.state == "committed" }, by: { Array($0.transferID.utf8) })
        let postingsByTransfer = Dictionary(grouping: s.postings, by: { Array($0.transferID.utf8) })
        for (bytes, decisions) in committed.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) where !s.inDoubt.contains(bytes) {
            let id = decisions[0].transferID
            let subject = "transfer \(id)"
            if decisions.count > 1 {
                found.add(subject, "transfer \(id) has \(decisions.count) committed decisions: " + decisions.map { "attempt \($0.attempt) on \($0.node)" }.sorted().joined(separator: ", "))
                continue
            }
            let d = decisions[0]
            let postings = postingsByTransfer[bytes] ?? []
            for (account, list) in Dictionary(grouping: postings, by: \.account) where list.count > 1 {
                found.add(subject, "transfer \(id) posts \(list.count) times to account \(account) (on \(list.map(\.node).sorted().joined(separator: ", ")))")
            }
            var expected: [Int64: Int64] = [:]
            switch d.kind {
            case "transfer": if let from = d.from, let to = d.to { expected = [from: -d.amount, to: d.amount] }
            case "withdraw": if let from = d.from { expected = [from: -d.amount] }
            case "deposit", "open": if let to = d.to { expected = [to: d.amount] }
            case "rehome":
                // A drain moved an account's history to its node: it posts nothing of its own.
                if !postings.isEmpty { found.add(subject, "rehome \(id) has postings of its own") }
            default: found.add(subject, "transfer \(id) has a committed decision of unknown kind \(d.kind)")
            }
            let actual = Dictionary(postings.map { ($0.account, $0.amount) }, uniquingKeysWith: +)
            if !expected.isEmpty && actual != expected {
                let show = { (p: [Int64: Int64]) in p.sorted { $0.key < $1.key }.map { "\($0.key): \(money($0.value))" }.joined(separator: ", ") }
                found.add(subject, "committed \(d.kind) \(id) (decision on \(d.node), amount \(money(d.amount))) should post [\(show(expected))], its postings are [\(show(actual))]")
            }
            for p in postings where p.attempt != d.attempt {
                found.add(subject, "a posting of \(id) to account \(p.account) on \(p.node) belongs to attempt \(p.attempt.isEmpty ? "(unnamed)" : p.attempt), not the committed attempt \(d.attempt.isEmpty ? "(unnamed)" : d.attempt)")
            }
        }
        for (bytes, postings) in postingsByTransfer.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) where committed[bytes] == nil && !s.inDoubt.contains(bytes) {
            let id = postings[0].transferID
            found.add("transfer \(id)", "postings of \(id) (accounts \(postings.map { String($0.account) }.sorted().joined(separator: ", "))) have no committed decision")
        }
        return found.list
    }

    /// Range ownership against the maps.
    func ownershipSection(_ s: Snapshot) -> [Violation] {
        var found = Findings()

        // Range ownership: each range's node owns it, active, with the map's bounds; nobody else does.
        for (name, map) in [("accounts", maps.accounts), ("directory", maps.directory)] {
            for range in map.ranges {
                let subject = "range \(name)/\(range.id)"
                let rows = s.ownership.filter { $0.map == name && $0.range == range.id }
                if let own = rows.first(where: { $0.node == range.node }) {
                    if own.state != "active" { found.add(subject, "\(range.node) holds \(name) range \(range.id) in state \(own.state), the map says it owns it") }
                    if own.lower != range.lowerBound || own.upper != range.upperBound {
                        found.add(subject, "\(range.node)'s ownership row of \(name) range \(range.id) has bounds [\(own.lower), \(own.upper.map(String.init) ?? "∞")), the map [\(range.lowerBound), \(range.upperBound.map(String.init) ?? "∞"))")
                    }
                } else {
                    found.add(subject, "\(range.node) has no ownership row for \(name) range \(range.id), which the map gives it")
                }
                for other in rows where other.node != range.node && other.state == "active" {
                    found.add(subject, "\(other.node) holds \(name) range \(range.id) active, but the map gives it to \(range.node)")
                }
            }
            let known = Set(map.ranges.map(\.id))
            for row in s.ownership where row.map == name && !known.contains(row.range) && row.state == "active" {
                found.add("range \(name)/\(row.range)", "\(row.node) holds \(name) range \(row.range) active, which the map does not have")
            }
        }
        return found.list
    }

    /// A prepared ShardBank branch, by xid, and its node.
    struct PreparedBranch: Hashable, Comparable {
        var xid: XID
        var label: String
        static func < (a: Self, b: Self) -> Bool { a.label < b.label }
    }

    private func preparedBranches() async throws -> [PreparedBranch: String] {
        var all: [PreparedBranch: String] = [:]
        for node in connections.nodes {
            for xid in try await connections.withConnection(node, { try await $0.xaRecover() }) where BranchName.parse(xid) != nil {
                all[PreparedBranch(xid: xid, label: "\(xid.gtrid) (\(xid.bqual)) on \(node)")] = node
            }
        }
        return all
    }
}
