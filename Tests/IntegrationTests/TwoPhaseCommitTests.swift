import BankSchema
import Foundation
import LocalCluster
@_spi(FaultInjection) import Ledger
import MariaDB
import Synchronization
import Testing

/// Two storage nodes with the bank schema and a scratch table `t2pc` on each.
private func withTwoNodes(_ body: (inout LocalCluster, NodeConnections) async throws -> Void) async throws {
    try await withCluster(nodes: 2, etcd: 1) { cluster in
        let connections = NodeConnections(logger: testLogger)
        for node in ["node1", "node2"] {
            let c = try await connect(cluster, node)
            try await BankSchema.migrate(c, logger: testLogger)
            try await c.query("CREATE TABLE t2pc (id BIGINT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB")
            await c.close()
            await connections.register(node: node, configuration: try cluster.bankConfiguration(node),
                                       options: .init(maxConnections: 4, acquireTimeout: .seconds(2), validateAfter: .milliseconds(100)))
        }
        do {
            try await body(&cluster, connections)
        } catch {
            await connections.shutdown()
            throw error
        }
        await connections.shutdown()
    }
}

private func rows(_ connections: NodeConnections, _ node: String) async throws -> [Int64] {
    try await connections.withConnection(node) { c in try await c.query("SELECT id FROM t2pc ORDER BY id").rows.map { try $0.int64("id") } }
}

private func prepared(_ connections: NodeConnections, _ node: String) async throws -> [XID] {
    try await connections.withConnection(node) { try await $0.xaRecover() }
}

private func decision(_ connections: NodeConnections, _ id: String) async throws -> String? {
    try await connections.withConnection("node1") { c in
        try await c.execute("SELECT state FROM transfers WHERE transfer_id = ?", [.string(id)]).rows.first?.string("state")
    }
}

private func record(_ id: String) -> DecisionRecord {
    DecisionRecord(transferID: id, kind: "test", amountMinorUnits: 100, requestHash: String(repeating: "0", count: 64), participants: ["node1", "node2"])
}

private func insert(_ id: Int64) -> TwoPhaseCommit.Work {
    { c in try await c.execute("INSERT INTO t2pc VALUES (?, 1)", [.int(id)]) }
}

private func committed(_ outcome: TwoPhaseCommit.Outcome) -> Bool {
    if case .committed = outcome { return true }
    return false
}

private func rolledBackBy<E: Error>(_ type: E.Type, _ outcome: TwoPhaseCommit.Outcome) -> Bool {
    if case .rolledBack(let cause) = outcome { return cause is E }
    return false
}

/// Runs the resolver until `condition` holds (failing the test after 15 s); returns the time it took.
private func resolve(_ resolver: InDoubtResolver, until condition: () async throws -> Bool) async throws -> Duration {
    let start = ContinuousClock.now
    while try await !condition() {
        guard ContinuousClock.now - start < .seconds(15) else { Issue.record("not resolved within 15 s"); break }
        await resolver.resolveOnce()
        try await Task.sleep(for: .milliseconds(200))
    }
    return ContinuousClock.now - start
}

