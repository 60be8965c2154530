import Foundation
@_spi(FaultInjection) import Ledger
import MariaDB
import Sharding
import Synchronization
import Testing

// Adversarial review of the exactly-once protocol (attempts, decision rows, the in-doubt resolver).
// Every test here states what the ledger promises and fails where the promise is broken; the report
// of the review (branch `protocol-review`) ranks them.

private let attackMaps = LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())

private func verify(_ connections: NodeConnections) async throws -> LedgerVerifier.Report {
    try await LedgerVerifier(connections: connections, maps: attackMaps).run(xaBound: .seconds(10), settle: .seconds(2))
}

/// What an operation answered, for messages.
private func outcome<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}

/// The first key `prefix-N` that hashes into a directory range of `node` (where it is claimed).
private func keyClaimed(on node: String, prefix: String) -> String {
    var n = 0
    while true {
        let key = "\(prefix)-\(n)"
        if (try? attackMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)).node) == node { return key }
        n += 1
    }
}

/// Records an issue unless `answer` is an idempotency conflict; `applied` says what a success meant.
private func expectConflict<T>(_ answer: Result<T, any Error>, sourceLocation: SourceLocation = #_sourceLocation, applied: (T) -> String) {
    switch answer {
    case .success(let value): Issue.record(Comment(rawValue: applied(value)), sourceLocation: sourceLocation)
    case .failure(let error as LedgerError) where error.code == .idempotencyConflict: break
    case .failure(let error): Issue.record("unexpected answer \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Protocol attacks: exactly-once under crashes, retries, moves and odd keys", .serialized)
struct ProtocolAttackTests {
    // MARK: idempotency keys whose earlier use is on another node

    /// Found by the review: an opening looked for the key only on the node its balance maps to, so
    /// the same key with a balance on another node opened a second account. Openings now keep their
    /// decision on the key's own node.
    @Test("open: a key reused with an opening balance on another node is refused (idempotency conflict), not a second account")
    func openReusedKeyOtherNode() async throws {
        try await withBank { _, bank, connections in
            let first = try await bank.openAccount(customerName: "Ann", balance: money("100.00"), idempotencyKey: "open-K")
            #expect(first.node == "node1")
            expectConflict(await outcome({ try await bank.openAccount(customerName: "Ann", balance: money("20000.00"), idempotencyKey: "open-K") })) {
                "key open-K, already used to open account \(first.id) on \(first.node), opened a second account \($0.id) on \($0.node) holding \($0.balance)"
            }
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    /// A movement looked for an earlier use of its key only on the home account's nodes: the same
    /// key used before for a request whose home is on another node was not seen, and both committed
    /// (two decisions for one transfer id). Every request now claims its key on the key's own node.
    /// The key's node is each node in turn: the claim is then made in the first request's
    /// transaction, in the second's, or alone.
    @Test("deposit: a key reused for another account on another node is refused, not applied a second time (the key's node: the first's, the second's, a third)")
    func depositReusedKeyOtherNode() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "open-a") // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "open-b") // node2
            #expect(a.node == "node1" && b.node == "node2")
            for node in ["node1", "node2", "node3"] {
                let key = keyClaimed(on: node, prefix: "dep-K")
                _ = try await bank.deposit(a.id, amount: money("5.00"), idempotencyKey: key)
                expectConflict(await outcome({ try await bank.deposit(b.id, amount: money("5.00"), idempotencyKey: key) })) {
                    "key \(key) (claimed on \(node)), already used for a deposit to \(a.id) on node1, was applied again to \(b.id) on node2 (replayed: \($0.replayed))"
                }
                // The first request's retry still replays.
                #expect(try await bank.deposit(a.id, amount: money("5.00"), idempotencyKey: key).replayed)
            }
            #expect(try await bank.account(b.id).balance == money("20000.00"))
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    @Test("transfer: a key reused for a transfer with the other home account (another node) is refused both ways; a movement's key used for an opening and an opening's for a movement are refused")
    func transferReusedKeyOtherHome() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "open-a") // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "open-b") // node2
            for node in ["node1", "node2", "node3"] {
                let ab = keyClaimed(on: node, prefix: "ab-K")
                _ = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: ab)
                expectConflict(await outcome({ try await bank.transfer(from: b.id, to: a.id, amount: money("1.00"), idempotencyKey: ab) })) {
                    "key \(ab) (claimed on \(node)) of a transfer from \(a.id) was applied again from \(b.id) (replayed: \($0.replayed))"
                }
                let ba = keyClaimed(on: node, prefix: "ba-K")
                _ = try await bank.transfer(from: b.id, to: a.id, amount: money("2.00"), idempotencyKey: ba)
                expectConflict(await outcome({ try await bank.transfer(from: a.id, to: b.id, amount: money("2.00"), idempotencyKey: ba) })) {
                    "key \(ba) (claimed on \(node)) of a transfer from \(b.id) was applied again from \(a.id) (replayed: \($0.replayed))"
                }
                // An opening's key for a deposit, and a withdrawal's key for an opening.
                let opened = keyClaimed(on: node, prefix: "op-K")
                let c = try await bank.openAccount(customerName: "C", balance: money("7.00"), idempotencyKey: opened)
                expectConflict(await outcome({ try await bank.deposit(b.id, amount: money("7.00"), idempotencyKey: opened) })) {
                    "the key \(opened) of the opening of \(c.id) was applied as a deposit to \(b.id) (replayed: \($0.replayed))"
                }
                let withdrawn = keyClaimed(on: node, prefix: "wd-K")
                _ = try await bank.withdraw(b.id, amount: money("3.00"), idempotencyKey: withdrawn)
                expectConflict(await outcome({ try await bank.openAccount(customerName: "D", balance: money("3.00"), idempotencyKey: withdrawn) })) {
                    "the key \(withdrawn) of a withdrawal from \(b.id) opened account \($0.id)"
                }
            }
            #expect(try await bank.account(a.id).balance == money("103.00"))
            #expect(try await bank.account(b.id).balance == money("19988.00"))
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
            // One claim per key, cluster-wide, on the key's node.
            var claims: [String: [String]] = [:]
            for node in ["node1", "node2", "node3"] {
                for r in try await connections.withConnection(node, { try await $0.query("SELECT transfer_id FROM key_claims").rows }) {
                    claims[try r.string("transfer_id"), default: []].append(node)
                }
            }
            for (key, nodes) in claims {
                #expect(nodes == [try attackMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)).node], "key \(key) claimed on \(nodes)")
            }
            #expect(claims.count == 2 + 3 * 4, "claims: \(claims.keys.sorted())")
        }
    }

    /// A claim on a third node costs a commit there and needs that node up; a key the ledger
    /// chooses itself (a request without `Idempotency-Key`) is drawn so that it is claimed on the
    /// node the request writes on anyway.
    @Test("a key the ledger chooses is claimed on the node the request writes on: with node3 killed, movements on node1 and node2 and an opening on node1 go on; a client's key claimed on node3 is refused node_unavailable")
    func freshKeysStayOnTheirNode() async throws {
        try await withBank { cluster, bank, _ in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "open-a") // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "open-b") // node2
            func keyNode(_ key: String) throws -> String { try attackMaps.directory.range(for: DirectoryHash.key(forIdempotencyKey: key)).node }
            for account in [a, b] {
                for _ in 0..<20 { #expect(try keyNode(bank.freshKey(home: account.id)) == account.node) }
            }
            #expect(try keyNode(bank.freshKey(opening: money("60000.00"))) == "node3")
            #expect(try keyNode(bank.freshKey(opening: money("1.00"))) == "node1")
            try cluster.kill("node3")
            for _ in 0..<6 {
                _ = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: bank.freshKey(home: a.id))
                _ = try await bank.transfer(from: b.id, to: a.id, amount: money("1.00"), idempotencyKey: bank.freshKey(home: b.id))
            }
            _ = try await bank.openAccount(customerName: "C", balance: money("5.00"), idempotencyKey: bank.freshKey(opening: money("5.00")))
            #expect(try await bank.account(a.id).balance == money("112.00"))
            // The cost, said plainly: a client's key whose claim belongs on node3 waits for node3 —
            // a retryable refusal (here, with no health view, after the retries: `aborted`; in
            // `serve`, whose health view knows node3 is down, at once: `node_unavailable`).
            let onNode3 = keyClaimed(on: "node3", prefix: "dep-down")
            do {
                _ = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: onNode3)
                Issue.record("a deposit whose key is claimed on the killed node3 succeeded")
            } catch let error as LedgerError where error.code == .nodeUnavailable || error.code == .aborted {}
            #expect(try await bank.account(a.id).balance == money("112.00"))
        }
    }

    /// The reused key collides with the earlier request's posting (`journal.one_posting`) on a node
    /// whose decision rows were not consulted: every attempt rolls back on 1062, the ledger plans
    /// again and again and answers `aborted` ("nothing was done, try again") — a key that can never
    /// succeed, and a 503 where the contract says 422 idempotency_key_reused.
    @Test("deposit with the key of an earlier transfer that credited the same account (on another node than the transfer's home): a conflict, not endless aborts")
    func depositWithKeyOfTransferToIt() async throws {
        try await withBank { _, bank, _ in
            let a = try await bank.openAccount(customerName: "A", balance: money("500.00"), idempotencyKey: "open-a") // node1: home
            let b = try await bank.openAccount(customerName: "B", balance: money("20000.00"), idempotencyKey: "open-b") // node2
            _ = try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: "xfer-K")
            let started = ContinuousClock.now
            let answer = await outcome({ try await bank.deposit(b.id, amount: money("1.00"), idempotencyKey: "xfer-K") })
            let took = ContinuousClock.now - started
            switch answer {
            case .failure(let error as LedgerError) where error.code == .idempotencyConflict:
                break
            case .failure(let error):
                Issue.record("reusing xfer-K for a deposit answered \(error) after \(took) (the client is told to retry; every retry fails the same way)")
            case .success(let r):
                Issue.record("reusing xfer-K for a deposit was applied (replayed: \(r.replayed))")
            }
        }
    }

    // MARK: replays while an attempt is in doubt

    /// An open whose decision committed (on the balance's node) while its directory entry is still a
    /// prepared branch on another node: the retry finds the decision, then looks the account up by
    /// its directory entry, which it cannot see yet — and answers "account does not exist".
    @Test("open: a retry of an open that committed, while its directory branch is in doubt, returns the account, not not_found")
    func openRetryWhileDirectoryInDoubt() async throws {
        try await withBank { _, bank, connections in
            var id: Int64 = 7_000_000
            while try attackMaps.directory.range(for: DirectoryHash.key(forAccount: id)).node != "node3" { id += 1 }
            let fixed = id
            let dying = crashingBank(connections, nextID: { fixed }) { $0 == .decided }
            await #expect(throws: CoordinatorCrash.self) {
                _ = try await dying.openAccount(customerName: "Dee", balance: money("100.00"), idempotencyKey: "open-doubt")
            }
            // The directory branch on node3 is in doubt (and the data row's, when the key's node, the
            // commit point of an opening, is not node1).
            #expect(try await preparedCount(connections) >= 1, "the directory branch on node3 should be in doubt")
            #expect(try await bank.transferRecord("open-doubt").state == "committed")
            // The client retries at once (no resolver has run yet: ~2 s in serve, or longer if node1 is slow).
            switch await outcome({ try await bank.openAccount(customerName: "Dee", balance: money("100.00"), idempotencyKey: "open-doubt") }) {
            case .success(let account):
                #expect(account.id == fixed)
            case .failure(let error):
                Issue.record("the retry of a committed open answered \(error); a client taking that for 'not opened' opens again with a new key: two accounts")
            }
            let resolver = startResolver(connections, minimumAge: .milliseconds(300))
            defer { resolver.cancel() }
            try await waitUntilNothingPrepared(connections)
            #expect(try await bank.openAccount(customerName: "Dee", balance: money("100.00"), idempotencyKey: "open-doubt").id == fixed)
        }
    }

    /// A transfer whose decision committed while the credited account's branch is still prepared:
    /// the retry replays it, but the replay reads the balances from committed postings only, so the
    /// credited account's balance is missing (POST /v1/transfers answers `to_balance: null`).
    @Test("transfer: the replay of a committed transfer whose participant is still prepared reports both balances")
    func replayWhileParticipantInDoubt() async throws {
        try await withBank { _, bank, connections in
            let (home, other) = try await crashedTransfer(bank, connections, home: "500.00", other: "20000.00", key: "replay-K", at: .decided)
            let replay = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "replay-K")
            #expect(replay.replayed)
            #expect(replay.balances[home.id] == money("499.00"))
            #expect(replay.balances[other.id] == money("20001.00"), "the replay answered balances \(replay.balances)")
            let resolver = startResolver(connections, minimumAge: .milliseconds(300))
            defer { resolver.cancel() }
            try await waitUntilNothingPrepared(connections)
        }
    }

    // MARK: a slow coordinator (holds: kept as evidence)

    /// The first attempt's coordinator is alive but stalls with its decision row written and not
    /// committed; the resolver presumes abort meanwhile (its insert waits on the row's primary key)
    /// and a retry with the key arrives. Below the lock-wait timeout (3 s) and above it (7 s).
    @Test("a stalled coordinator, the resolver and a same-key retry: money moves once and both clients hear 'done'", arguments: [3, 7])
    func stalledCoordinator(seconds: Int) async throws {
        try await withBank { _, bank, connections in
            let home = try await bank.openAccount(customerName: "Home", balance: money("20000.00"), idempotencyKey: "o-home") // node2
            let other = try await bank.openAccount(customerName: "Other", balance: money("100.00"), idempotencyKey: "o-other") // node1
            let slow = Bank(connections: connections, maps: { attackMaps }, nextAccountID: { -1 }, logger: testLogger,
                            faults: { if $0 == .beforeDecision { try await Task.sleep(for: .seconds(seconds)) } })
            _ = (try await slow.account(home.id), try await slow.account(other.id))
            let resolver = startResolver(connections, minimumAge: .milliseconds(300), interval: .milliseconds(100))
            defer { resolver.cancel() }
            async let first = outcome { try await slow.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "slow-K") }
            try await Task.sleep(for: .milliseconds(800))
            var retried: Result<MovementResult, any Error> = .failure(LedgerError(.aborted, "not tried"))
            for _ in 0..<20 {
                retried = await outcome { try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "slow-K") }
                if case .failure(let e as LedgerError) = retried, e.code == .aborted { try await Task.sleep(for: .milliseconds(250)); continue }
                break
            }
            let answers = [await first, retried]
            let applied = answers.compactMap { try? $0.get() }.filter { !$0.replayed }.count
            #expect(applied == 1, "answers: \(answers)")
            try await waitUntilNothingPrepared(connections)
            #expect(try await bank.account(home.id).balance == money("19999.00"))
            #expect(try await bank.account(other.id).balance == money("101.00"))
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    /// The resolver presumes abort while the coordinator is alive: the participant (below the commit
    /// point) is prepared, and the coordinator waits ~3 s for the home row, which another session holds,
    /// before it can write its decision. The resolver records the attempt aborted and rolls the branch
    /// back; the coordinator's decision row must then fail (primary key) and nothing of that attempt commit.
    @Test("the resolver presumes abort while the coordinator still waits for the home row: that attempt commits nothing, the client hears the truth")
    func presumedAbortWhileCoordinatorAlive() async throws {
        try await withBank { cluster, bank, connections in
            let home = try await bank.openAccount(customerName: "Home", balance: money("20000.00"), idempotencyKey: "o-home") // node2
            let other = try await bank.openAccount(customerName: "Other", balance: money("100.00"), idempotencyKey: "o-other") // node1
            let coordinator = Bank(connections: connections, maps: { attackMaps }, nextAccountID: { -1 }, logger: testLogger)
            _ = (try await coordinator.account(home.id), try await coordinator.account(other.id))
            let blocker = try await connect(cluster, "node2")
            try await blocker.begin()
            _ = try await blocker.execute("SELECT balance FROM account_info WHERE account_id = ? FOR UPDATE", [.int(home.id)])
            let resolutions = Mutex<[InDoubtResolver.Resolution]>([])
            let resolver = InDoubtResolver(connections: connections, minimumAge: .milliseconds(300), interval: .milliseconds(100), logger: testLogger)
            let resolving = Task {
                while !Task.isCancelled {
                    let done = await resolver.resolveOnce()
                    resolutions.withLock { $0 += done }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            defer { resolving.cancel() }
            async let answer = outcome { try await coordinator.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "alive-K") }
            try await Task.sleep(for: .seconds(3))
            try await blocker.rollback()
            await blocker.close()
            let result = await answer
            let presumed = resolutions.withLock { $0 }.filter { $0.transferID == "alive-K" }
            try await waitUntilNothingPrepared(connections)
            let home1 = try await bank.account(home.id).balance, other1 = try await bank.account(other.id).balance
            switch result {
            case .success(let r):
                #expect(!r.replayed)
                #expect(home1 == money("19999.00") && other1 == money("101.00"), "told done; balances \(home1), \(other1)")
            case .failure(let error):
                #expect(home1 == money("20000.00") && other1 == money("100.00"), "told \(error); balances \(home1), \(other1)")
            }
            let states = try await connections.withConnection("node2") { c in
                try await c.execute("SELECT attempt, state FROM transfers WHERE transfer_id = 'alive-K'").rows.map { "\(try $0.string("attempt")):\(try $0.string("state"))" }
            }
            #expect(states.filter { $0.hasSuffix(":committed") }.count <= 1, "\(states)")
            // The scenario happened: the resolver recorded the live attempt aborted (its XA ROLLBACK of the
            // still-attached branch may be refused; the coordinator rolls it back itself).
            #expect(states.contains { $0.hasSuffix(":aborted") }, "the resolver presumed nothing: states \(states), resolutions \(presumed), answer \(result)")
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    /// The commit point is down (killed) while a participant of a committed attempt is prepared: the
    /// resolver must leave the branch prepared — never guess.
    @Test("a resolver whose commit point is down leaves the branch prepared")
    func resolverCommitPointDown() async throws {
        try await withBank { cluster, bank, connections in
            try await crashedTransfer(bank, connections, home: "20000.00", other: "100.00", key: "down-K", at: .decided)
            try cluster.kill("node2")
            let resolver = InDoubtResolver(connections: connections, minimumAge: .milliseconds(100), interval: .milliseconds(100), logger: testLogger)
            var resolved: [InDoubtResolver.Resolution] = []
            for _ in 0..<15 {
                resolved += await resolver.resolveOnce()
                try await Task.sleep(for: .milliseconds(150))
            }
            #expect(resolved.isEmpty, "resolved without its commit point: \(resolved)")
            let left = try await connections.withConnection("node1") { try await $0.xaRecover() }
            #expect(left.count == 1, "the participant's branch on node1 should still be prepared")
        }
    }

    /// Each crash step × each shape (participant below/above the commit point, the credited or the
    /// debited account crossing a boundary inside the transfer), retried at once on another
    /// coordinator while two resolvers run: money moves once, nothing stays prepared, verify is clean.
    @Test("crash at each step × shape, immediate same-key retry with two resolvers running: exactly once",
          arguments: ["prepared", "beforeDecision", "decided"], ["below", "above", "moveOther", "moveHome"])
    func crashMatrix(step: String, shape: String) async throws {
        try await withBank { _, bank, connections in
            let (h, o): (String, String) = switch shape {
            case "below": ("20000.00", "100.00")
            case "above": ("500.00", "20000.00")
            case "moveOther": ("20000.00", "9999.50") // the credited account moves node1 → node2
            default: ("10000.50", "100.00") // the debited (home) account moves node2 → node1
            }
            let home = try await bank.openAccount(customerName: "Home", balance: money(h), idempotencyKey: "o-home")
            let other = try await bank.openAccount(customerName: "Other", balance: money(o), idempotencyKey: "o-other")
            let dying = crashingBank(connections) { s in
                switch (step, s) {
                case ("prepared", .prepared), ("beforeDecision", .beforeDecision), ("decided", .decided): return true
                default: return false
                }
            }
            _ = (try await dying.account(home.id), try await dying.account(other.id))
            let first = await outcome { try await dying.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "M") }
            if case .failure(let e) = first, !(e is CoordinatorCrash) { Issue.record("the first attempt answered \(e)") }
            if case .success = first { Issue.record("the first attempt did not reach step \(step)") }
            let r1 = startResolver(connections, minimumAge: .milliseconds(300), interval: .milliseconds(100))
            let r2 = startResolver(connections, minimumAge: .milliseconds(300), interval: .milliseconds(130))
            defer { r1.cancel(); r2.cancel() }
            var retry: Result<MovementResult, any Error> = .failure(LedgerError(.aborted, "not tried"))
            for _ in 0..<40 {
                retry = await outcome { try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "M") }
                if case .failure(let e as LedgerError) = retry, e.code == .aborted || e.code == .outcomeUnknown { try await Task.sleep(for: .milliseconds(250)); continue }
                break
            }
            guard case .success(let r) = retry else { Issue.record("the retry never succeeded: \(retry)"); return }
            #expect(r.replayed == (step == "decided"), "replayed \(r.replayed) after a crash at \(step)")
            try await waitUntilNothingPrepared(connections)
            #expect(try await bank.account(home.id).balance.minorUnits == money(h).minorUnits - 100)
            #expect(try await bank.account(other.id).balance.minorUnits == money(o).minorUnits + 100)
            let again = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "M")
            #expect(again.replayed)
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    // MARK: verify

    /// `verify` tolerates a prepared branch for `xaBound` (10 s), but its transfer section reads the
    /// committed decision of that very attempt without its participant's postings, on both passes
    /// (2 s apart), and reports it: a violation the resolver removes seconds later by itself.
    @Test("verify during an in-doubt transfer that the resolver finishes within the XA bound reports no violation")
    func verifyDuringInDoubt() async throws {
        try await withBank { _, bank, connections in
            let (_, other) = try await crashedTransfer(bank, connections, home: "500.00", other: "20000.00", key: "doubt-K", at: .decided)
            // A resolver that finishes the branch ~3 s after it is first seen: well inside verify's 10 s bound
            // (serve's own — 2 s age, 1 s passes — lands between 2 and 3 s: the same race, less often lost).
            let resolver = startResolver(connections, minimumAge: .seconds(3))
            defer { resolver.cancel() }
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
            try await waitUntilNothingPrepared(connections)
            let after = try await verify(connections)
            #expect(after.clean, "\(after.summary)")
            #expect(try await bank.account(other.id).balance == money("20001.00"))
        }
    }

    // MARK: keys at the edges (the library takes any String; the API only 1–64 ASCII characters)

    /// The keys compare byte for byte in MariaDB (utf8mb4_bin), so "café" in NFC and in NFD are two
    /// transfers and both commit; the verifier groups them with Swift `String` equality (canonical
    /// equivalence) and reports one transfer with two committed decisions.
    @Test("verify: two keys that differ only in Unicode normalisation are two transfers, not a violation")
    func verifyNormalisation() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "open-a")
            let b = try await bank.openAccount(customerName: "B", balance: money("200.00"), idempotencyKey: "open-b")
            let nfc = "caf\u{E9}", nfd = "cafe\u{301}"
            #expect(Array(nfc.utf8) != Array(nfd.utf8))
            let first = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: nfc)
            let second = try await bank.deposit(b.id, amount: money("1.00"), idempotencyKey: nfd)
            #expect(!first.replayed && !second.replayed) // the ledger treats them as two keys
            let report = try await verify(connections)
            #expect(report.clean, "\(report.summary)")
        }
    }

    /// utf8mb4_bin is a PAD SPACE collation: "pad" and "pad " are one value to the unique indexes and
    /// to `WHERE transfer_id = ?`. A different request with the key "pad " is answered as a replay of
    /// the request with key "pad": the client is told its deposit is done; no money moved.
    @Test("keys differing by a trailing space are two keys: the second deposit is applied, not replayed")
    func trailingSpaceKey() async throws {
        try await withBank { _, bank, _ in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "open-a")
            _ = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: "pad")
            let second = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: "pad ")
            #expect(!second.replayed, "deposit with key 'pad ' was answered as a replay of key 'pad'")
            #expect(try await bank.account(a.id).balance == money("102.00"))
        }
    }

    /// A key longer than 64 bytes but not 64 characters (VARCHAR(64) counts characters) commits on one
    /// node, yet across nodes two-phase commit refuses it before starting and the ledger answers
    /// `aborted` — "nothing changed, try again" — every time. A key over 64 characters: `aborted` too
    /// (the server's 'data too long'). Either the key is invalid (say so) or it works everywhere.
    @Test("a key over 64 bytes: the same answer on one node and across nodes, never an endless 'aborted'",
          arguments: [String(repeating: "\u{E9}", count: 40), String(repeating: "k", count: 65)])
    func longKey(key: String) async throws {
        try await withBank { _, bank, _ in
            let a = try await bank.openAccount(customerName: "A", balance: money("500.00"), idempotencyKey: "open-a") // node1
            let b = try await bank.openAccount(customerName: "B", balance: money("200.00"), idempotencyKey: "open-b") // node1
            let c = try await bank.openAccount(customerName: "C", balance: money("20000.00"), idempotencyKey: "open-c") // node2
            let single = await outcome({ try await bank.transfer(from: a.id, to: b.id, amount: money("1.00"), idempotencyKey: key) })
            let cross = await outcome({ try await bank.transfer(from: a.id, to: c.id, amount: money("1.00"), idempotencyKey: key + "x") })
            for (what, answer) in [("one node", single), ("across nodes", cross)] {
                if case .failure(let error as LedgerError) = answer, error.code == .aborted {
                    Issue.record("a \(key.utf8.count)-byte, \(key.count)-character key \(what): \(error) — retrying can never succeed")
                }
            }
        }
    }
}
