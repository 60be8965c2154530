import Ledger
import Testing

/// The coordinator's decisions, path by path, without a server. Two branches unless said: branch 0
/// is a participant (a lower node id), branch 1 the commit point.
@Suite("Two-phase commit state machine (no servers)")
struct TwoPhaseCommitStateMachineTests {
    typealias M = TwoPhaseCommitStateMachine
    typealias A = M.Action

    /// One event and the action it must produce.
    struct Step {
        var event: (inout M) -> A
        var expect: A
        init(_ expect: A, _ event: @escaping (inout M) -> A) {
            self.event = event
            self.expect = expect
        }
    }

    func run(_ machine: M, _ steps: [Step], sourceLocation: SourceLocation = #_sourceLocation) {
        var m = machine
        for (n, step) in steps.enumerated() {
            let action = step.event(&m)
            #expect(action == step.expect, "step \(n)", sourceLocation: sourceLocation)
            if action != step.expect { return }
        }
    }

    /// Start, work and launch the participant's prepare, then start and work the commit point.
    var throughWork: [Step] {
        [Step(.start(0)) { $0.start() },
         Step(.work(0)) { $0.started(0) },
         Step(.prepareInBackground(0)) { $0.workDone(0) },
         Step(.start(1)) { $0.launched() },
         Step(.work(1)) { $0.started(1) },
         Step(.writeDecision) { $0.workDone(1) }]
    }

