import Foundation
@_spi(FaultInjection) import Ledger
import MariaDB
import Sharding
import Synchronization
import Testing

/// Retries `operation` while it answers a retryable error (as a client told 503 would), up to 40 times.
private func retrying(_ operation: () async throws -> MovementResult) async throws -> MovementResult {
    var last: (any Error)?
    for _ in 0..<40 {
        do { return try await operation() } catch let error as LedgerError where error.code == .aborted || error.code == .outcomeUnknown {
            last = error
            try await Task.sleep(for: .milliseconds(250))
        }
    }
    throw last!
}

/// Which node the participant is on relative to the commit point (the home account's node).
enum ParticipantSide: String, CaseIterable, Sendable {
    case below, above
    /// Opening balances of the home (debited) account and of the other one.
    var balances: (home: String, other: String) {
        switch self {
        case .below: ("20000.00", "100.00") // home on node2, participant node1
        case .above: ("500.00", "20000.00") // home on node1, participant node2
        }
    }
}

@Suite("Exactly once: attempts own their branches", .serialized)
struct ExactlyOnceTests {
    @Test("a same-key retry while the first attempt's committed branch is still prepared moves money once (case 1)", arguments: ParticipantSide.allCases)
    func retryDoesNotUndoCommittedBranch(side: ParticipantSide) async throws {
        try await withBank { _, bank, connections in
            let (home, other) = try await crashedTransfer(bank, connections, home: side.balances.home, other: side.balances.other, key: "K1", at: .decided)
            #expect(home.node != other.node)
            #expect(try await preparedCount(connections) == 1) // decided committed, participant still prepared
            // The retry arrives at once, at a coordinator that has seen both accounts too.
            let result = try await withResolver(connections) {
                let result = try await retrying { try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K1") }
                try await waitUntilNothingPrepared(connections) // the first attempt's branch, committed by the resolver
                return result
            }
            #expect(result.replayed)
            #expect(try await bank.account(home.id).balance.minorUnits == money(side.balances.home).minorUnits - 100)
            #expect(try await bank.account(other.id).balance.minorUnits == money(side.balances.other).minorUnits + 100)
            #expect(try await bank.transferRecord("K1").state == "committed")
        }
    }

    /// Only with the participant below the commit point: above it, the commit point is visited
    /// first and its own posting collides with the first attempt's (`journal.one_posting`) before
    /// any participant branch exists, so no later branch can be prepared.
    @Test("a later attempt's prepared branch is never committed under an earlier attempt's decision (case 2)", arguments: [ParticipantSide.below])
    func laterAttemptBranchIsRolledBack(side: ParticipantSide) async throws {
        try await withBank { _, bank, connections in
            // The first attempt commits fully; then the other account moves to another node, so a
            // second attempt's posting for it lands where the first left none.
            // Home on node3; the other account on node2, then withdrawn down to node1 (below node3).
            let (homeBalance, otherBalance) = ("60000.00", "20000.00")
            let home = try await bank.openAccount(customerName: "Home", balance: money(homeBalance), idempotencyKey: "o-home")
            let other = try await bank.openAccount(customerName: "Other", balance: money(otherBalance), idempotencyKey: "o-other")
            let first = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K2")
            #expect(!first.replayed)
            _ = try await bank.withdraw(other.id, amount: money("15000.00"), idempotencyKey: "move-other")
            let otherNow = try await bank.account(other.id)
            #expect(otherNow.node != home.node)
            let otherBefore = otherNow.balance
            let homeBefore = try await bank.account(home.id).balance
            // A second attempt with the same key dies right after its participant is prepared.
            let dying = crashingBank(connections) { if case .prepared = $0 { return true } else { return false } }
            _ = (try await dying.account(home.id), try await dying.account(other.id))
            do {
                _ = try await dying.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K2")
            } catch is CoordinatorCrash {
            } catch let error as LedgerError {
                Issue.record("the dying attempt answered \(error) instead of dying")
            }
            #expect(try await preparedCount(connections) == 1, "the later attempt left no prepared branch: the case is not set up")
            try await withResolver(connections) { try await waitUntilNothingPrepared(connections) }
            #expect(try await bank.account(other.id).balance == otherBefore, "the later attempt's branch was committed: money created")
            #expect(try await bank.account(home.id).balance == homeBefore)
            let replay = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K2")
            #expect(replay.replayed)
        }
    }

    @Test("an attempt recorded aborted does not spend its key: the retry the 503 promised succeeds (case 4)", arguments: ParticipantSide.allCases)
    func abortedAttemptDoesNotSpendKey(side: ParticipantSide) async throws {
        try await withBank { _, bank, connections in
            let (home, other) = try await crashedTransfer(bank, connections, home: side.balances.home, other: side.balances.other, key: "K4", at: .beforeDecision)
            // The resolver presumes abort and records it.
            try await withResolver(connections) { try await waitUntilNothingPrepared(connections) }
            #expect(try await bank.transferRecord("K4").state == "aborted")
            let retry = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K4")
            #expect(!retry.replayed)
            #expect(try await bank.transferRecord("K4").state == "committed")
            let again = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K4")
            #expect(again.replayed)
            #expect(try await bank.account(home.id).balance.minorUnits == money(side.balances.home).minorUnits - 100)
            #expect(try await bank.account(other.id).balance.minorUnits == money(side.balances.other).minorUnits + 100)
        }
    }

    @Test("a retry after the home account moved while the first attempt was unresolved: one answer, committed once (case 5)")
    func retryAfterHomeMoved() async throws {
        try await withBank { _, bank, connections in
            let (home, other) = try await crashedTransfer(bank, connections, home: "20000.00", other: "100.00", key: "K5", at: .beforeDecision)
            try await withResolver(connections) {
                // The home account moves to node3 while the first attempt is in doubt.
                _ = try await retrying { try await bank.deposit(home.id, amount: money("40000.00"), idempotencyKey: "move-home") }
                #expect(try await bank.account(home.id).node == "node3")
                let retry = try await retrying { try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K5") }
                #expect(!retry.replayed)
                try await waitUntilNothingPrepared(connections)
            }
            // Whichever node GET reads first, the transfer is committed, once.
            #expect(try await bank.transferRecord("K5").state == "committed")
            #expect(try await bank.account(home.id).balance == money("59999.00"))
            #expect(try await bank.account(other.id).balance == money("101.00"))
            let again = try await bank.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: "K5")
            #expect(again.replayed)
        }
    }

    @Test("keys that differ only in case are different transfers (the schema compares keys byte for byte; the server's default collation folds case)")
    func keysAreCaseSensitive() async throws {
        try await withBank { _, bank, connections in
            let a = try await bank.openAccount(customerName: "A", balance: money("100.00"), idempotencyKey: "o-a")
            let collation = try await connections.withConnection("node1") { c in
                try await c.query("SELECT @@collation_server AS c").rows.first?.string("c")
            }
            #expect(collation != "utf8mb4_nopad_bin", "the test cluster must run the server's default collation to show this")
            let upper = try await bank.deposit(a.id, amount: money("1.00"), idempotencyKey: "Key-A")
            let lower = try await bank.deposit(a.id, amount: money("2.00"), idempotencyKey: "key-a")
            #expect(!upper.replayed && !lower.replayed)
            #expect(try await bank.account(a.id).balance == money("103.00"))
            #expect(try await bank.transferRecord("key-a").amount == money("2.00"))
        }
    }

    @Test("N concurrent requests with one key: one applies, the others replay it, money moves once", arguments: [false, true])
    func concurrentSameKey(acrossNodes: Bool) async throws {
        try await withBank { _, bank, _ in
            let from = try await bank.openAccount(customerName: "From", balance: money("500.00"), idempotencyKey: "o-from") // node1
            let to = try await bank.openAccount(customerName: "To", balance: money(acrossNodes ? "20000.00" : "200.00"), idempotencyKey: "o-to")
            _ = (try await bank.account(from.id), try await bank.account(to.id))
            let results = try await withThrowingTaskGroup(of: MovementResult.self) { group in
                for _ in 0..<8 {
                    group.addTask { try await retrying { try await bank.transfer(from: from.id, to: to.id, amount: money("1.00"), idempotencyKey: "same") } }
                }
                return try await group.reduce(into: [MovementResult]()) { $0.append($1) }
            }
            #expect(results.count == 8)
            #expect(results.filter { !$0.replayed }.count == 1)
            #expect(try await bank.account(from.id).balance == money("499.00"))
            #expect(try await bank.account(to.id).balance.minorUnits == money(acrossNodes ? "20000.00" : "200.00").minorUnits + 100)
        }
    }
}
