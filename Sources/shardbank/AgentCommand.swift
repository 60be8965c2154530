import Admin
import Agent
import ArgumentParser
import ClusterMetadata
import Health
import Ledger
import Logging
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
            lease, so the node shows as down at once rather than after the TTL.
            """)

    @OptionGroup var options: ConfigOptions
    @Option(help: "The node this agent watches, as registered in etcd (e.g. node1).") var node: String
    @Option(help: "Milliseconds between beats.") var intervalMs = 1000
    @Option(help: "Heartbeat lease TTL in seconds (at least 2: etcd 3.4's minimum).") var ttl = 3
    @Option(help: "Failed checks in a row before the lease is revoked.") var failures = 2

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
                let nodes = try await store.nodes()
                guard let info = nodes.first(where: { $0.id == node }) else {
                    throw CLIError("node \(node) is not registered under \(configuration.etcdPrefix) (registered: \(nodes.map(\.id).sorted().joined(separator: ", "))); run `shardbank ctl init` or check --node")
                }
                // Short timeouts: they bound one check, and a check must finish within a beat or two.
                var database = configuration.mariaDB(node: info.id, host: info.host, port: info.port, database: info.database, tlsMode: info.tlsMode)
                database.connectTimeout = 1
                database.readTimeout = 1
                database.writeTimeout = 1
                let agent = NodeAgent(options: .init(node: node, interval: .milliseconds(intervalMs), ttl: Int64(ttl), failuresBeforeRevoke: failures,
                                                     version: shardBankVersion),
                                      etcd: etcd, keys: store.keys, database: database, logger: logger)
                let connections = await nodeConnections(configuration, nodes: nodes, logger: logger)
                let resolver = InDoubtResolver(connections: connections, nodes: [node], logger: logger)
                let group = ServiceGroup(configuration: .init(services: [.init(service: agent), .init(service: resolver)],
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
