import Admin
import Ledger
import MariaDB
import Sharding
import Testing

@Suite("A COMMIT whose answer is lost, on a real node behind a proxy that loses it", .serialized)
struct LostCommitTests {
    @Test("an applied COMMIT whose answer is lost is reported done; a COMMIT that never arrived rolls its attempt back and a new attempt commits once",
          arguments: [false, true])
    func lostCommit(acrossNodes: Bool) async throws {
        try await withProxiedNode1 { proxy, bank, connections in
            func balances(_ ids: Int64...) async throws -> [Money] {
                var result: [Money] = []
                for id in ids { result.append(try await bank.account(id).balance) }
                return result
            }
            let a = try await bank.openAccount(customerName: "A", balance: money("5000.00"), idempotencyKey: "open-a")
            let b = try await bank.openAccount(customerName: "B", balance: money(acrossNodes ? "20000.00" : "3000.00"), idempotencyKey: "open-b")
            #expect(a.node == "node1" && b.node == (acrossNodes ? "node2" : "node1"))
            let creditedBefore = b.balance

            // The server applies the COMMIT, the client never hears: the node is asked, and the
            // transfer is reported done — not failed.
            proxy.arm(.dropCommitAnswer)
            let done = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: "answer-lost")
            #expect(proxy.fired == 1, "the proxy saw no COMMIT to lose")
            #expect(!done.replayed)
            let afterFirst = try await balances(a.id, b.id)
            #expect(afterFirst == [money("4999.00"), Money(minorUnits: creditedBefore.minorUnits + 100)])
            let replay = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: "answer-lost")
            #expect(replay.replayed)
            #expect(try await balances(a.id, b.id) == afterFirst)

            // The COMMIT never reaches the server: that attempt rolls back, the node records it
            // aborted, and — its key not spent — the ledger tries again with a new attempt, which
            // commits: money moves once, and the client hears of it once.
            proxy.arm(.dropCommit)
            let second = try await bank.transfer(from: a.id, to: b.id, amount: money("2.00"), idempotencyKey: "commit-lost")
            #expect(proxy.fired == 2, "the proxy saw no COMMIT to drop")
            #expect(!second.replayed)
            let afterSecond = [money("4997.00"), Money(minorUnits: afterFirst[1].minorUnits + 200)]
            #expect(try await balances(a.id, b.id) == afterSecond)
            let states = try await connections.withConnection("node1") { c in
                try await c.execute("SELECT state FROM transfers WHERE transfer_id = ? ORDER BY state", [.string("commit-lost")]).rows.map { try $0.string("state") }
            }
            #expect(states == ["aborted", "committed"], "one attempt lost, one committed")
            let retried = try await bank.transfer(from: a.id, to: b.id, amount: money("2.00"), idempotencyKey: "commit-lost")
            #expect(retried.replayed)
            #expect(try await balances(a.id, b.id) == afterSecond)
            for node in connections.nodes {
                #expect(try await connections.withConnection(node) { try await $0.xaRecover() }.isEmpty, "a branch stays prepared on \(node)")
            }
            let report = try await LedgerVerifier(connections: connections, maps: LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())).run()
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("a COMMIT applied while its node becomes unreachable: outcome_unknown, never a guess; the retry with the same key learns it committed, money moved once",
          arguments: [false, true])
    func outcomeUnknown(acrossNodes: Bool) async throws {
        try await withProxiedNode1 { proxy, bank, connections in
            let resolver = InDoubtResolver(connections: connections, minimumAge: .milliseconds(300), interval: .milliseconds(100), logger: testLogger)
            let a = try await bank.openAccount(customerName: "A", balance: money("5000.00"), idempotencyKey: "open-a") // node1, the commit point
            let b = try await bank.openAccount(customerName: "B", balance: money(acrossNodes ? "20000.00" : "3000.00"), idempotencyKey: "open-b")
            proxy.arm(.dropCommitAnswerThenRefuse)
            do {
                let result = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: "unknown-1")
                Issue.record("answered \(result) although its node could not be asked")
            } catch let error as LedgerError {
                #expect(error.code == .outcomeUnknown, "\(error)")
            }
            #expect(proxy.fired == 1, "the proxy saw no COMMIT")
            proxy.heal()
            // Any prepared participant is finished from the decision meanwhile.
            let task = Task {
                while !Task.isCancelled {
                    await resolver.resolveOnce()
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            defer { task.cancel() }
            var retry: MovementResult?
            for _ in 0..<40 where retry == nil {
                do { retry = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: "unknown-1") } catch let error as LedgerError
                    where error.code == .aborted || error.code == .outcomeUnknown || error.code == .nodeUnavailable {
                    try await Task.sleep(for: .milliseconds(250))
                }
            }
            #expect(retry?.replayed == true, "the COMMIT was applied: the retry must replay it")
            // Across nodes the participant's branch is committed by the resolver, from the decision.
            for _ in 0..<50 {
                var prepared = 0
                for node in connections.nodes { prepared += try await connections.withConnection(node) { try await $0.xaRecover() }.count }
                if prepared == 0 { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await bank.account(a.id).balance == money("4999.00"))
            #expect(try await bank.account(b.id).balance.minorUnits == money(acrossNodes ? "20000.00" : "3000.00").minorUnits + 100)
            let report = try await LedgerVerifier(connections: connections, maps: LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())).run()
            #expect(report.clean, "\(report.summary)")
        }
    }
}

/// A bootstrapped three-node bank whose node1 — the home node of every movement in these tests —
/// is reached through a ``FaultProxy``; the proxy is shut down afterwards, whatever happens.
private func withProxiedNode1(_ body: (FaultProxy, Bank, NodeConnections) async throws -> Void) async throws {
    try await withBank { cluster, bank, connections in
        var node1 = try cluster.bankConfiguration("node1")
        let proxy = try await FaultProxy.start(upstreamHost: node1.host, upstreamPort: node1.port)
        node1.port = proxy.port
        await connections.register(node: "node1", configuration: node1, options: .init(maxConnections: 24))
        do {
            try await body(proxy, bank, connections)
        } catch {
            try await proxy.shutdown()
            throw error
        }
        try await proxy.shutdown()
    }
}
