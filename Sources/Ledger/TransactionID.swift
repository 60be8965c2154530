import MariaDB

/// One try at carrying out a transfer. A retry with the same idempotency key is a new attempt: its
/// XA branches, its postings and its decision row carry its own id, so that no attempt ever commits,
/// rolls back or answers for another attempt's branches — an earlier attempt's branch may still be
/// prepared and detached when a retry starts.
public struct AttemptID: Sendable, Hashable, CustomStringConvertible {
    /// 12 lowercase hex digits (48 random bits), or "" for branches and rows written before attempts
    /// were named (schema v2).
    public let rawValue: String

    public init?(rawValue: String) {
        guard rawValue.isEmpty || (rawValue.utf8.count == 12 && rawValue.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }) else {
            return nil
        }
        self.rawValue = rawValue
    }

    /// A fresh attempt id. 48 random bits: two attempts of one transfer id colliding is a 1-in-2⁴⁸ event per pair.
    public static func random() -> AttemptID {
        var generator = SystemRandomNumberGenerator()
        let hex = String(generator.next() & 0xFFFF_FFFF_FFFF, radix: 16)
        return AttemptID(rawValue: String(repeating: "0", count: 12 - hex.count) + hex)!
    }

    public var description: String { rawValue.isEmpty ? "(unnamed)" : rawValue }
}

/// How a ShardBank XA branch is named, so that a resolver on any machine can find its decision.
///
/// - gtrid: the transfer id (≤ 64 bytes, MariaDB's limit) — the key of the decision rows in
///   `transfers` on the commit-point node;
/// - bqual: `attempt|participant|commitPoint` — the attempt that started the branch, the branch's own
///   node and the node holding the decision (≤ 64 bytes: node ids of at most ``maxNodeIDLength``);
/// - formatID: ``formatID`` ("SB"), so branches of other applications are never touched.
public enum BranchName {
    public static let formatID: Int32 = 0x5342
    /// The longest node id that fits two of them and an attempt id into a bqual's 64 bytes.
    public static let maxNodeIDLength = 25

    /// A parsed branch name.
    public struct Name: Sendable, Hashable {
        public var transferID: String
        public var attempt: AttemptID
        public var participant: String
        public var commitPoint: String
    }

    public static func xid(transferID: String, attempt: AttemptID, participant: String, commitPoint: String) -> XID {
        XID(gtrid: transferID, bqual: attempt.rawValue + "|" + participant + "|" + commitPoint, formatID: formatID)
    }

    /// The parts of a ShardBank branch; nil for any other xid. Branches named before attempts
    /// (`participant|commitPoint`) parse with the unnamed attempt.
    public static func parse(_ xid: XID) -> Name? {
        guard xid.formatID == formatID, !xid.gtrid.isEmpty else { return nil }
        let parts = xid.bqual.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        let named: [String]
        switch parts.count {
        case 3: named = parts
        case 2: named = [""] + parts
        default: return nil
        }
        guard let attempt = AttemptID(rawValue: named[0]), !named[1].isEmpty, !named[2].isEmpty else { return nil }
        return Name(transferID: xid.gtrid, attempt: attempt, participant: named[1], commitPoint: named[2])
    }

    /// Checks that the names fit MariaDB's 64-byte limits.
    public static func validate(transferID: String, nodes: [String]) -> Bool {
        transferID.utf8.count <= 64 && !transferID.isEmpty
            && nodes.allSatisfy { !$0.isEmpty && !$0.contains("|") && $0.utf8.count <= maxNodeIDLength }
    }
}
