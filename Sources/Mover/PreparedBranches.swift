import ClusterMetadata
import Ledger

/// Which nodes must be asked for prepared branches, and which branches name a node as their commit
/// point — what a move asks before deleting the decisions it moved, and a drain before it removes
/// the node.
enum PreparedBranches {
    /// Every registered node but the removed ones, and the first of them this process has no pool
    /// for: such a node could hold a branch naming the node in question, so the caller stops
    /// rather than miss it.
    static func liveNodes(_ store: MetadataStore, _ connections: NodeConnections) async throws -> (nodes: [String], missing: String?) {
        let live = try await store.nodes().filter { $0.state != .removed }.map(\.id).sorted()
        return (live, live.first { !connections.nodes.contains($0) })
    }

    /// The branches prepared on `nodes` that name `node` as their commit point, as `other/gtrid/bqual`.
    static func naming(_ node: String, on nodes: [String], _ connections: NodeConnections) async throws -> Set<String> {
        var found = Set<String>()
        for other in nodes {
            let xids = try await connections.withConnection(other) { try await $0.xaRecover() }
            for xid in xids where BranchName.parse(xid)?.commitPoint == node { found.insert("\(other)/\(xid.gtrid)/\(xid.bqual)") }
        }
        return found
    }
}
