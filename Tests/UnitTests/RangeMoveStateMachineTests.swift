import Moves
import Sharding
import Testing

@Suite("A range move's decisions (no servers)")
struct RangeMoveStateMachineTests {
    /// Drives a move from the start to `done`, answering each action as a runner would.
    @Test("the happy path visits every phase in order and ends done")
    func happyPath() {
        var m = RangeMoveStateMachine()
        var seen: [MovePhase] = [m.phase]
        func note() { if seen.last != m.phase { seen.append(m.phase) } }
        #expect(m.resume() == .prepareTarget)
        #expect(m.stepDone() == .startCapture); note()
        #expect(m.stepDone() == .copyChunk(after: nil)); note()
        #expect(m.chunkCopied(lastKey: 1000, more: true) == .copyChunk(after: 1000))
        #expect(m.chunkCopied(lastKey: 1800, more: false) == .catchUp); note()
        #expect(m.caughtUp(pending: 5000) == .catchUp)
        #expect(m.caughtUp(pending: 12) == .compareHistory)
        #expect(m.historyMatched() == .freezeSource); note()
        #expect(m.sourceFrozen() == .verify); note()
        #expect(m.verifiedEqual() == .markSourceMoved); note()
        #expect(m.stepDone() == .activateTarget); note()
        #expect(m.stepDone() == .publishMap(reload: true)); note()
        #expect(m.published(conflict: true) == .publishMap(reload: true))
        #expect(m.published(conflict: false) == .cleanSourceChunk); note()
        #expect(m.sourceChunkCleaned(more: true) == .cleanSourceChunk)
        #expect(m.sourceChunkCleaned(more: false) == .cleanDecisions)
        #expect(m.decisionsCleaned() == .finish(error: nil)); note()
        #expect(seen == MovePhase.forward)
        #expect(m.resume() == .none)
    }

    /// What a runner taking the job over at each phase does first: that phase's step again (every
    /// step is idempotent on the nodes), the copy from its recorded cursor.
    @Test("a crash at every phase: the new runner redoes that phase's step", arguments: MovePhase.allCases)
    func resumeAfterCrash(_ phase: MovePhase) {
        let m = RangeMoveStateMachine(phase: phase, cursor: 4242)
        let expected: [MovePhase: RangeMoveStateMachine.Action] = [
            .prepared: .prepareTarget, .capturing: .startCapture, .copying: .copyChunk(after: 4242), .catchingUp: .catchUp,
            .frozen: .freezeSource, .verified: .verify, .sourceMoved: .markSourceMoved, .targetActive: .activateTarget,
            .published: .publishMap(reload: true), .cleaning: .cleanSourceChunk, .done: .none, .cancelling: .undo, .cancelled: .none,
        ]
        #expect(m.resume() == expected[phase])
    }

    @Test("a crash at every phase, then cancel: allowed until the target may have taken a write, refused after", arguments: MovePhase.allCases)
    func cancelAfterCrash(_ phase: MovePhase) {
        var m = RangeMoveStateMachine(phase: phase)
        let allowed: Set<MovePhase> = [.prepared, .capturing, .copying, .catchingUp, .frozen, .verified, .sourceMoved, .cancelling, .cancelled]
        do {
            let action = try m.cancel()
            #expect(allowed.contains(phase), "cancel allowed in \(phase)")
            if phase == .cancelled { #expect(action == .none) } else {
                #expect(action == .undo && m.phase == .cancelling)
                #expect(m.stepDone() == .finish(error: m.cancelReason) && m.phase == .cancelled)
            }
        } catch {
            #expect(!allowed.contains(phase), "cancel refused in \(phase): \(error)")
            #expect(m.phase == phase, "a refused cancel changes nothing")
        }
    }

    @Test("a runner that lost its lease: the job rolls forward where the range is unwritable, waits for an operator elsewhere", arguments: MovePhase.allCases)
    func ownerLost(_ phase: MovePhase) {
        let m = RangeMoveStateMachine(phase: phase)
        switch m.ownerLost() {
        case .stopForOperator: #expect([.prepared, .capturing, .copying, .catchingUp, .cleaning].contains(phase))
        case .none: #expect(phase.finished)
        case let action:
            #expect(phase.rangeUnwritable || phase == .cancelling)
            #expect(action == m.resume())
        }
    }

    @Test("resume of a finished move is refused; of a stopped one redoes its step")
    func operatorResume() throws {
        var done = RangeMoveStateMachine(phase: .done)
        #expect(throws: RangeMoveStateMachine.Refusal.self) { try done.operatorResume() }
        var stopped = RangeMoveStateMachine(phase: .copying, cursor: 7)
        #expect(try stopped.operatorResume() == .copyChunk(after: 7))
    }

    @Test("a freeze whose lock wait keeps timing out is retried, then the move is undone so the range is writable again")
    func freezeTimeouts() {
        var m = RangeMoveStateMachine(phase: .frozen, limits: .init(freezeTries: 3))
        guard case .retry(.frozen, _) = m.freezeTimedOut(), case .retry(.frozen, _) = m.freezeTimedOut() else {
            Issue.record("not retried"); return
        }
        #expect(m.freezeTimedOut() == .undo)
        #expect(m.phase == .cancelling && m.cancelReason?.contains("could not be frozen") == true)
    }

