import MariaDB

/// How a ShardBank XA branch is named, so that a resolver on any machine can find its decision.
///
/// - gtrid: the transfer id (≤ 64 bytes, MariaDB's limit) — also the primary key of the decision
///   row in `transfers` on the commit-point node;
/// - bqual: `participant|commitPoint` — the branch's own node and the node holding the decision;
/// - formatID: ``formatID`` ("SB"), so branches of other applications are never touched.
public enum BranchName {
    public static let formatID: Int32 = 0x5342

    public static func xid(transferID: String, participant: String, commitPoint: String) -> XID {
        XID(gtrid: transferID, bqual: participant + "|" + commitPoint, formatID: formatID)
    }

    /// The transfer id, participant and commit-point node of a ShardBank branch; nil for any other xid.
    public static func parse(_ xid: XID) -> (transferID: String, participant: String, commitPoint: String)? {
        guard xid.formatID == formatID else { return nil }
        let parts = xid.bqual.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, !xid.gtrid.isEmpty else { return nil }
        return (xid.gtrid, String(parts[0]), String(parts[1]))
    }

    /// Checks that the names fit MariaDB's 64-byte limits.
    public static func validate(transferID: String, nodes: [String]) -> Bool {
        transferID.utf8.count <= 64 && !transferID.isEmpty && nodes.allSatisfy { !$0.contains("|") && $0.utf8.count <= 31 }
    }
}
