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

/// The exit status of a child process once it has exited (128 + the signal when a signal ended it),
/// or nil when it is still running after `limit`. Reaps the child: ask nothing else about it after.
private func exitStatus(_ pid: Int32, within limit: Duration) -> Int32? {
    let deadline = ContinuousClock.now + limit
    var status: Int32 = 0
    while ContinuousClock.now < deadline {
        let reaped = waitpid(pid, &status, WNOHANG)
        if reaped == pid { return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
        if reaped == -1 { return nil }
        usleep(10_000)
    }
    return nil
}

/// Whether a child process is still running, without reaping it.
private func running(_ pid: Int32) -> Bool {
    var info = siginfo_t()
    return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == 0
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

    @Test("""
        agent --wait-registered: a spare's agent waits (running, no heartbeat, a log line) until its node is \
        registered, then beats with its database ok; SIGTERM while waiting exits 0; a running agent opens a pool \
        for the node registered later
        """)
    func waitRegistered() async throws {
        let executable = try shardbankExecutable()
        try await withCluster(nodes: 3, spare: 1) { cluster in
            let configuration = try await configurationFor(cluster)
            try await withEtcd(cluster) { etcd in
                try await Bootstrap(configuration: configuration).run(etcd: etcd, logger: testLogger, progress: { _ in })
                let file = try cluster.writeConfiguration(apiPort: try Processes.freePort()) // the spare's credentials included
                func agent(_ node: String, _ name: String, _ extra: [String] = []) throws -> (pid: Int32, log: String) {
                    let log = cluster.dir + "/agent-\(name).log"
                    let pid = try Processes.spawn(executable, ["agent", "--node", node, "--config", file, "--ttl", "2", "--interval-ms", "250"] + extra,
                                                  logFile: log)
                    stopAtExit(pid, dir: cluster.dir)
                    return (pid, log)
                }
                func text(_ log: String) -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

                // Without the flag an unregistered node is still an error, which names the flag.
                let refused = try agent("node4", "refused")
                #expect(exitStatus(refused.pid, within: .seconds(20)) == 1)
                #expect(text(refused.log).contains("--wait-registered"), "\(text(refused.log))")

                // With it the agent waits, says so, beats nothing, and stops cleanly on SIGTERM.
                let early = try agent("node4", "early", ["--wait-registered"])
                try await eventually("the waiting agent says what it waits for") { text(early.log).contains("node4 is not registered yet; waiting") }
                try await Task.sleep(for: .seconds(1))
                #expect(running(early.pid), "the waiting agent exited: \(text(early.log))")
                #expect(try await etcd.get(MetadataKeys().nodeHeartbeat("node4")) == nil)
                Processes.signal(early.pid, SIGTERM)
                #expect(exitStatus(early.pid, within: .seconds(10)) == 0, "\(text(early.log))")

                // node1's agent runs; node4's waits; node4 is registered.
                let first = try agent("node1", "node1")
                let spare = try agent("node4", "node4", ["--wait-registered"])
                _ = try await waitForBeat(etcd, node: "node1", timeout: .seconds(15)) { $0?.database.ok == true }
                try await eventually("node4's agent waits") { text(spare.log).contains("node4 is not registered yet; waiting") }
                let node = try cluster.node("node4")
                try await MetadataStore(etcd: etcd, keys: MetadataKeys()).register(NodeInfo(id: "node4", host: node.host, port: node.port, database: node.database))
                let beat = try await waitForBeat(etcd, node: "node4", timeout: .seconds(15)) { $0?.database.ok == true }
                #expect(beat?.ranges.isEmpty == true, "a spare holds no range")
                #expect(text(spare.log).contains("node4 is registered; starting heartbeats"))
                // node1's agent follows the registry: a pool for node4 (its resolver may need it).
                try await eventually("node1's agent opens a pool for node4") {
                    text(first.log).split(separator: "\n").contains { $0.contains("node joined the registry") && $0.contains("node4") }
                }
                for p in [first.pid, spare.pid] { Processes.signal(p, SIGTERM) }
                #expect(exitStatus(spare.pid, within: .seconds(10)) == 0, "\(text(spare.log))")
                #expect(exitStatus(first.pid, within: .seconds(10)) == 0, "\(text(first.log))")
                #expect(try await etcd.get(MetadataKeys().nodeHeartbeat("node4")) == nil, "SIGTERM revokes the spare's lease too")
            }
        }
    }
}
