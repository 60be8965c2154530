import API
import ClusterMetadata
import Etcd
import Hummingbird
import Ledger
import Logging
import Mover

/// Stands in for `ctl add-node`'s admission: refuses as it would (`slow`: registered, no healthy beat).
@Sendable func refuseNode(_ request: NodeRequest) async throws -> NodeInfo {
    throw NodeRefused(registered: request.id == "slow", message: "refused \(request.id)")
}

/// Runs `body` with the API's router over a bank and metadata that reach nothing (etcd at a closed
/// port, no nodes): for tests of what the edge answers before any storage is asked.
func withOfflineRouter<T>(logger: Logger, adminRoutes: Bool = true, _ body: (Router<BasicRequestContext>) async throws -> T) async throws -> T {
    let etcd = EtcdClient(configuration: EtcdConfiguration(endpoints: ["http://127.0.0.1:9"]), logger: logger)
    let bank = Bank(connections: NodeConnections(logger: logger), maps: { throw LedgerError(.nodeUnavailable, "none") },
                    nextAccountID: { 1 }, logger: logger)
    let cache = MetadataCache(store: MetadataStore(etcd: etcd, keys: MetadataKeys()), logger: logger)
    let mover = RangeMover(connections: NodeConnections(logger: logger), store: MetadataStore(etcd: etcd, keys: MetadataKeys()), logger: logger)
    let splitter = RangeSplitter(connections: NodeConnections(logger: logger), store: MetadataStore(etcd: etcd, keys: MetadataKeys()), logger: logger)
    let rebalancer = Rebalancer(mover: mover, splitter: splitter, logger: logger)
    let router = BankRoutes.router(APIDependencies(bank: bank, cache: cache, health: NodeHealthMonitor(cache: cache),
                                                   etcd: EtcdProbe(etcd: etcd, key: "/x", logger: logger), mover: adminRoutes ? mover : nil,
                                                   splitter: adminRoutes ? splitter : nil, rebalancer: adminRoutes ? rebalancer : nil,
                                                   drainer: adminRoutes ? NodeDrainer(mover: mover, logger: logger) : nil,
                                                   addNode: adminRoutes ? refuseNode : nil))
    do {
        let result = try await body(router)
        try await etcd.shutdown()
        return result
    } catch {
        try? await etcd.shutdown()
        throw error
    }
}