    @Test("all goes well: decision row, prepares awaited, COMMIT, then XA COMMIT of the participant")
    func commits() {
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.commitDecision) { $0.prepareAnswered(0, prepared: true) },
            Step(.commitParticipant(0)) { $0.decisionCommitted() },
            Step(.finish(.committed)) { $0.participantCommitted(0) },
        ])
    }

    @Test("the commit point first (the participant has a higher node id): its prepare is awaited after the decision row")
    func commitPointFirst() {
        run(M(branches: 2, commitPoint: 0), [
            Step(.start(0)) { $0.start() },
            Step(.work(0)) { $0.started(0) },
            Step(.start(1)) { $0.workDone(0) },
            Step(.work(1)) { $0.started(1) },
            Step(.prepareInBackground(1)) { $0.workDone(1) },
            Step(.writeDecision) { $0.launched() },
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.commitDecision) { $0.prepareAnswered(1, prepared: true) },
            Step(.commitParticipant(1)) { $0.decisionCommitted() },
            Step(.finish(.committed)) { $0.participantCommitted(1) },
        ])
    }

    @Test("a branch whose XA START failed is never rolled back by this attempt (it may be another attempt's)")
    func startFailedIsNotRolledBack() {
        run(M(branches: 3, commitPoint: 2), [
            Step(.start(0)) { $0.start() },
            Step(.work(0)) { $0.started(0) },
            Step(.prepareInBackground(0)) { $0.workDone(0) },
            Step(.start(1)) { $0.launched() },
            Step(.awaitPrepare) { $0.startFailed(1) },
            Step(.rollBack(commitPoint: false, branches: [.init(branch: 0, prepared: true)])) { $0.prepareAnswered(0, prepared: true) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
    }

    @Test("the participant's work fails: its open branch and nothing else is rolled back")
    func participantWorkFails() {
        run(M(branches: 2, commitPoint: 1), [
            Step(.start(0)) { $0.start() },
            Step(.work(0)) { $0.started(0) },
            Step(.rollBack(commitPoint: false, branches: [.init(branch: 0, prepared: false)])) { $0.workFailed(0) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
    }

    @Test("the decision row is refused (another attempt committed) while a prepare is in flight: wait for it, then roll back both")
    func decisionRefused() {
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionFailed() },
            Step(.rollBack(commitPoint: true, branches: [.init(branch: 0, prepared: true)])) { $0.prepareAnswered(0, prepared: true) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
    }

    @Test("a prepare fails: no COMMIT; the ended branch and the commit point are rolled back")
    func prepareFails() {
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.rollBack(commitPoint: true, branches: [.init(branch: 0, prepared: false)])) { $0.prepareAnswered(0, prepared: false) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
    }

    @Test("the COMMIT is refused by the server: nothing committed, the prepared participant is rolled back")
    func commitRefused() {
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.commitDecision) { $0.prepareAnswered(0, prepared: true) },
            Step(.rollBack(commitPoint: false, branches: [.init(branch: 0, prepared: true)])) { $0.decisionCommitFailed(definite: true) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
    }

    @Test("the COMMIT loses its answer: the commit point is asked; committed → phase two, aborted → roll back, no answer → unknown")
    func commitAnswerLost() {
        let lost = throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.commitDecision) { $0.prepareAnswered(0, prepared: true) },
            Step(.learnDecision) { $0.decisionCommitFailed(definite: false) },
        ]
        run(M(branches: 2, commitPoint: 1), lost + [
            Step(.commitParticipant(0)) { $0.learned(.committed) },
            Step(.finish(.committed)) { $0.participantCommitted(0) },
        ])
        run(M(branches: 2, commitPoint: 1), lost + [
            Step(.rollBack(commitPoint: false, branches: [.init(branch: 0, prepared: true)])) { $0.learned(.aborted) },
            Step(.finish(.rolledBack)) { $0.rolledBack() },
        ])
        run(M(branches: 2, commitPoint: 1), lost + [
            Step(.abandon) { $0.learnFailed() },
            Step(.finish(.unknown)) { $0.abandoned() },
        ])
    }

    @Test("a participant's XA COMMIT fails after the decision: it is detached for the resolver, the others still committed")
    func participantCommitFails() {
        run(M(branches: 3, commitPoint: 2), [
            Step(.start(0)) { $0.start() },
            Step(.work(0)) { $0.started(0) },
            Step(.prepareInBackground(0)) { $0.workDone(0) },
            Step(.start(1)) { $0.launched() },
            Step(.work(1)) { $0.started(1) },
            Step(.prepareInBackground(1)) { $0.workDone(1) },
            Step(.start(2)) { $0.launched() },
            Step(.work(2)) { $0.started(2) },
            Step(.writeDecision) { $0.workDone(2) },
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.awaitPrepare) { $0.prepareAnswered(1, prepared: true) },
            Step(.commitDecision) { $0.prepareAnswered(0, prepared: true) },
            Step(.commitParticipant(0)) { $0.decisionCommitted() },
            Step(.detach(0)) { $0.participantCommitFailed(0) },
            Step(.commitParticipant(1)) { $0.detached(0) },
            Step(.finish(.committed)) { $0.participantCommitted(1) },
        ])
    }

    @Test("a crash at any point abandons every session: prepared branches go to the resolver")
    func crashes() {
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.abandon) { $0.crashed() },
            Step(.finish(.crashed)) { $0.abandoned() },
        ])
        run(M(branches: 2, commitPoint: 1), throughWork + [
            Step(.awaitPrepare) { $0.decisionWritten() },
            Step(.commitDecision) { $0.prepareAnswered(0, prepared: true) },
            Step(.abandon) { $0.crashed() },
            Step(.finish(.crashed)) { $0.abandoned() },
        ])
    }

    @Test("one node only (the commit point): no XA at all")
    func singleBranch() {
        run(M(branches: 1, commitPoint: 0), [
            Step(.start(0)) { $0.start() },
            Step(.work(0)) { $0.started(0) },
            Step(.writeDecision) { $0.workDone(0) },
            Step(.commitDecision) { $0.decisionWritten() },
            Step(.finish(.committed)) { $0.decisionCommitted() },
        ])
    }
}