@Suite("Two-phase commit across real MariaDB nodes", .serialized)
struct TwoPhaseCommitTests {
    @Test("commit: both nodes change, the decision row says committed, nothing stays prepared")
    func commit() async throws {
        try await withTwoNodes { _, connections in
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger)
            let outcome = try await tpc.run(decision: record("t-ok"), commitPoint: .init(node: "node1", work: insert(1)), participants: [.init(node: "node2", work: insert(2))])
            #expect(committed(outcome))
            #expect(try await rows(connections, "node1") == [1])
            #expect(try await rows(connections, "node2") == [2])
            #expect(try await decision(connections, "t-ok") == "committed")
            #expect(try await prepared(connections, "node2").isEmpty)
        }
    }

    @Test("a failing participant or commit point rolls back everywhere and records no commit")
    func abort() async throws {
        try await withTwoNodes { _, connections in
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger)
            struct Refused: Error {}
            // The work's own error comes back as the cause, as it threw it.
            let p = try await tpc.run(decision: record("t-p"), commitPoint: .init(node: "node1", work: insert(1)),
                                      participants: [.init(node: "node2", work: { c in try await insert(2)(c); throw Refused() })])
            #expect(rolledBackBy(Refused.self, p))
            let c = try await tpc.run(decision: record("t-c"), commitPoint: .init(node: "node1", work: { _ in throw Refused() }),
                                      participants: [.init(node: "node2", work: insert(3))])
            #expect(rolledBackBy(Refused.self, c))
            #expect(try await rows(connections, "node1").isEmpty)
            #expect(try await rows(connections, "node2").isEmpty)
            #expect(try await prepared(connections, "node2").isEmpty)
            #expect(try await decision(connections, "t-p") == nil)
            #expect(try await decision(connections, "t-c") == nil)
        }
    }

    @Test("coordinator dies after the prepare: the resolver rolls the branch back within 10 s", arguments: ["prepared", "beforeDecision"])
    func crashBeforeDecision(step: String) async throws {
        try await withTwoNodes { _, connections in
            let target: TwoPhaseStep = step == "prepared" ? .prepared(node: "node2") : .beforeDecision
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger, faults: { s in if s == target { throw CoordinatorCrash() } })
            await #expect(throws: CoordinatorCrash.self) {
                _ = try await tpc.run(decision: record("t-crash"), commitPoint: .init(node: "node1", work: insert(1)), participants: [.init(node: "node2", work: insert(2))])
            }
            #expect(try await prepared(connections, "node2").count == 1) // in doubt, holding its locks
            let resolver = InDoubtResolver(connections: connections, minimumAge: .seconds(1), logger: testLogger)
            _ = try await resolve(resolver) { try await prepared(connections, "node2").isEmpty }
            #expect(try await decision(connections, "t-crash") == "aborted")
            #expect(try await rows(connections, "node1").isEmpty)
            #expect(try await rows(connections, "node2").isEmpty)
        }
    }

    @Test("coordinator dies after the decision: the resolver commits the branch within 10 s")
    func crashAfterDecision() async throws {
        try await withTwoNodes { _, connections in
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger, faults: { s in if s == .decided { throw CoordinatorCrash() } })
            await #expect(throws: CoordinatorCrash.self) {
                _ = try await tpc.run(decision: record("t-decided"), commitPoint: .init(node: "node1", work: insert(1)), participants: [.init(node: "node2", work: insert(2))])
            }
            let resolver = InDoubtResolver(connections: connections, minimumAge: .seconds(1), logger: testLogger)
            _ = try await resolve(resolver) { try await prepared(connections, "node2").isEmpty }
            #expect(try await decision(connections, "t-decided") == "committed")
            #expect(try await rows(connections, "node1") == [1])
            #expect(try await rows(connections, "node2") == [2])
        }
    }

    @Test("a slow coordinator racing the resolver: the primary key arbitrates, the outcome is all or nothing")
    func lateCoordinator() async throws {
        try await withTwoNodes { _, connections in
            let resolver = InDoubtResolver(connections: connections, minimumAge: .zero, logger: testLogger)
            let resolutions = Mutex<[InDoubtResolver.Resolution]>([])
            // The coordinator is slow in the commit point's work, after node2 is prepared and before
            // it writes its decision row: meanwhile the resolver decides "abort".
            let slowCommitPoint: TwoPhaseCommit.Work = { c in
                try await insert(1)(c)
                let start = ContinuousClock.now
                while try await prepared(connections, "node2").isEmpty, ContinuousClock.now - start < .seconds(10) {
                    try await Task.sleep(for: .milliseconds(20))
                }
                let r = await resolver.resolveOnce()
                resolutions.withLock { $0 += r }
            }
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger)
            let outcome = try await tpc.run(decision: record("t-race"), commitPoint: .init(node: "node1", work: slowCommitPoint), participants: [.init(node: "node2", work: insert(2))])
            let state = try await decision(connections, "t-race")
            let n1 = try await rows(connections, "node1")
            let n2 = try await rows(connections, "node2")
            // The resolver recorded "aborted" first, so the coordinator's decision row collides and it aborts.
            #expect(resolutions.withLock { $0.isEmpty } || resolutions.withLock { $0.allSatisfy { $0.decision == .aborted } })
            #expect(!committed(outcome))
            #expect(state == "aborted")
            #expect(n1.isEmpty && n2.isEmpty)
            #expect(try await prepared(connections, "node2").isEmpty)
        }
    }

    @Test("a participant killed -9 after the decision is committed by the resolver once it is back")
    func participantKilled() async throws {
        try await withTwoNodes { cluster, connections in
            let box = Mutex<LocalCluster?>(cluster)
            let tpc = TwoPhaseCommit(connections: connections, logger: testLogger, faults: { s in
                if s == .decided { try box.withLock { try $0?.kill("node2") } }
            })
            // The decision is made before node2 dies: the transfer has happened.
            #expect(committed(try await tpc.run(decision: record("t-kill"), commitPoint: .init(node: "node1", work: insert(1)), participants: [.init(node: "node2", work: insert(2))])))
            try await cluster.restart("node2")
            let resolver = InDoubtResolver(connections: connections, minimumAge: .zero, logger: testLogger)
            _ = try await resolve(resolver) { (try? await prepared(connections, "node2").isEmpty) ?? false }
            #expect(try await rows(connections, "node2") == [2])
            #expect(try await decision(connections, "t-kill") == "committed")
        }
    }
}
