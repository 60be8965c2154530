import BankSchema
import ClusterMetadata
import Etcd
@_spi(FaultInjection) import Ledger
import Logging
import ShardBankConfig

/// The parts of a running bank, wired from a configuration: used by `serve` and `bench`.
struct BankRuntime {
    let etcd: EtcdClient
    let store: MetadataStore
    let cache: MetadataCache
    let connections: NodeConnections
    let bank: Bank

    /// Loads the metadata, opens a pool per node and brings their schema up to date.
    static func start(_ configuration: ShardBankConfiguration, logger: Logger, hook: (@Sendable (TwoPhaseStep) async throws -> Void)? = nil) async throws -> BankRuntime {
        let etcd = EtcdClient(configuration: configuration.etcd, logger: logger)
        do {
            let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
            let cache = MetadataCache(store: store, logger: logger)
            try await cache.reload()
            let snapshot = cache.snapshot
            guard snapshot.accounts != nil, snapshot.directory != nil else {
                throw CLIError("the cluster under \(configuration.etcdPrefix) is not initialised: run `shardbank ctl init --config FILE` first")
            }
            let connections = await nodeConnections(configuration, nodes: Array(snapshot.nodes.values), logger: logger)
            for node in connections.nodes {
                _ = try await connections.withConnection(node) { try await BankSchema.migrate($0, logger: logger) }
            }
            let allocator = IDAllocator(store: store, blockSize: 100)
            let bank = Bank(connections: connections, maps: {
                let s = cache.snapshot
                guard let accounts = s.accounts?.map, let directory = s.directory?.map else {
                    throw MetadataError(.notInitialized, "the shard maps are not loaded")
                }
                return LedgerMaps(accounts: accounts, directory: directory)
            }, refreshMaps: { try await cache.refreshMaps() }, nextAccountID: { try await allocator.nextID() },
                            limit: configuration.balanceLimit, moveWait: configuration.moveWait, logger: logger, faults: hook)
            return BankRuntime(etcd: etcd, store: store, cache: cache, connections: connections, bank: bank)
        } catch {
            try? await etcd.shutdown()
            throw error
        }
    }

    func shutdown() async {
        await connections.shutdown()
        try? await etcd.shutdown()
    }
}
