import Admin
import Agent
import ClusterMetadata
import Etcd
import Foundation
import Glibc
import Health
import Ledger
import LocalCluster
import MariaDB
import ServiceLifecycle
import Synchronization
import Testing

/// Polls the node's heartbeat key until `condition` holds; returns the value then (nil: no key).
private func waitForBeat(_ etcd: EtcdClient, node: String, timeout: Duration,
                         _ condition: (Heartbeat?) -> Bool) async throws -> Heartbeat? {
    let deadline = ContinuousClock.now + timeout
    while true {
        let beat = try await etcd.get(MetadataKeys().nodeHeartbeat(node)).flatMap { Heartbeat.decode($0.value) }
        if condition(beat) { return beat }
        guard ContinuousClock.now < deadline else {
            Issue.record("the heartbeat of \(node) did not reach the expected state within \(timeout); last: \(String(describing: beat))")
            return beat
        }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// The `shardbank` executable built next to the test bundle.
private func shardbankExecutable() throws -> String {
    let path = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("shardbank").path
    try #require(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing: build the executable first (swift build --build-tests builds it)")
    return path
}

@Suite("Node agent against real mariadbd and etcd", .serialized)
struct AgentTests {
    @Test("leased heartbeat; a killed mariadbd is reported by the next beat, the lease revoked after two failed checks; back after restart; revoked at shutdown")
    func heartbeatLifecycle() async throws {
        try await withInitialisedCluster { cluster, etcd in
            var database = try cluster.bankConfiguration("node1")
            database.connectTimeout = 1
            database.readTimeout = 1
            database.writeTimeout = 1
            let agent = NodeAgent(options: .init(node: "node1", interval: .milliseconds(250), ttl: 2, failuresBeforeRevoke: 2, version: "test"),
                                  etcd: etcd, keys: MetadataKeys(), database: database, logger: testLogger)
            let group = ServiceGroup(configuration: .init(services: [agent], logger: testLogger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                let first = try await waitForBeat(etcd, node: "node1", timeout: .seconds(5)) { $0?.database.ok == true }
                #expect(first?.node == "node1" && first?.version == "test" && first?.intervalMillis == 250)
                #expect(Set(first?.ranges.map { "\($0.map)/\($0.range)" } ?? []) == ["accounts/a1", "directory/d1"])
                let later = try await waitForBeat(etcd, node: "node1", timeout: .seconds(2)) { ($0?.sequence ?? 0) > (first?.sequence ?? 0) }
                #expect(later?.database.ok == true)

                try cluster.kill("node1")
                let killed = ContinuousClock.now
                let failing = try await waitForBeat(etcd, node: "node1", timeout: .seconds(4)) { $0?.database.ok == false }
                #expect(failing?.database.error?.contains("node1") == true)
                _ = try await waitForBeat(etcd, node: "node1", timeout: .seconds(4)) { $0 == nil }
                // Two failed checks at 250 ms, then the revoke: inside TTL (2 s) + 2 s on a loaded machine.
                #expect(ContinuousClock.now - killed < .seconds(4))

                try await cluster.restart("node1")
                let back = try await waitForBeat(etcd, node: "node1", timeout: .seconds(10)) { $0?.database.ok == true }
                #expect(back != nil)

                await group.triggerGracefulShutdown()
                try await tasks.next()
                #expect(try await etcd.get(MetadataKeys().nodeHeartbeat("node1")) == nil, "a graceful stop revokes the lease")
            }
        }
    }

    @Test("a router's view: pool connection errors make a node suspect at once and drop its idle connections; a down node is refused without a connection attempt")
    func routerView() async throws {
        try await withInitialisedCluster { cluster, etcd in
            // A slow agent (5 s beats): its last word stays "ok" for a while after the kill, so
            // what the router sees first is the pool's own errors.
            let agent = NodeAgent(options: .init(node: "node1", interval: .seconds(5), ttl: 12, failuresBeforeRevoke: 2, version: "test"),
                                  etcd: etcd, keys: MetadataKeys(), database: try cluster.bankConfiguration("node1"), logger: testLogger)
            let cache = MetadataCache(store: MetadataStore(etcd: etcd, keys: MetadataKeys()), logger: testLogger)
            let monitor = NodeHealthMonitor(cache: cache)
            let connections = NodeConnections(logger: testLogger)
            await connections.register(node: "node1", configuration: try cluster.bankConfiguration("node1"))
            connections.watchHealth(refuse: { node in
                monitor.health(of: node).state == .down ? LedgerError(.nodeUnavailable, "node \(node) is down", node: node) : nil
            }, connectionFailed: { monitor.connectionFailed($0) })
            let group = ServiceGroup(configuration: .init(services: [agent, cache], logger: testLogger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                _ = try await cache.waitUntil(timeout: .seconds(5)) { $0.heartbeats["node1"] != nil }
                #expect(monitor.health(of: "node1").state == .healthy)
                // Two idle connections in the pool.
                async let a: Void = connections.withConnection("node1") { c in _ = try await c.query("SELECT SLEEP(0.2)") }
                async let b: Void = connections.withConnection("node1") { c in _ = try await c.query("SELECT SLEEP(0.2)") }
                _ = try await (a, b)
                #expect(try connections.pool("node1").statistics.idle == 2)

                try cluster.kill("node1")
                await #expect(throws: MariaDBError.self) { try await connections.withConnection("node1") { c in _ = try await c.query("SELECT 1") } }
                let seen = monitor.health(of: "node1")
                #expect(seen.state == .suspect, "\(seen)")
                #expect(try connections.pool("node1").statistics.idle == 0, "the other idle connection was dropped too")

                // The agent's next beat reports the database down: refused at once from then on.
                let deadline = ContinuousClock.now + .seconds(8)
                while monitor.health(of: "node1").state != .down, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
                #expect(monitor.health(of: "node1").state == .down)
                // Refused by the health view, without a connection attempt: the body never runs, and the
                // error is the router's (an attempt on the dead server would fail with a MariaDBError).
                let ran = Mutex(false)
                do {
                    try await connections.withConnection("node1") { c in
                        ran.withLock { $0 = true }
                        _ = try await c.query("SELECT 1")
                    }
                    Issue.record("a down node's connection was handed out")
                } catch let error as LedgerError {
                    #expect(error.code == .nodeUnavailable && error.description.contains("node1 is down"), "\(error)")
                }
                #expect(!ran.withLock { $0 })

                await group.triggerGracefulShutdown()
                try await tasks.next()
            }
            await connections.shutdown()
        }
    }

    @Test("with no serve running, the agent finishes an in-doubt branch on its node (no decision → rolled back)")
    func agentResolves() async throws {
        let executable = try shardbankExecutable()
        try await withInitialisedCluster { cluster, etcd in
            // A coordinator that died after preparing on node1, its commit point node2 never decided.
            let xid = BranchName.xid(transferID: "orphan-1", attempt: .random(), participant: "node1", commitPoint: "node2")
            let c = try await connect(cluster, "node1")
            try await c.xaStart(xid)
            try await c.execute("INSERT INTO journal (account_id, transfer_id, amount, balance_after) VALUES (1, 'orphan-1', 1.00, 1.00)")
            try await c.xaEnd(xid)
            try await c.xaPrepare(xid)
            await c.close()
            let probe = try await connect(cluster, "node1")
            #expect(try await probe.xaRecover().contains(xid))

            let file = try cluster.writeConfiguration(apiPort: try Processes.freePort())
            let pid = try Processes.spawn(executable, ["agent", "--node", "node1", "--config", file], logFile: cluster.dir + "/agent-node1.log")
            stopAtExit(pid, dir: cluster.dir)
            defer { Processes.terminate(pid, signal: SIGKILL) }
            let deadline = ContinuousClock.now + .seconds(10)
            while try await probe.xaRecover().contains(xid), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await !probe.xaRecover().contains(xid), "the agent resolves its node's in-doubt branches within 10 s")
            let decision = try await connect(cluster, "node2")
            #expect(try await decision.execute("SELECT state FROM transfers WHERE transfer_id = 'orphan-1'").rows.first?.string("state") == "aborted")
            #expect(try await probe.execute("SELECT COUNT(*) AS n FROM journal WHERE transfer_id = 'orphan-1'").rows.first?.int64("n") == 0)
            await probe.close()
            await decision.close()
        }
    }

    @Test("the agent process: SIGSTOP lets the lease lapse, SIGCONT registers again, SIGTERM removes the heartbeat at once")
    func agentProcess() async throws {
        let executable = try shardbankExecutable()
        try await withInitialisedCluster { cluster, etcd in
            let file = try cluster.writeConfiguration(apiPort: try Processes.freePort())
            let pid = try Processes.spawn(executable, ["agent", "--node", "node2", "--config", file, "--ttl", "2"], logFile: cluster.dir + "/agent-node2.log")
            stopAtExit(pid, dir: cluster.dir)
            defer { Processes.terminate(pid, signal: SIGKILL) }
            _ = try await waitForBeat(etcd, node: "node2", timeout: .seconds(15)) { $0?.database.ok == true }

            Processes.signal(pid, SIGSTOP)
            let stopped = ContinuousClock.now
            _ = try await waitForBeat(etcd, node: "node2", timeout: .seconds(6)) { $0 == nil }
            #expect(ContinuousClock.now - stopped < .seconds(4), "the lease (TTL 2 s) lapses within TTL + 2 s")

            Processes.signal(pid, SIGCONT)
            let again = try await waitForBeat(etcd, node: "node2", timeout: .seconds(5)) { $0?.database.ok == true }
            #expect(again != nil)

            // SIGTERM revokes the lease on the way out: the heartbeat is gone by the time the process
            // is (a lease left to lapse would outlive it by up to the TTL).
            Processes.signal(pid, SIGTERM)
            Processes.waitGone(pid, timeout: .seconds(10))
            #expect(!Processes.isAlive(pid), "the agent exits after SIGTERM")
            #expect(try await etcd.get(MetadataKeys().nodeHeartbeat("node2")) == nil, "the heartbeat outlived the agent: its lease was not revoked")
        }
    }
}
