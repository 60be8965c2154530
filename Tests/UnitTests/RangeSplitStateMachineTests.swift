import Moves
import Testing

@Suite("A range split's decisions (no servers)")
struct RangeSplitStateMachineTests {
    @Test("the happy path of an accounts split visits every phase in order; a directory split skips pointing")
    func happyPath() {
        var m = RangeSplitStateMachine(pointsDirectory: true)
        var seen: [SplitPhase] = [m.phase]
        func note() { if seen.last != m.phase { seen.append(m.phase) } }
        #expect(m.resume() == .addRange)
        #expect(m.rangeAdded() == .publishMap(reload: true)); note()
        #expect(m.published(conflict: true) == .publishMap(reload: true))
        #expect(m.published(conflict: false) == .relabelChunk(after: nil)); note()
        #expect(m.chunkRelabeled(lastKey: 40, more: true) == .relabelChunk(after: 40))
        #expect(m.cursor == 40)
        #expect(m.chunkRelabeled(lastKey: 55, more: false) == .narrow); note()
        #expect(m.cursor == nil, "each phase starts its own cursor")
        #expect(m.narrowed() == .pointChunk(after: nil)); note()
        #expect(m.chunkPointed(lastKey: 9, more: true) == .pointChunk(after: 9))
        #expect(m.chunkPointed(lastKey: nil, more: false) == .finish(error: nil)); note()
        #expect(seen == SplitPhase.forward)

        var d = RangeSplitStateMachine(phase: .narrowing, pointsDirectory: false)
        #expect(d.narrowed() == .finish(error: nil))
        #expect(d.phase == .done)
    }

    @Test("a runner taking over resumes the recorded phase at its cursor", arguments: SplitPhase.allCases)
    func resumeEveryPhase(_ phase: SplitPhase) throws {
        var m = RangeSplitStateMachine(phase: phase, cursor: 77, pointsDirectory: true)
        if phase.finished {
            #expect(throws: RangeSplitStateMachine.Refusal.self) { try m.operatorResume() }
            return
        }
        let expected: RangeSplitStateMachine.Action = switch phase {
        case .prepared: .addRange
        case .publishing: .publishMap(reload: true)
        case .relabeling: .relabelChunk(after: 77)
        case .narrowing: .narrow
        case .pointing: .pointChunk(after: 77)
        case .cancelling: .undo
        case .done, .cancelled: .none
        }
        #expect(try m.operatorResume() == expected)
        // An event of another phase (a stale answer) changes nothing: the phase's own step again.
        if phase != .relabeling { #expect(m.chunkRelabeled(lastKey: 1, more: false) == expected) }
    }

    @Test("cancel is allowed until the map names the new range, refused after; undo ends cancelled with the reason")
    func cancel() throws {
        for phase in [SplitPhase.prepared, .publishing] {
            var m = RangeSplitStateMachine(phase: phase, pointsDirectory: true)
            #expect(try m.cancel() == .undo)
            #expect(m.undone() == .finish(error: "cancelled by an operator"))
            #expect(m.phase == .cancelled)
        }
        for phase in [SplitPhase.relabeling, .narrowing, .pointing, .done] {
            var m = RangeSplitStateMachine(phase: phase, pointsDirectory: true)
            #expect(throws: RangeSplitStateMachine.Refusal.self) { try m.cancel() }
            #expect(m.phase == phase)
        }
    }

    @Test("a conflict undoes a split that can still be undone and stops one that cannot for an operator")
    func conflict() {
        var early = RangeSplitStateMachine(phase: .prepared, pointsDirectory: true)
        #expect(early.conflict("the range changed") == .undo)
        #expect(early.undone() == .finish(error: "the range changed"))
        var late = RangeSplitStateMachine(phase: .narrowing, pointsDirectory: true)
        #expect(late.conflict("the range changed") == .stopForOperator(reason: "the range changed"))
        #expect(late.phase == .narrowing)
    }

    @Test("failed steps are retried with growing pauses, then stop for an operator; undoing is retried for as long as it takes")
    func failures() {
        var m = RangeSplitStateMachine(phase: .relabeling, pointsDirectory: true, limits: .init(stepTries: 3, narrowTries: 2))
        #expect(m.stepFailed("down") == .retry(.relabeling, after: .milliseconds(200)))
        #expect(m.stepFailed("down") == .retry(.relabeling, after: .milliseconds(400)))
        guard case .stopForOperator(let reason) = m.stepFailed("down") else { Issue.record("no stop"); return }
        #expect(reason.contains("relabeling failed 3 times: down"))
        // A chunk that succeeds resets the count.
        _ = m.stepFailed("x")
        _ = m.chunkRelabeled(lastKey: 5, more: true)
        #expect(m.stepFailed("x") == .retry(.relabeling, after: .milliseconds(200)))

        var n = RangeSplitStateMachine(phase: .narrowing, pointsDirectory: true, limits: .init(stepTries: 3, narrowTries: 2))
        #expect(n.narrowTimedOut() == .retry(.narrowing, after: .milliseconds(50)))
        guard case .stopForOperator = n.narrowTimedOut() else { Issue.record("no stop"); return }

        var p = RangeSplitStateMachine(phase: .pointing, pointsDirectory: true, limits: .init(stepTries: 2, narrowTries: 2, busyTries: 3))
        #expect(p.directoryBusy("d1") == .retry(.pointing, after: .milliseconds(200)))
        #expect(p.directoryBusy("d1") == .retry(.pointing, after: .milliseconds(200)))
        _ = p.chunkPointed(lastKey: 3, more: true) // a chunk that went through starts the count again
        #expect(p.directoryBusy("d1") == .retry(.pointing, after: .milliseconds(200)))
        #expect(p.directoryBusy("d1") == .retry(.pointing, after: .milliseconds(200)))
        guard case .stopForOperator(let why) = p.directoryBusy("d1") else { Issue.record("no stop"); return }
        #expect(why.contains("d1"))

        var c = RangeSplitStateMachine(phase: .cancelling, pointsDirectory: true, limits: .init(stepTries: 1, narrowTries: 1))
        for _ in 0..<10 { guard case .retry(.cancelling, _) = c.stepFailed("down") else { Issue.record("undo gave up"); return } }
    }
}