@Suite("Retry policy of a balance change (no servers)")
struct MovementRetryPolicyTests {
    @Test("lock-first when every place is known; not simple → the general path for good")
    func paths() {
        var p = MovementRetryPolicy()
        #expect(p.start(allLocationsKnown: true) == .lockFirst)
        #expect(p.lockFirstNotSimple() == .lookForEarlierCommit)
        #expect(p.noEarlierCommit() == .plan)
        #expect(p.planStale(.init(stillThere: true)) == .backOff(.milliseconds(4), forgetLocations: false, refreshMaps: false))
        #expect(p.backedOff(allLocationsKnown: true) == .lookForEarlierCommit) // not lock-first again
        var q = MovementRetryPolicy()
        #expect(q.start(allLocationsKnown: false) == .lookForEarlierCommit)
    }

    @Test("a stale lock-first try or another attempt's commit goes to the look for the earlier commit; wrong_shard refreshes the maps")
    func staleAndWrongShard() {
        var p = MovementRetryPolicy()
        #expect(p.start(allLocationsKnown: true) == .lockFirst)
        #expect(p.lockFirstStale(.init()) == .lookForEarlierCommit)
        #expect(p.earlierAttemptCommitted() == .lookForEarlierCommit)
        #expect(p.planStale(.init(wrongShard: true)) == .backOff(.milliseconds(4), forgetLocations: true, refreshMaps: true))
        #expect(p.backedOff(allLocationsKnown: true) == .lockFirst) // a stale try does not bar the lock-first path
    }

    @Test("a range frozen for a move is waited for, not counted as a stale plan; after the wait the places are read again")
    func rangeMoving() {
        var p = MovementRetryPolicy()
        #expect(p.start(allLocationsKnown: true) == .lockFirst)
        #expect(p.lockFirstNotSimple() == .lookForEarlierCommit)
        #expect(p.noEarlierCommit() == .plan)
        for _ in 0..<(MovementRetryPolicy.maximumTries * 2) {
            #expect(p.planStale(.init(rangeMoving: true)) == .awaitMapChange)
        }
        #expect(p.stalePlans == 0)
        #expect(p.mapsChanged() == .lookForEarlierCommit)
        // Ordinary stale plans still count and give up.
        for _ in 1..<MovementRetryPolicy.maximumTries { _ = p.planStale(.init()) }
        #expect(p.planStale(.init()) == .giveUp)
    }

    @Test("gives up after the maximum of stale plans, with pauses that double up to a cap before")
    func givesUp() {
        var p = MovementRetryPolicy()
        var pauses: [Duration] = []
        for _ in 1..<MovementRetryPolicy.maximumTries {
            guard case .backOff(let pause, _, _) = p.planStale(.init()) else { Issue.record("gave up early"); return }
            pauses.append(pause)
        }
        #expect(pauses.first == .milliseconds(4))
        #expect(zip(pauses, pauses.dropFirst()).allSatisfy { $1 == min($0 * 2, MovementRetryPolicy.longestPause) })
        #expect(pauses.last == MovementRetryPolicy.longestPause)
        // Enough patience for a hot account's contention: over a second of pauses in all.
        #expect(pauses.reduce(.zero, +) > .seconds(1))
        #expect(p.planStale(.init()) == .giveUp)
    }

    @Test("the pause slept is a random 50–100 % of the policy's")
    func jitter() {
        let pauses = (0..<200).map { _ in MovementRetryPolicy.jittered(.milliseconds(100)) }
        #expect(pauses.allSatisfy { $0 >= .milliseconds(50) && $0 <= .milliseconds(100) })
        #expect(Set(pauses).count > 1, "not random")
    }

    @Test("gives up at the first stale plan past the time budget, however few came before")
    func timeBudget() {
        var p = MovementRetryPolicy()
        guard case .backOff = p.planStale(.init(), elapsed: MovementRetryPolicy.timeBudget - .milliseconds(1)) else { Issue.record("gave up early"); return }
        #expect(p.planStale(.init(), elapsed: MovementRetryPolicy.timeBudget) == .giveUp)
        // A moving range's wait has its own bound, in the caller.
        var q = MovementRetryPolicy()
        #expect(q.planStale(.init(rangeMoving: true), elapsed: .seconds(60)) == .awaitMapChange)
    }
}
