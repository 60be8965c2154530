import Ledger
import MariaDB
import Testing

@Suite("In-doubt resolver bookkeeping (no servers)")
struct InDoubtTrackerTests {
    let a = BranchName.xid(transferID: "t1", attempt: AttemptID(rawValue: "0123456789ab")!, participant: "node2", commitPoint: "node1")
    let b = BranchName.xid(transferID: "t2", attempt: AttemptID(rawValue: "ba9876543210")!, participant: "node2", commitPoint: "node3")
    let foreign = XID(gtrid: "other-app", bqual: "x", formatID: 1)

    @Test("a branch is due once it has been seen prepared for the minimum age, not before")
    func dueAfterMinimumAge() {
        var tracker = InDoubtTracker(minimumAge: .seconds(2))
        let t0 = ContinuousClock.now
        #expect(tracker.listed([a, foreign], on: "node2", at: t0).isEmpty)
        #expect(tracker.listed([a], on: "node2", at: t0 + .seconds(1)).isEmpty)
        #expect(tracker.listed([a, b], on: "node2", at: t0 + .seconds(2)).map(\.xid) == [a])
        #expect(tracker.listed([a, b], on: "node2", at: t0 + .seconds(4)).map(\.xid) == [a, b])
    }

    @Test("a branch that went away and came back starts its age again; other nodes keep theirs")
    func forgetsWhatIsGone() {
        var tracker = InDoubtTracker(minimumAge: .seconds(2))
        let t0 = ContinuousClock.now
        _ = tracker.listed([a], on: "node2", at: t0)
        _ = tracker.listed([a], on: "node3", at: t0)
        _ = tracker.listed([], on: "node2", at: t0 + .seconds(1)) // finished by its coordinator
        #expect(tracker.listed([a], on: "node2", at: t0 + .seconds(3)).isEmpty)
        #expect(tracker.listed([a], on: "node3", at: t0 + .seconds(3)).map(\.node) == ["node3"])
    }

    @Test("a node that cannot be listed keeps its branches' ages; a resolved branch and a removed node are forgotten")
    func listFailuresAndRemovals() {
        var tracker = InDoubtTracker(minimumAge: .seconds(2))
        let t0 = ContinuousClock.now
        _ = tracker.listed([a, b], on: "node2", at: t0)
        // node2 does not answer for a while: nothing is fed for it; the ages stand.
        let due = tracker.listed([a, b], on: "node2", at: t0 + .seconds(5))
        #expect(due.count == 2)
        tracker.resolved(due[0])
        #expect(tracker.listed([a, b], on: "node2", at: t0 + .seconds(5)).map(\.xid) == [b])
        tracker.keep(nodes: ["node1"])
        #expect(tracker.listed([b], on: "node2", at: t0 + .seconds(6)).isEmpty)
    }
}
