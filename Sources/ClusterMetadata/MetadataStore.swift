import Etcd
import Foundation
import Sharding

/// A range map as stored, with the etcd revision that last changed it (the compare-and-swap token).
public struct StoredMap: Sendable, Hashable {
    public var map: RangeMap
    public var modRevision: Int64
}

/// Reads and writes the cluster metadata in etcd: shard maps (compare-and-swap on mod_revision) and
/// the node registry.
public struct MetadataStore: Sendable {
    public let etcd: EtcdClient
    public let keys: MetadataKeys

    public init(etcd: EtcdClient, keys: MetadataKeys) {
        self.etcd = etcd
        self.keys = keys
    }

    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try! encoder.encode(value))
    }

    static func decodeMap(_ kv: EtcdKeyValue) throws(MetadataError) -> StoredMap {
        do {
            return StoredMap(map: try JSONDecoder().decode(RangeMap.self, from: Data(kv.value)), modRevision: kv.modRevision)
        } catch {
            throw MetadataError(.corrupt, "the shard map at \(kv.key) cannot be read: \(error)", underlying: error)
        }
    }

    static func decodeNode(_ kv: EtcdKeyValue) throws(MetadataError) -> NodeInfo {
        do { return try JSONDecoder().decode(NodeInfo.self, from: Data(kv.value)) } catch {
            throw MetadataError(.corrupt, "the node record at \(kv.key) cannot be read: \(error)", underlying: error)
        }
    }

    /// The stored map, or nil before `ctl init`.
    public func loadMap(_ name: MetadataKeys.MapName) async throws(MetadataError) -> StoredMap? {
        let kv: EtcdKeyValue?
        do { kv = try await etcd.get(keys.shardMap(name)) } catch { throw MetadataError(error, while: "reading shard map \(name.rawValue)") }
        guard let kv else { return nil }
        return try Self.decodeMap(kv)
    }

    /// Replaces map `name` if it still is at `expectedRevision` (0 = it must not exist yet).
    /// Of two concurrent writers one wins; the other gets `.conflict`. Returns the new mod revision.
    public func saveMap(_ map: RangeMap, as name: MetadataKeys.MapName, expectedRevision: Int64, knownNodes: Set<String>? = nil) async throws(MetadataError) -> Int64 {
        do { try map.validate(knownNodes: knownNodes) } catch {
            throw MetadataError(.invalid, error.description, underlying: error)
        }
        let key = keys.shardMap(name)
        let value = Self.encode(map)
        do {
            let result = try await etcd.transaction(
                compare: [.modRevision(key, is: expectedRevision)],
                success: [.put(key: key, value: value, lease: nil)],
                failure: [.get(.key(key))])
            guard result.succeeded else {
                var current: Int64 = 0
                if case .get(let r) = result.results.first { current = r.kvs.first?.modRevision ?? 0 }
                throw MetadataError(.conflict, "shard map \(name.rawValue) changed since revision \(expectedRevision) (now at \(current)); reload it and try again")
            }
            return result.revision
        } catch let error as EtcdError where error.code == .outcomeUnknown {
            // Find out whether our write landed: the stored bytes are ours only if it did.
            let stored: EtcdKeyValue?
            do { stored = try await etcd.get(key) } catch { throw MetadataError(error, while: "checking shard map \(name.rawValue) after a lost answer") }
            if let stored, stored.value == value { return stored.modRevision }
            throw MetadataError(.conflict, "the write of shard map \(name.rawValue) was not applied (etcd's answer was lost); reload it and try again", underlying: error)
        } catch let error as EtcdError {
            throw MetadataError(error, while: "writing shard map \(name.rawValue)")
        } catch let error as MetadataError {
            throw error
        } catch {
            throw MetadataError(.etcd, "writing shard map \(name.rawValue): \(error)", underlying: error)
        }
    }

    /// Every registered node, by id.
    public func nodes() async throws(MetadataError) -> [NodeInfo] {
        let result: EtcdRangeResult
        do { result = try await etcd.range(.prefix(keys.nodes)) } catch { throw MetadataError(error, while: "reading the node registry") }
        var nodes: [NodeInfo] = []
        for kv in result.kvs where keys.parseNodeKey(kv.key)?.leaf == "info" {
            nodes.append(try Self.decodeNode(kv))
        }
        return nodes.sorted { $0.id < $1.id }
    }

    /// Writes a node's record.
    public func register(_ node: NodeInfo) async throws(MetadataError) {
        do { try await etcd.put(keys.nodeInfo(node.id), value: Self.encode(node)) } catch {
            throw MetadataError(error, while: "registering node \(node.id)")
        }
    }

    /// The etcd operation that writes a node's record (for atomic multi-key bootstraps).
    public func registerOperation(_ node: NodeInfo) -> EtcdOperation {
        .put(key: keys.nodeInfo(node.id), value: Self.encode(node), lease: nil)
    }

    /// The etcd operation that writes a map (for atomic multi-key bootstraps).
    public func saveMapOperation(_ map: RangeMap, as name: MetadataKeys.MapName) -> EtcdOperation {
        .put(key: keys.shardMap(name), value: Self.encode(map), lease: nil)
    }
}
