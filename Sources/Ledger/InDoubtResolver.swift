import Logging
import MariaDB
import ServiceLifecycle
import Synchronization

/// The resolver's bookkeeping, without I/O: which ShardBank branches are prepared on which node,
/// since when they have been seen, and which are old enough to resolve. Feed it what each pass saw;
/// it answers what to resolve.
public struct InDoubtTracker: Sendable {
    public struct Branch: Sendable, Hashable {
        public var node: String
        public var xid: XID
    }

    /// When each branch was first seen prepared.
    private(set) var firstSeen: [Branch: ContinuousClock.Instant] = [:]
    let minimumAge: Duration

    public init(minimumAge: Duration) {
        self.minimumAge = minimumAge
    }

    /// `node` listed `xids` as prepared at `now`: returns those prepared for at least the minimum
    /// age (their coordinator had its time). Branches of `node` no longer listed are forgotten.
    public mutating func listed(_ xids: [XID], on node: String, at now: ContinuousClock.Instant) -> [Branch] {
        let current = Set(xids.filter { BranchName.parse($0) != nil }.map { Branch(node: node, xid: $0) })
        firstSeen = firstSeen.filter { $0.key.node != node || current.contains($0.key) }
        var due: [Branch] = []
        for branch in current.sorted(by: { $0.xid.description < $1.xid.description }) {
            let seen = firstSeen[branch] ?? now
            firstSeen[branch] = seen
            if now - seen >= minimumAge { due.append(branch) }
        }
        return due
    }

    /// A branch was finished.
    public mutating func resolved(_ branch: Branch) {
        firstSeen[branch] = nil
    }

    /// Nodes no longer registered: their branches are forgotten.
    public mutating func keep(nodes: Set<String>) {
        firstSeen = firstSeen.filter { nodes.contains($0.key.node) }
    }
}

/// Finishes prepared XA branches whose coordinator is gone: any process may run it, on any machine,
/// because each branch names its attempt and the node holding its decision.
///
/// A branch seen prepared for at least `minimumAge` is resolved from its attempt's decision row on
/// the commit point: committed → XA COMMIT; aborted → XA ROLLBACK; absent → an `aborted` row for that
/// attempt is inserted first (the primary key arbitrates against a coordinator that is still
/// running), then XA ROLLBACK. Another attempt's decision — even a committed one of the same
/// transfer — never commits this branch: the retry that committed posted its own.
///
/// A commit point the registry marks `removed` is not asked (its pools are closed, its server may
/// be gone): the branch is rolled back. A drain ends only after a moment with no branch prepared
/// anywhere naming the node, and before that moment the node owned no range any more; a branch
/// still naming it was prepared after that moment, and its attempt's decision — whose transaction
/// fences the commit point's ranges — could never commit there.
public final class InDoubtResolver: Service, Sendable {
    /// What one pass did to one branch.
    public struct Resolution: Sendable, Hashable {
        public var transferID: String
        public var attempt: AttemptID
        public var node: String
        public var decision: DecisionState
    }

    let connections: NodeConnections
    let scope: Set<String>?
    let interval: Duration
    let logger: Logger
    private let tracker: Mutex<InDoubtTracker>

