import Admin
import Agent
import BankSchema
import ClusterMetadata
import Foundation
import Ledger
import LocalCluster
import Mover
import ServiceLifecycle
import ShardBankConfig
import Testing

@Suite("ctl add-node: a new node joins a running cluster, or is refused with the reason", .serialized)
struct NodeAdmissionTests {
    @Test("refused: a registered id, a registered node's address, a database that holds a bank, an unreachable address, a bad id; admitted: migrated, joining until its agent beats healthy, then active — and a range moves onto it")
    func addNode() async throws {
        try await withCluster(nodes: 3, spare: 1) { cluster in
            var configuration = try await configurationFor(cluster)
            let spare = try cluster.node("node4")
            configuration.mysql.credentials["node4"] = (spare.user, spare.password)
            try await withEtcd(cluster) { etcd in
                try await Bootstrap(configuration: configuration).run(etcd: etcd, logger: testLogger, progress: { _ in })
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys())
                func admit(_ id: String, host: String = spare.host, port: Int, wait: Duration = .seconds(2)) async throws -> NodeInfo {
                    try await NodeAdmission(id: id, host: host, port: port, database: spare.database, wait: wait)
                        .run(configuration: configuration, store: store, logger: testLogger, progress: { _ in })
                }
                let node1 = try cluster.node("node1")
                await #expect { _ = try await admit("node1", port: spare.port) } throws: { "\($0)".contains("registered already") }
                await #expect { _ = try await admit("node9", host: node1.host, port: node1.port) } throws: { "\($0)".contains("is node node1 already") }
                // The database of a removed (drained) node is not taken under a new id.
                try await store.register(NodeInfo(id: "node7", host: spare.host, port: 2, database: spare.database, state: .removed))
                await #expect { _ = try await admit("node8", port: 2) } throws: { "\($0)".contains("was node node7, which is removed") }
                _ = try await etcd.delete(.key(MetadataKeys().nodeInfo("node7")))
                // Another bank's database (here: node4's, given a range by hand) is never mixed in.
                let other = try await connect(cluster, "node4")
                _ = try await BankSchema.migrate(other, logger: testLogger)
                try await other.query("INSERT INTO range_ownership (map_name, range_id, lower_bound, epoch, state) VALUES ('accounts', 'x1', 0, 1, 'active')")
                await #expect { _ = try await admit("node4", port: spare.port) } throws: { "\($0)".contains("holds 1 ranges") && "\($0)".contains("belongs to a bank already") }
                try await other.query("DELETE FROM range_ownership")
                await other.close()
                await #expect { _ = try await admit("node9", port: 1) } throws: { "\($0)".contains("cannot connect to node9") }
                await #expect { _ = try await admit("no|de", port: spare.port) } throws: { "\($0)".contains("letters, digits") }
                #expect(try await store.nodes().map(\.id).sorted() == ["node1", "node2", "node3"], "a refusal registered something")

                // No agent yet: registered joining, migrated, and the operator told what to start.
                await #expect { _ = try await admit("node4", port: spare.port) } throws: { "\($0)".contains("shardbank agent --node node4") }
                #expect(try await store.nodes().first { $0.id == "node4" }?.state == .joining)
                var database = try cluster.bankConfiguration("node4")
                database.connectTimeout = 1
                let agent = NodeAgent(options: .init(node: "node4", interval: .milliseconds(250), ttl: 2, failuresBeforeRevoke: 2, version: "test"),
                                      etcd: etcd, keys: MetadataKeys(), database: database, logger: testLogger)
                let group = ServiceGroup(configuration: .init(services: [agent], logger: testLogger))
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    let node = try await admit("node4", port: spare.port, wait: .seconds(15))
                    #expect(node.state == .active)
                    #expect(try await store.nodes().first { $0.id == "node4" }?.state == .active)
                    // A range moves onto it.
                    let connections = NodeConnections(logger: testLogger)
                    for n in ["node1", "node2", "node3", "node4"] { await connections.register(node: n, configuration: try cluster.bankConfiguration(n)) }
                    var options = RangeMover.Options()
                    options.decisionGrace = .milliseconds(200)
                    let mover = RangeMover(connections: connections, store: store, options: options, logger: testLogger)
                    let record = try await mover.run(try await mover.create(map: .accounts, range: "a2", to: "node4").record.id)
                    #expect(record.phase == "done")
                    #expect(try await store.loadMap(.accounts)?.map.range(id: "a2")?.node == "node4")
                    await connections.shutdown()
                    await group.triggerGracefulShutdown()
                    try await tasks.next()
                }
            }
        }
    }
}
