@_spi(FaultInjection) import Admin
import API
import ArgumentParser
import BankSchema
import ClusterMetadata
import Etcd
import Hummingbird
@_spi(FaultInjection) import Ledger
import Mover
import Logging
import ServiceLifecycle
import ShardBankConfig
import Foundation

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the bank service: the HTTP JSON API over the sharded nodes.",
        discussion: """
            Loads the shard maps and the node registry from etcd (and keeps them current with a watch), \
            brings every node's schema up to date, resolves in-doubt distributed transactions in the \
            background, and serves the API on http.host:http.port until SIGTERM or SIGINT. \
            It follows the node registry while it runs: a node registered later (node/{id}/info) gets a \
            connection pool once its schema is brought up to date — until it answers, it is tried \
            again, and its credentials are looked for again in the configuration file when the file \
            had none for it (nodes.<id>.user, nodes.<id>.password_file) — and a node whose state \
            becomes removed loses its pool.
            """)

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await reportingErrors {
            let configuration = try await options.load()
            let logger = makeLogger(configuration.logLevel, label: "shardbank.serve")
            let runtime = try await BankRuntime.start(configuration, logger: logger, faults: testHook(logger: logger))
            let resolver = InDoubtResolver(connections: runtime.connections, logger: logger)
            // Requests that need a down node fail at once; pool connection errors mark a node suspect.
            let health = NodeHealthMonitor(cache: runtime.cache)
            runtime.connections.watchHealth(refuse: { node in
                let h = health.health(of: node)
                guard h.state == .down else { return nil }
                return LedgerError(.nodeUnavailable, "node \(node) is down (\(h.reason ?? "no heartbeat")); what needs it fails until it is back, the rest of the bank goes on", node: node)
            }, connectionFailed: { health.connectionFailed($0) })
            let probe = EtcdProbe(etcd: runtime.etcd, key: runtime.store.keys.clusterInfo, logger: logger)
            // Moves asked of the admin routes, and any move whose runner died while its range cannot
            // be written, are run here; a job another process holds is left to it.
            var moverOptions = RangeMover.Options()
            moverOptions.claimWait = .zero
            let mover = RangeMover(connections: runtime.connections, store: runtime.store, options: moverOptions, logger: logger)
            var splitterOptions = RangeSplitter.Options()
            splitterOptions.claimWait = .zero
            let splitter = RangeSplitter(connections: runtime.connections, store: runtime.store, options: splitterOptions, logger: logger)
            let rebalancer = Rebalancer(mover: mover, splitter: splitter, logger: logger)
            let drainer = NodeDrainer(mover: mover, logger: logger)
            let supervisor = MoveSupervisor(mover: mover, splitter: splitter, rebalancer: rebalancer, drainer: drainer, logger: logger)
            let store = runtime.store
            // `ctl add-node`'s admission, for `POST /v1/cluster/nodes` (waits up to 15 s for the agent).
            let admit: @Sendable (NodeRequest) async throws -> NodeInfo = { request in
                do {
                    return try await NodeAdmission(id: request.id, host: request.host, port: request.port, database: request.database, tlsMode: request.tlsMode)
                        .run(configuration: configuration, store: store, logger: logger, progress: { logger.info("add-node: \($0)") })
                } catch let refusal as NodeAdmission.Refusal {
                    throw NodeRefused(registered: refusal.registered, message: refusal.description)
                }
            }
            let app = Application(
                router: BankRoutes.router(APIDependencies(bank: runtime.bank, cache: runtime.cache, health: health, etcd: probe,
                                                          mover: configuration.adminRoutes ? mover : nil,
                                                          splitter: configuration.adminRoutes ? splitter : nil,
                                                          rebalancer: configuration.adminRoutes ? rebalancer : nil,
                                                          drainer: configuration.adminRoutes ? drainer : nil,
                                                          addNode: configuration.adminRoutes ? admit : nil)),
                configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort), serverName: "shardbank"),
                services: runtime.services + [resolver, probe, supervisor],
                logger: logger)
            do {
                try await app.runService()
            } catch {
                await runtime.shutdown()
                throw error
            }
            await runtime.shutdown()
        }
    }
}

/// Fault drills only: `SHARDBANK_TEST_HOLD_AT=prepared|decided` makes every distributed
/// transaction pause 60 s at that step, so a test can `kill -9` the process there. Logged loudly.
func testHook(logger: Logger) -> (@Sendable (TwoPhaseStep) async throws -> Void)? {
    guard let step = ProcessInfo.processInfo.environment["SHARDBANK_TEST_HOLD_AT"], !step.isEmpty else { return nil }
    logger.critical("SHARDBANK_TEST_HOLD_AT is set: distributed transactions will pause — never use this in production", metadata: ["step": "\(step)"])
    return { reached in
        let name: String
        switch reached {
        case .prepared: name = "prepared"
        case .beforeDecision: name = "before-decision"
        case .decided: name = "decided"
        }
        if name == step {
            logger.critical("holding a distributed transaction for a fault drill", metadata: ["step": "\(step)"])
            try await Task.sleep(for: .seconds(60))
        }
    }
}
