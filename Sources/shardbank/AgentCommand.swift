import Admin
import Agent
import ArgumentParser
import BankSchema
import ClusterMetadata
import Etcd
import Health
import Ledger
import Logging
import MariaDB
import ServiceLifecycle
import ShardBankConfig

/// The agent's version, written into every heartbeat.
let shardBankVersion = "0.5.0"

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the sidecar beside one storage node: leased heartbeats in etcd, database checks, in-doubt resolution.",
        discussion: """
            Every interval it runs SELECT 1 on the node and writes node/{id}/heartbeat under an etcd lease \
            of --ttl seconds: the time, a sequence number, whether the database answered and how fast, the \
            ranges the node holds with their rows, the agent version. A failed check is reported at once \
            (routers treat the node as down); after --failures failed checks in a row the lease is revoked. \
            It registers again when the database answers, or when etcd is back after an outage. It also \
            finishes in-doubt distributed transactions prepared on its node. SIGTERM or SIGINT revokes the \
            lease, so the node shows as down at once rather than after the TTL. \
            It keeps a pool to every registered node for that resolution and follows the registry: \
            nodes registered later get one, removed nodes lose theirs. With --wait-registered, a node \
            not registered yet is waited for instead of being an error (a spare node's agent).
            """)

    @OptionGroup var options: ConfigOptions
    @Option(help: "The node this agent watches, as registered in etcd (e.g. node1).") var node: String
    @Option(help: "Milliseconds between beats.") var intervalMs = 1000
    @Option(help: "Heartbeat lease TTL in seconds (at least 2: etcd 3.4's minimum).") var ttl = 3
    @Option(help: "Failed checks in a row before the lease is revoked.") var failures = 2
    @Flag(help: ArgumentHelp("Wait until the node is registered in etcd (node/{id}/info) before heart-beating, instead of failing.",
                             discussion: "For a spare node started before it is added: the agent logs that it waits, runs until SIGTERM or SIGINT (exit 0) and, once the node is registered, brings its schema up to date and starts beating."))
    var waitRegistered = false

    func validate() throws {
        guard ttl >= 2 else { throw ValidationError("--ttl \(ttl) is too short: etcd 3.4 grants leases of at least 2 seconds (its election timeout is 1 s)") }
        guard (100...60_000).contains(intervalMs) else { throw ValidationError("--interval-ms must be between 100 and 60000") }
        guard ttl * 1000 > intervalMs else { throw ValidationError("--ttl (\(ttl) s) must be longer than --interval-ms (\(intervalMs) ms), or the lease lapses between beats") }
        guard failures >= 1 else { throw ValidationError("--failures must be at least 1") }
    }

    func run() async throws {
        try await reportingErrors {
            let configuration = try await options.load()
            var logger = makeLogger(configuration.logLevel, label: "shardbank.agent")
            logger[metadataKey: "node"] = "\(node)"
            try await withEtcd(configuration, logger: logger) { etcd in
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
                let cache = MetadataCache(store: store, logger: logger)
                try await cache.reload()
                let registered = cache.snapshot.nodes
                guard registered[node] != nil || waitRegistered else {
                    throw CLIError("node \(node) is not registered under \(configuration.etcdPrefix) (registered: \(registered.keys.sorted().joined(separator: ", "))); run `shardbank ctl init`, check --node, or pass --wait-registered to wait for it")
                }
                // Pools to every node (the resolver reads decisions on other nodes), following the
                // registry as it changes; the bank's processes bring schemas up to date, not this one.
                let connections = await nodeConnections(configuration, nodes: Array(registered.values), logger: logger)
                let registry = NodeRegistryFollower(cache: cache, connections: connections, configuration: configuration,
                                                    initial: Array(registered.values), options: .init(migrate: false), logger: logger)
                let resolver = InDoubtResolver(connections: connections, nodes: [node], logger: logger)
                let beats = HeartbeatWhenRegistered(
                    options: .init(node: node, interval: .milliseconds(intervalMs), ttl: Int64(ttl), failuresBeforeRevoke: failures, version: shardBankVersion),
                    cache: cache, configuration: configuration, etcd: etcd, logger: logger)
                let group = ServiceGroup(configuration: .init(services: [.init(service: cache), .init(service: registry), .init(service: resolver),
                                                                         .init(service: beats, successTerminationBehavior: .gracefullyShutdownGroup)],
                                                              gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
                logger.info("agent started", metadata: ["interval_ms": "\(intervalMs)", "ttl": "\(ttl)", "failures": "\(failures)"])
                do {
                    try await group.run()
                } catch {
                    await connections.shutdown()
                    throw error
                }
                await connections.shutdown()
            }
        }
    }
}

/// The heartbeats of one node (``NodeAgent``), started once the node is registered: at once when it
/// already is; otherwise (`--wait-registered`) after waiting for its record in the watch-fed cache,
/// with the node's schema brought up to date first (a spare has none yet, and the beat's row counts
/// read its tables).
private struct HeartbeatWhenRegistered: Service {
    let options: NodeAgent.Options
    let cache: MetadataCache
    let configuration: ShardBankConfiguration
    let etcd: EtcdClient
    let logger: Logger

    func run() async throws {
        let node = options.node
        let cache = self.cache
        var waited = false
        if cache.snapshot.nodes[node] == nil {
            waited = true
            logger.notice("node \(node) is not registered yet; waiting for \(cache.store.keys.nodeInfo(node)) before heart-beating (--wait-registered)")
        }
        // Graceful shutdown while waiting ends the wait: nothing was started, nothing to stop.
        let found: NodeInfo? = await cancelWhenGracefulShutdown {
            try? await cache.waitUntil { $0.nodes[node] != nil }.nodes[node]
        }
        guard let info = found else { return }
        // Short timeouts: they bound one check, and a check must finish within a beat or two.
        var database = await configuration.mariaDB(for: info, logger: logger)
        if waited {
            logger.notice("node \(node) is registered; starting heartbeats", metadata: ["address": "\(info.host):\(info.port)"])
            do {
                let c = try await MariaDBConnection.connect(configuration: database)
                do { _ = try await BankSchema.migrate(c, logger: logger) } catch {
                    await c.close()
                    throw error
                }
                await c.close()
            } catch {
                // The beats report the database as it is; `serve` migrates the node too when it joins.
                logger.warning("cannot bring the joining node's schema up to date; heart-beating anyway", metadata: ["error": "\(error)"])
            }
        }
        database.connectTimeout = 1
        database.readTimeout = 1
        database.writeTimeout = 1
        let agent = NodeAgent(options: options, etcd: etcd, keys: cache.store.keys, database: database, logger: logger)
        // A drained node is marked removed: its agent has nothing left to watch, and exits (the
        // service ends, and the group with it).
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await agent.run() }
            group.addTask {
                _ = try await cache.waitUntil { $0.nodes[node]?.state == .removed }
                logger.notice("node \(node) is removed (drained): the agent exits")
            }
            try await group.next()
            group.cancelAll()
        }
    }
}