    /// - Parameter nodes: the nodes whose prepared branches this resolver finishes (an agent: its
    ///   own); nil for every node. Decisions are read wherever they are.
    public init(connections: NodeConnections, nodes: Set<String>? = nil, minimumAge: Duration = .seconds(2), interval: Duration = .seconds(1), logger: Logger) {
        self.connections = connections
        self.scope = nodes
        self.tracker = Mutex(InDoubtTracker(minimumAge: minimumAge))
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = await self.resolveOnce()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// One pass over every node; returns what it resolved.
    @discardableResult
    public func resolveOnce() async -> [Resolution] {
        var resolved: [Resolution] = []
        let nodes = connections.nodes.filter { scope?.contains($0) ?? true }
        tracker.withLock { $0.keep(nodes: Set(nodes)) }
        for node in nodes {
            let xids: [XID]
            do { xids = try await connections.withConnection(node) { try await $0.xaRecover() } } catch {
                // Its branches keep their ages in the tracker: they are still in doubt.
                logger.debug("cannot list prepared branches", metadata: ["node": "\(node)", "error": "\(error)"])
                continue
            }
            let due = tracker.withLock { $0.listed(xids, on: node, at: .now) }
            for branch in due {
                do {
                    let resolution = try await Self.resolve(branch.xid, on: node, connections: connections)
                    logger.info("resolved an in-doubt branch", metadata: ["transfer_id": "\(resolution.transferID)", "attempt": "\(resolution.attempt)",
                                                                          "node": "\(node)", "decision": "\(resolution.decision.rawValue)"])
                    resolved.append(resolution)
                    tracker.withLock { $0.resolved(branch) }
                } catch {
                    // The commit point is down, or the coordinator still holds the branch: next pass.
                    logger.debug("cannot resolve an in-doubt branch yet", metadata: ["xid": "\(branch.xid)", "node": "\(node)", "error": "\(error)"])
                }
            }
        }
        return resolved
    }

    /// Finishes one prepared branch on `node` from its attempt's decision (recording a presumed
    /// abort where there is none). Throws when the commit point or the node does not answer, or the
    /// branch is not a ShardBank one.
    public static func resolve(_ xid: XID, on node: String, connections: NodeConnections) async throws -> Resolution {
        guard let name = BranchName.parse(xid) else { throw LedgerError(.invalid, "\(xid) is not a ShardBank branch") }
        let decision: DecisionState
        if connections.isRemoved(name.commitPoint) {
            decision = .aborted
        } else {
            decision = try await connections.withConnection(name.commitPoint) {
                try await DecisionRows.decideIfAbsent(name.transferID, attempt: name.attempt, on: $0)
            }
        }
        try await connections.withConnection(node) { c in
            switch decision {
            case .committed: try await c.xaCommit(xid)
            case .aborted: try await c.xaRollback(xid)
            }
        }
        return Resolution(transferID: name.transferID, attempt: name.attempt, node: node, decision: decision)
    }
}

/// A prepared ShardBank branch as `ctl xa list` shows it.
public struct PreparedBranch: Sendable {
    public var node: String
    public var xid: XID
    public var name: BranchName.Name
    /// Its attempt's decision on the commit point; nil when none is recorded yet.
    public var decision: DecisionState?
    /// Why the decision could not be read (the commit point does not answer), if so.
    public var decisionError: String?
    /// The commit point is `removed` (drained): its attempt decided nothing, and resolving rolls
    /// the branch back (see ``InDoubtResolver``).
    public var commitPointRemoved = false
    /// How long ago its first posting on this node was written, when it has one.
    public var age: Duration?

    /// Every prepared ShardBank branch on `nodes` (default: every registered node), with its decision
    /// as recorded now (read only: nothing is presumed).
    public static func list(_ connections: NodeConnections, nodes: [String]? = nil) async throws -> [PreparedBranch] {
        var all: [PreparedBranch] = []
        for node in nodes ?? connections.nodes {
            let xids = try await connections.withConnection(node) { try await $0.xaRecover() }
            for xid in xids {
                guard let name = BranchName.parse(xid) else { continue }
                var branch = PreparedBranch(node: node, xid: xid, name: name)
                if connections.isRemoved(name.commitPoint) {
                    branch.commitPointRemoved = true
                } else {
                    do {
                        branch.decision = try await connections.withConnection(name.commitPoint) {
                            try await DecisionRows.state(of: name.transferID, attempt: name.attempt, on: $0)
                        }
                    } catch {
                        branch.decisionError = "\(error)"
                    }
                }
                // A prepared branch's postings are uncommitted: only a dirty read sees when they were written.
                branch.age = try await connections.withConnection(node) { c in
                    try await c.begin(isolation: .readUncommitted)
                    let micros = try await c.execute("SELECT TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) AS age FROM journal WHERE transfer_id = ? AND attempt = ?",
                                                     [.string(name.transferID), .string(name.attempt.rawValue)]).rows.first?.optionalInt64("age")
                    try await c.commit()
                    return micros.map { .microseconds($0) }
                }
                all.append(branch)
            }
        }
        return all
    }
}
