import API
import ArgumentParser
import BankSchema
import ClusterMetadata
import Etcd
import Hummingbird
import Ledger
import Logging
import ServiceLifecycle
import ShardBankConfig

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the bank service: the HTTP JSON API over the sharded nodes.",
        discussion: """
            Loads the shard maps and the node registry from etcd (and keeps them current with a watch),
            brings every node's schema up to date, resolves in-doubt distributed transactions in the
            background, and serves the API on http.host:http.port until SIGTERM or SIGINT.
            """)

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await reportingErrors {
            let configuration = try await options.load()
            let logger = makeLogger(configuration.logLevel, label: "shardbank.serve")
            try await EtcdClient.with(configuration: configuration.etcd, logger: logger) { etcd in
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
                }, nextAccountID: { try await allocator.nextID() }, logger: logger)
                let resolver = InDoubtResolver(connections: connections, logger: logger)
                let app = Application(
                    router: BankRoutes.router(APIDependencies(bank: bank, cache: cache)),
                    configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort), serverName: "shardbank"),
                    services: [cache, resolver],
                    logger: logger)
                do {
                    try await app.runService()
                } catch {
                    await connections.shutdown()
                    throw error
                }
                await connections.shutdown()
            }
        }
    }
}
