import Admin
import BankSchema
import ClusterMetadata
import Etcd
import Foundation
import Ledger
import LocalCluster
import MariaDB
import Testing

/// Expects `body` to fail with a ledger error of `code`.
private func expectLedgerError<T>(_ code: LedgerError.Code, _ what: String, _ body: () async throws -> T) async {
    do {
        _ = try await body()
        Issue.record("\(what): succeeded, expected \(code)")
    } catch let error as LedgerError {
        #expect(error.code == code, "\(what): \(error)")
    } catch {
        Issue.record("\(what): \(error), expected \(code)")
    }
}

@Suite("The node registry followed by a running process", .serialized)
struct RegistryTests {
    @Test("""
        a bank runtime started with two registered nodes gains a pool for a third registered later and serves an \
        account on it; a spare registered without credentials is retried until they are added to the file, its \
        schema current before its pool appears; a removed node loses its pool (a connection in use finishes first)
        """)
    func nodesJoinAndLeave() async throws {
        try await withCluster(nodes: 3, spare: 1) { cluster in
            // The configuration names node1…node3 only: the spare's credentials are not in it yet.
            let configuration = try await configurationFor(cluster)
            let configFile = try #require(configuration.sourceFile)
            try await withEtcd(cluster) { etcd in
                try await Bootstrap(configuration: configuration).run(etcd: etcd, logger: testLogger, progress: { _ in })
                let keys = MetadataKeys()
                let store = MetadataStore(etcd: etcd, keys: keys)
                // node3 (its range a3 in the map, its schema and fence in place) is not registered when
                // the process starts: the process begins with two nodes.
                let node3 = try #require(try await store.nodes().first { $0.id == "node3" })
                _ = try await etcd.delete(.key(keys.nodeInfo("node3")))
                let runtime = try await BankRuntime.start(configuration, logger: testLogger)
                do {
                    try await runtime.run {
                        #expect(runtime.connections.nodes == ["node1", "node2"])
                        await expectLedgerError(.nodeUnavailable, "an account in node3's range before node3 is registered") {
                            try await runtime.bank.openAccount(customerName: "Early", balance: money("60000.00"), idempotencyKey: "early")
                        }

                        // node3 registered: the running process opens its pool, no restart.
                        try await store.register(node3)
                        try await eventually("node3 gets a pool") { runtime.connections.nodes.contains("node3") }
                        let rich = try await runtime.bank.openAccount(customerName: "Rich", balance: money("60000.00"), idempotencyKey: "rich")
                        #expect(rich.node == "node3")
                        #expect(try await runtime.bank.account(rich.id).balance == money("60000.00"))

                        // The spare node4, registered while the configuration has no credentials for it:
                        // its login fails and is retried; the process goes on serving.
                        let spare = try cluster.node("node4")
                        try await store.register(NodeInfo(id: "node4", host: spare.host, port: spare.port, database: spare.database))
                        try await Task.sleep(for: .seconds(2))
                        #expect(!runtime.connections.nodes.contains("node4"), "node4 has a pool without its credentials")
                        #expect(try await runtime.bank.account(rich.id).balance == money("60000.00"))
                        // The operator adds its credentials to the configuration's file: picked up, no restart.
                        let dir = URL(fileURLWithPath: configFile).deletingLastPathComponent().path
                        try spare.password.write(toFile: dir + "/node4-password", atomically: true, encoding: .utf8)
                        var json = try String(contentsOfFile: configFile, encoding: .utf8)
                        json = json.replacingOccurrences(of: #""nodes": {"#, with: #""nodes": {"node4": {"host": "\#(spare.host)", "port": \#(spare.port), "user": "\#(spare.user)", "password_file": "node4-password"},"#)
                        try json.write(toFile: configFile, atomically: true, encoding: .utf8)
                        try await eventually("node4 gets a pool once its credentials are in the file") { runtime.connections.nodes.contains("node4") }
                        // Its schema was brought up to date before the pool was published.
                        let version = try await runtime.connections.withConnection("node4") { c in
                            try await c.query("SELECT MAX(version) AS v FROM schema_migrations").rows.first?.int64("v")
                        }
                        #expect(version == Int64(BankSchema.latestVersion))

                        // node3 removed: its pool goes; a connection in use when it left finishes its work.
                        try await runtime.connections.withConnection("node3") { held in
                            var removed = node3
                            removed.state = .removed
                            try await store.register(removed)
                            try await eventually("node3's pool is gone") { !runtime.connections.nodes.contains("node3") }
                            let row = try await held.query("SELECT 1 AS one").rows.first?.int64("one")
                            #expect(row == 1, "the connection in use still answers after its node left")
                        }
                        #expect(runtime.connections.nodes == ["node1", "node2", "node4"])
                        // Known removed, so that the resolver rolls back a late branch naming it.
                        #expect(runtime.connections.isRemoved("node3") && !runtime.connections.isRemoved("node1"))
                        await expectLedgerError(.nodeUnavailable, "a connection to removed node3") {
                            try await runtime.connections.withConnection("node3") { c in try await c.query("SELECT 1") }
                        }
                        await expectLedgerError(.nodeUnavailable, "the account on removed node3") {
                            try await runtime.bank.account(rich.id)
                        }
                    }
                } catch {
                    await runtime.shutdown()
                    throw error
                }
                await runtime.shutdown()
            }
        }
    }
}