    @Test("a checksum mismatch or a key collision undoes the move before the switch, naming it; after the switch it stops for an operator")
    func mismatch() {
        var m = RangeMoveStateMachine(phase: .verified)
        #expect(m.mismatch("account 17: balance 10.00 on node1, 11.00 on node4") == .undo)
        #expect(m.cancelReason?.contains("account 17") == true)
        var late = RangeMoveStateMachine(phase: .published)
        guard case .stopForOperator(let reason) = late.mismatch("x") else { Issue.record("not stopped"); return }
        #expect(reason.contains("x") && late.phase == .published)
    }

    @Test("failing steps: retried, then stopped before the freeze, undone while frozen, retried for ever once switched")
    func failures() {
        func afterFailures(_ phase: MovePhase) -> RangeMoveStateMachine.Action {
            var m = RangeMoveStateMachine(phase: phase, limits: .init(stepTries: 3))
            var last = RangeMoveStateMachine.Action.none
            for _ in 0..<10 {
                last = m.stepFailed("node4 did not answer")
                if case .retry = last { continue }
                return last
            }
            return last
        }
        guard case .stopForOperator = afterFailures(.copying) else { Issue.record("copying did not stop"); return }
        #expect(afterFailures(.frozen) == .undo)
        #expect(afterFailures(.sourceMoved) == .undo)
        guard case .retry(.targetActive, _) = afterFailures(.targetActive), case .retry(.published, _) = afterFailures(.published),
              case .retry(.cancelling, _) = afterFailures(.cancelling) else { Issue.record("gave up after the switch or while undoing"); return }
        guard case .stopForOperator = afterFailures(.cleaning) else { Issue.record("cleaning did not stop"); return }
        #expect(afterFailures(.done) == .none)
    }

    @Test("an event for another phase (a stale answer) changes nothing and repeats the phase's step")
    func staleEvents() {
        var m = RangeMoveStateMachine(phase: .copying, cursor: 10)
        #expect(m.sourceFrozen() == .copyChunk(after: 10) && m.phase == .copying)
        #expect(m.published(conflict: false) == .copyChunk(after: 10) && m.phase == .copying)
    }
}

@Suite("Rebalance planner (no servers)")
struct RebalancePlannerTests {
    static func map(_ ranges: [(String, Int64, String)]) throws -> RangeMap {
        let list = ranges.enumerated().map { i, r in
            ShardRange(id: r.0, lowerBound: r.1, upperBound: i + 1 < ranges.count ? ranges[i + 1].1 : nil, node: r.2)
        }
        return try RangeMap(name: "accounts", keyKind: "balance_cents", ranges: list)
    }

    @Test("a balanced cluster: nothing to do")
    func balanced() throws {
        let plan = RebalancePlanner().plan(.init(map: try Self.map([("a1", 0, "n1"), ("a2", 100, "n2")]), rows: ["a1": 1000, "a2": 1050], receivers: ["n1", "n2"]))
        #expect(plan.steps.isEmpty && plan.notes.isEmpty)
    }

    @Test("a new empty node gets ranges until every node is within the tolerance; oversized ranges are split first")
    func newNode() throws {
        let m = try Self.map([("a1", 0, "n1"), ("a2", 100, "n2"), ("a3", 1000, "n3")])
        let plan = RebalancePlanner().plan(.init(map: m, rows: ["a1": 90_000, "a2": 30_000, "a3": 30_000], receivers: ["n1", "n2", "n3", "n4"],
                                                 tolerance: 10, maxRangeRows: 50_000))
        #expect(plan.steps.first == .split(range: "a1", rows: 90_000, upper: "a1+"))
        #expect(plan.steps.contains { if case .move(_, _, "n4", _) = $0 { true } else { false } })
        let mean = 150_000 / 4
        for (node, rows) in plan.projected { #expect(abs(rows - mean) <= mean / 10 || plan.notes.contains { $0.hasPrefix(node) }, "\(node): \(rows)") }
        #expect(plan.projected.values.reduce(0, +) == 150_000)
    }

    @Test("a draining node's ranges all leave it")
    func drain() throws {
        let m = try Self.map([("a1", 0, "n1"), ("a2", 100, "n2"), ("a3", 1000, "n1")])
        let plan = RebalancePlanner().plan(.init(map: m, rows: ["a1": 10, "a2": 10, "a3": 10], receivers: ["n1", "n2", "n3"], draining: ["n1"]))
        #expect(plan.projected["n1"] == 0)
        #expect(plan.steps.filter { if case .move(_, "n1", _, _) = $0 { true } else { false } }.count == 2)
    }

    @Test("a range of one balance cannot be split: the plan says so instead of pretending")
    func unsplittable() throws {
        let m = try Self.map([("a1", 0, "n1"), ("a2", 100, "n2")])
        let plan = RebalancePlanner().plan(.init(map: m, rows: ["a1": 80_000, "a2": 1000], receivers: ["n1", "n2"], unsplittable: ["a1"]))
        #expect(plan.notes.contains { $0.contains("a1") && $0.contains("cannot be split") })
        #expect(!plan.steps.contains { if case .split = $0 { true } else { false } })
    }

    @Test("no receiver: nothing planned, said plainly")
    func noReceiver() throws {
        let plan = RebalancePlanner().plan(.init(map: try Self.map([("a1", 0, "n1")]), rows: ["a1": 5], receivers: ["n1"], draining: ["n1"]))
        #expect(plan.steps.isEmpty && plan.notes == ["no active node can take ranges: add a node first"])
    }
}
