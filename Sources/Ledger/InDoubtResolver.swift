import Logging
import MariaDB
import ServiceLifecycle
import Synchronization

/// Finishes prepared XA branches whose coordinator is gone (DESIGN §5): any process may run it, on
/// any machine, because each branch names the node holding its decision.
///
/// A branch seen prepared for at least `minimumAge` is resolved from the commit point's decision
/// row: committed → XA COMMIT; aborted → XA ROLLBACK; absent → an `aborted` row is inserted first
/// (the primary key arbitrates against a coordinator that is still running), then XA ROLLBACK.
/// Prepared branches hold their locks, so this runs every `interval`.
public final class InDoubtResolver: Service, Sendable {
    /// What one pass did to one branch.
    public struct Resolution: Sendable, Hashable {
        public var transferID: String
        public var node: String
        public var decision: DecisionState
    }

    let connections: NodeConnections
    let scope: Set<String>?
    let minimumAge: Duration
    let interval: Duration
    let logger: Logger
    private let firstSeen = Mutex<[XID: ContinuousClock.Instant]>([:])

    /// - Parameter nodes: the nodes whose prepared branches this resolver finishes (an agent: its
    ///   own); nil for every node. Decisions are read wherever they are.
    public init(connections: NodeConnections, nodes: Set<String>? = nil, minimumAge: Duration = .seconds(2), interval: Duration = .seconds(1), logger: Logger) {
        self.connections = connections
        self.scope = nodes
        self.minimumAge = minimumAge
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
        var stillPrepared: Set<XID> = []
        for node in connections.nodes where scope?.contains(node) ?? true {
            let xids: [XID]
            do { xids = try await connections.withConnection(node) { try await $0.xaRecover() } } catch {
                logger.debug("cannot list prepared branches", metadata: ["node": "\(node)", "error": "\(error)"])
                // Keep the ages of this node's branches: they are still in doubt.
                stillPrepared.formUnion(firstSeen.withLock { Array($0.keys) })
                continue
            }
            let now = ContinuousClock.now
            for xid in xids {
                guard let name = BranchName.parse(xid) else { continue }
                stillPrepared.insert(xid)
                let seen = firstSeen.withLock { seen in
                    if let t = seen[xid] { return t }
                    seen[xid] = now
                    return now
                }
                guard now - seen >= minimumAge else { continue }
                do {
                    let decision = try await connections.withConnection(name.commitPoint) {
                        try await DecisionRows.decideIfAbsent(name.transferID, on: $0)
                    }
                    try await connections.withConnection(node) { c in
                        switch decision {
                        case .committed: try await c.xaCommit(xid)
                        case .aborted: try await c.xaRollback(xid)
                        }
                    }
                    logger.info("resolved an in-doubt branch", metadata: ["transfer_id": "\(name.transferID)", "node": "\(node)", "decision": "\(decision.rawValue)"])
                    resolved.append(Resolution(transferID: name.transferID, node: node, decision: decision))
                    stillPrepared.remove(xid)
                } catch {
                    // The commit point is down, or the coordinator still holds the branch: next pass.
                    logger.debug("cannot resolve an in-doubt branch yet", metadata: ["transfer_id": "\(name.transferID)", "node": "\(node)", "error": "\(error)"])
                }
            }
        }
        firstSeen.withLock { seen in seen = seen.filter { stillPrepared.contains($0.key) } }
        return resolved
    }
}
