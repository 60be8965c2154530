import BankSchema
import ClusterMetadata
import Etcd
@_spi(FaultInjection) import Ledger
import Logging
import ServiceLifecycle
import ShardBankConfig

/// The parts of a running bank, wired from a configuration: what `serve` and `bench` run.
///
/// ``start(_:logger:)`` loads the metadata, opens a pool per registered node and brings their
/// schema up to date. The process must then run ``services`` (in its `ServiceGroup`, or with
/// ``run(_:)``): the metadata watch (``MetadataCache``), which keeps maps, registry and heartbeats
/// current, and the ``NodeRegistryFollower``, which opens pools for nodes registered later and
/// closes those of removed nodes.
public struct BankRuntime: Sendable {
    public let configuration: ShardBankConfiguration
    public let etcd: EtcdClient
    public let store: MetadataStore
    public let cache: MetadataCache
    public let connections: NodeConnections
    public let registry: NodeRegistryFollower
    public let bank: Bank
    private let logger: Logger

    /// What must run beside the bank, in this order (a `ServiceGroup` stops them in reverse).
    public var services: [any Service] { [cache, registry] }

    /// Loads the metadata, opens a pool per node and brings their schema up to date.
    public static func start(_ configuration: ShardBankConfiguration, logger: Logger) async throws -> BankRuntime {
        try await start(configuration, logger: logger, faults: nil)
    }

    /// As ``start(_:logger:)``, with a fault drill's pause points in every two-phase commit.
    @_spi(FaultInjection)
    public static func start(_ configuration: ShardBankConfiguration, logger: Logger, faults: FaultInjector?) async throws -> BankRuntime {
        let etcd = EtcdClient(configuration: configuration.etcd, logger: logger)
        do {
            let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
            let cache = MetadataCache(store: store, logger: logger)
            try await cache.reload()
            let snapshot = cache.snapshot
            guard snapshot.accounts != nil, snapshot.directory != nil else {
                throw MetadataError(.notInitialized, "the cluster under \(configuration.etcdPrefix) is not initialised: run `shardbank ctl init --config FILE` first")
            }
            let nodes = Array(snapshot.nodes.values)
            let connections = await nodeConnections(configuration, nodes: nodes, logger: logger)
            // A node that does not answer at start-up stops the start (the operator sees it at once);
            // one registered later is the follower's, which retries instead.
            for node in connections.nodes {
                _ = try await connections.withConnection(node) { try await BankSchema.migrate($0, logger: logger) }
            }
            let registry = NodeRegistryFollower(cache: cache, connections: connections, configuration: configuration, initial: nodes,
                                                options: .init(migrate: true), logger: logger)
            let allocator = IDAllocator(store: store, blockSize: 100)
            let bank = Bank(connections: connections, maps: {
                let s = cache.snapshot
                guard let accounts = s.accounts?.map, let directory = s.directory?.map else {
                    throw MetadataError(.notInitialized, "the shard maps are not loaded")
                }
                return LedgerMaps(accounts: accounts, directory: directory)
            }, refreshMaps: { try await cache.refreshMaps() }, nextAccountID: { try await allocator.nextID() },
                            limit: configuration.balanceLimit, moveWait: configuration.moveWait, logger: logger, faults: faults)
            return BankRuntime(configuration: configuration, etcd: etcd, store: store, cache: cache, connections: connections,
                               registry: registry, bank: bank, logger: logger)
        } catch {
            try? await etcd.shutdown()
            throw error
        }
    }

    /// Runs `body` while ``services`` run (for a process without a service group of its own, such
    /// as `bench`), then stops them gracefully. Does not shut the runtime down.
    public func run<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        let group = ServiceGroup(services: services, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            await group.triggerGracefulShutdown()
            let stopped: Result<Void, any Error>
            do { stopped = .success(try await tasks.waitForAll()) } catch { stopped = .failure(error) }
            // The body's error is the one to report; a service's failure matters only when it succeeded.
            let value = try result.get()
            try stopped.get()
            return value
        }
    }

    /// Shuts every pool and the etcd client down.
    public func shutdown() async {
        await connections.shutdown()
        try? await etcd.shutdown()
    }
}

/// A pool per registered node that is not `removed`, with the configuration's credentials.
public func nodeConnections(_ configuration: ShardBankConfiguration, nodes: [NodeInfo], logger: Logger) async -> NodeConnections {
    let connections = NodeConnections(logger: logger)
    connections.markRemoved(nodes.filter { $0.state == .removed }.map(\.id))
    for node in nodes.sorted(by: { $0.id < $1.id }) where node.state != .removed {
        await connections.register(node: node.id, configuration: configuration.mariaDB(node: node.id, host: node.host, port: node.port,
                                                                                      database: node.database, tlsMode: node.tlsMode),
                                   options: configuration.mysql.pool)
    }
    return connections
}
