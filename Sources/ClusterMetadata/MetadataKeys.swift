/// The etcd key layout (`docs/ARCHITECTURE.md` lists the keys), under a configurable prefix (default `/shardbank/`).
public struct MetadataKeys: Sendable, Hashable {
    public let prefix: String

    public init(prefix: String = "/shardbank/") {
        self.prefix = prefix.hasSuffix("/") ? prefix : prefix + "/"
    }

    /// The two shard maps.
    public enum MapName: String, Sendable, CaseIterable, Codable {
        /// Keyed by balance in cents: where an account's data row lives.
        case accounts
        /// Keyed by ``Sharding/DirectoryHash`` of the account id: where its directory entry lives.
        case directory
    }

    public func shardMap(_ name: MapName) -> String { prefix + "shardmap/" + name.rawValue }
    public var shardMaps: String { prefix + "shardmap/" }
    public var nodes: String { prefix + "node/" }
    public func nodeInfo(_ id: String) -> String { prefix + "node/\(id)/info" }
    public func nodeHeartbeat(_ id: String) -> String { prefix + "node/\(id)/heartbeat" }
    public var accountIDs: String { prefix + "ids/account" }
    /// The next number for a new range id (`a4`, `d5`, …): ids are never reused.
    public var rangeIDs: String { prefix + "ids/range" }
    /// Written once by `ctl init`: the cluster's identity and creation time.
    public var clusterInfo: String { prefix + "cluster/info" }

    /// Parses `…/node/{id}/info` and `…/node/{id}/heartbeat`.
    public func parseNodeKey(_ key: String) -> (id: String, leaf: String)? {
        guard key.hasPrefix(nodes) else { return nil }
        let parts = key.dropFirst(nodes.count).split(separator: "/")
        guard parts.count == 2 else { return nil }
        return (String(parts[0]), String(parts[1]))
    }
}
