import BankSchema
import ClusterMetadata
import Etcd
import Foundation
import Logging
import MariaDB
import Sharding
import ShardBankConfig

/// `ctl init`: registers the nodes, creates their schema, writes the shard maps — or nothing.
public struct Bootstrap: Sendable {
    public var configuration: ShardBankConfiguration
    public var accounts: RangeMap
    public var directory: RangeMap
    public var force: Bool

    /// The seed's layout on the first three configured nodes, unless maps are given.
    public init(configuration: ShardBankConfiguration, accounts: RangeMap? = nil, directory: RangeMap? = nil, force: Bool = false) throws(AdminError) {
        self.configuration = configuration
        self.force = force
        let ids = configuration.nodes.map(\.id)
        guard accounts != nil && directory != nil || ids.count >= 3 else {
            throw AdminError("init needs at least three nodes in cluster.nodes for the seed's layout (found \(ids.count): \(ids.joined(separator: ", "))), or both --accounts-map and --directory-map")
        }
        func onConfigured(_ map: RangeMap) throws(AdminError) -> RangeMap {
            var m = map
            for (seed, actual) in zip(SeedLayout.nodes, ids) where seed != actual {
                for r in m.ranges where r.node == seed { m = (try? m.reassigning(r.id, to: actual)) ?? m }
            }
            m.version = 1
            return m
        }
        if let accounts { self.accounts = accounts } else { self.accounts = try onConfigured(SeedLayout.accountsMap()) }
        if let directory { self.directory = directory } else { self.directory = try onConfigured(SeedLayout.directoryMap()) }
        let known = Set(ids)
        for (name, map) in [("accounts", self.accounts), ("directory", self.directory)] {
            do { try map.validate(knownNodes: known) } catch {
                throw AdminError("the \(name) map is invalid: \(error.message)")
            }
        }
        guard self.accounts.domainStart == 0 else {
            throw AdminError("the accounts map must start at 0.00 (balances are never negative); it starts at \(Money(minorUnits: self.accounts.domainStart))")
        }
        guard self.directory.domainStart == Int64.min else {
            throw AdminError("the directory map must start at \(Int64.min) to cover every account hash")
        }
    }

    /// Runs the bootstrap. Checks everything that can fail before it writes anything to etcd, and
    /// writes all of etcd's keys in one transaction.
    public func run(etcd: EtcdClient, logger: Logger, progress: @Sendable (String) -> Void) async throws {
        let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
        progress("checking etcd at \(configuration.etcd.endpoints.joined(separator: ", "))")
        let existing = try await store.loadMap(.accounts)
        if let existing, !force {
            throw AdminError("the cluster under \(configuration.etcdPrefix) is already initialised (accounts map version \(existing.map.version)); a second init would replace its maps. Pass --force only if you mean to discard them.")
        }
        // Connect to every node first: a wrong password or a down node stops here, before any write.
        var connections: [(ShardBankConfiguration.Node, MariaDBConnection)] = []
        do {
            for node in configuration.nodes {
                progress("connecting to \(node.id) at \(node.host):\(node.port)")
                let c = try await MariaDBConnection.connect(configuration: configuration.mariaDB(node: node.id, host: node.host, port: node.port, database: node.database, tlsMode: node.tlsMode.rawValue))
                connections.append((node, c))
            }
            try await write(store: store, existing: existing, connections: connections, etcd: etcd, logger: logger, progress: progress)
        } catch {
            for (_, c) in connections { await c.close() }
            throw error
        }
        for (_, c) in connections { await c.close() }
    }

    private func write(store: MetadataStore, existing: StoredMap?, connections: [(ShardBankConfiguration.Node, MariaDBConnection)],
                       etcd: EtcdClient, logger: Logger, progress: @Sendable (String) -> Void) async throws {
        for (node, c) in connections {
            let applied = try await BankSchema.migrate(c, logger: logger)
            progress("schema on \(node.id): version \(BankSchema.latestVersion)" + (applied.isEmpty ? " (already current)" : " (applied \(applied.map(String.init).joined(separator: ", ")))"))
            try await c.transaction { c in
                try await c.query("DELETE FROM range_ownership")
                for (name, map) in [("accounts", accounts), ("directory", directory)] {
                    for r in map.ranges where r.node == node.id {
                        try await c.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES (?, ?, ?, ?, 1, 'active')",
                                            [.string(name), .string(r.id), .int(r.lowerBound), r.upperBound.map(MariaDBValue.int) ?? .null])
                    }
                }
            }
        }
        progress("writing shard maps and node registry to etcd")
        var operations: [EtcdOperation] = [
            store.saveMapOperation(accounts, as: .accounts),
            store.saveMapOperation(directory, as: .directory),
            .put(store.keys.clusterInfo, "{\"initialized_at\":\"\(ISO8601DateFormatter().string(from: Date()))\",\"schema_version\":\(BankSchema.latestVersion)}"),
        ]
        for node in configuration.nodes {
            operations.append(store.registerOperation(NodeInfo(id: node.id, host: node.host, port: node.port, database: node.database, tlsMode: node.tlsMode.rawValue)))
        }
        // Ids are never reused, even across a forced re-init: the counter is only created.
        let idsExist = try await etcd.get(store.keys.accountIDs) != nil
        if !idsExist { operations.append(.put(store.keys.accountIDs, "1")) }
        let result = try await etcd.transaction(
            compare: [.modRevision(store.keys.shardMap(.accounts), is: existing?.modRevision ?? 0)] + (idsExist ? [] : [.absent(store.keys.accountIDs)]),
            success: operations)
        guard result.succeeded else {
            throw AdminError("another process changed the cluster metadata while init ran; nothing was written. Run `ctl status`, then init again if needed.")
        }
    }
}

/// An operator-facing error: one clear sentence saying what is wrong and what to do.
public struct AdminError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
