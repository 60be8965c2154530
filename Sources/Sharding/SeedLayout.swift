/// The seed document's layout, made contiguous and open above (`docs/SHARDING.md`).
public enum SeedLayout {
    /// node1–node3.
    public static let nodes = ["node1", "node2", "node3"]

    /// Balances in cents: node1 `[0.00, 10000.01)`, node2 `[10000.01, 50000.01)`, node3 `[50000.01, ∞)`.
    public static func accountsMap() -> RangeMap {
        // The literal is valid by construction; `try!` would hide a broken edit, so the test suite pins it.
        try! RangeMap(name: "accounts", keyKind: "balance_cents", ranges: [
            ShardRange(id: "a1", lowerBound: 0, upperBound: 1_000_001, node: "node1"),
            ShardRange(id: "a2", lowerBound: 1_000_001, upperBound: 5_000_001, node: "node2"),
            ShardRange(id: "a3", lowerBound: 5_000_001, upperBound: nil, node: "node3"),
        ])
    }

    /// The directory's hash domain split in three nearly equal parts.
    public static func directoryMap() -> RangeMap {
        let third = Int64(UInt64.max / 3)
        let b1 = Int64.min + third
        let b2 = b1 + third
        return try! RangeMap(name: "directory", keyKind: "account_hash", ranges: [
            ShardRange(id: "d1", lowerBound: .min, upperBound: b1, node: "node1"),
            ShardRange(id: "d2", lowerBound: b1, upperBound: b2, node: "node2"),
            ShardRange(id: "d3", lowerBound: b2, upperBound: nil, node: "node3"),
        ])
    }
}
