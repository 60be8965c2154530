/// One attempt's two-phase commit as a state machine without I/O: it takes what happened (events) and
/// answers what to do next (an ``Action``). ``TwoPhaseCommit`` performs the actions against the nodes
/// and feeds the outcomes back; the tests drive it through every abort, crash and outcome-unknown path
/// without a server.
///
/// The protocol (presumed abort, the commit point's local COMMIT with the decision row is the decision):
/// branches run in the order given (callers pass one global node order, so that two transactions
/// cannot wait on each other across nodes); the commit point's branch is a local transaction, every
/// other branch an XA branch whose `XA END`/`XA PREPARE` runs in the background while the next branch
/// works (its locks are held already). The decision row is written when every branch has done its
/// work, and committed only when every prepare has answered. An attempt rolls back only what it
/// started itself: any session may end any detached XA branch, so a branch whose `XA START` failed
/// (another attempt's, say) is never touched.
public struct TwoPhaseCommitStateMachine: Sendable {
    /// What the I/O shell does next.
    public enum Action: Sendable, Hashable {
        /// Lease a connection to branch `i`'s node and open its transaction (`BEGIN` on the commit
        /// point, `XA START` elsewhere).
        case start(Int)
        /// Run branch `i`'s work in its transaction.
        case work(Int)
        /// `XA END` and `XA PREPARE` of branch `i` in the background; then report ``launched()``.
        case prepareInBackground(Int)
        /// Insert the decision row on the commit point's open transaction.
        case writeDecision
        /// Wait for the next background prepare to answer.
        case awaitPrepare
        /// COMMIT the commit point's transaction: the decision.
        case commitDecision
        /// The COMMIT lost its answer: ask the commit point which decision stands for this attempt.
        case learnDecision
        /// `XA COMMIT` branch `i`.
        case commitParticipant(Int)
        /// Close branch `i`'s session: its branch stays prepared, detached, for the resolver.
        case detach(Int)
        /// Roll back what this attempt started: the commit point's local transaction when
        /// `commitPoint`, and these XA branches (`XA END` first where not prepared). A branch whose
        /// rollback fails is detached for the resolver, which finds this attempt aborted.
        case rollBack(commitPoint: Bool, branches: [RollBack])
        /// Close every session without a word to the servers, as a killed process would (a test's
        /// crash, or an outcome that cannot be learnt: prepared branches go to the resolver).
        case abandon
        /// Return the connections and report.
        case finish(Outcome)
    }

    public struct RollBack: Sendable, Hashable {
        public var branch: Int
        public var prepared: Bool
        public init(branch: Int, prepared: Bool) {
            self.branch = branch
            self.prepared = prepared
        }
    }

    public enum Outcome: Sendable, Hashable {
        /// The decision is committed (participants committed, or detached for the resolver to commit).
        case committed
        /// Nothing of this attempt is committed, and nothing will be.
        case rolledBack
        /// The commit point could not be asked after its COMMIT lost its answer.
        case unknown
        /// A test stopped the coordinator as if its process died.
        case crashed
    }

    private enum Branch: Sendable, Hashable {
        case waiting, started, worked, preparing, prepared
        /// `XA END` or `XA PREPARE` failed: the branch is ended, not prepared (or its session is gone).
        case prepareFailed
    }

    private enum Phase: Sendable, Hashable {
        case running(Int)
        /// After a failure: waiting for outstanding prepares, then rolling back.
        case failing
        case decisionWritten
        case committing
        case learning
        case phaseTwo
        case rollingBack
        case abandoning(Outcome)
        case done
    }

    private let commitPoint: Int
    private var branches: [Branch]
    private var phase: Phase

    /// - Parameters:
    ///   - branches: the number of branches, in the order they run.
    ///   - commitPoint: the index of the commit point's branch.
    public init(branches: Int, commitPoint: Int) {
        precondition(branches > 0 && (0..<branches).contains(commitPoint))
        self.commitPoint = commitPoint
        self.branches = Array(repeating: .waiting, count: branches)
        self.phase = .running(0)
    }

    public mutating func start() -> Action { .start(0) }

    // MARK: phase one

    /// Branch `i`'s transaction is open.
    public mutating func started(_ i: Int) -> Action {
        branches[i] = .started
        return .work(i)
    }

    /// Branch `i`'s connection or transaction could not be opened: nothing of it to end.
    public mutating func startFailed(_ i: Int) -> Action {
        fail()
    }

    /// Branch `i`'s work is done, its locks held.
    public mutating func workDone(_ i: Int) -> Action {
        branches[i] = .worked
        guard i != commitPoint else { return next(after: i) }
        branches[i] = .preparing
        return .prepareInBackground(i)
    }

    /// Branch `i`'s work failed (its transaction is still open and rolled back with the rest).
    public mutating func workFailed(_ i: Int) -> Action {
        fail()
    }

    /// The background prepare of the last branch that asked for one is running.
    public mutating func launched() -> Action {
        guard case .running(let i) = phase else { return .awaitPrepare }
        return next(after: i)
    }

    private mutating func next(after i: Int) -> Action {
        if i + 1 < branches.count {
            phase = .running(i + 1)
            return .start(i + 1)
        }
        // Every branch holds its locks: only now the decision row (a row written earlier, held while
        // waiting for locks, would block the resolver of an earlier attempt's prepared branch).
        phase = .running(branches.count)
        return .writeDecision
    }

    public mutating func decisionWritten() -> Action {
        phase = .decisionWritten
        return afterPrepares()
    }

    public mutating func decisionFailed() -> Action {
        fail()
    }

    /// A background prepare answered.
    public mutating func prepareAnswered(_ i: Int, prepared: Bool) -> Action {
        branches[i] = prepared ? .prepared : .prepareFailed
        if !prepared, phase != .failing { phase = .failing }
        return afterPrepares()
    }

    private var preparing: Bool { branches.contains(.preparing) }

    private mutating func fail() -> Action {
        phase = .failing
        return afterPrepares()
    }

    private mutating func afterPrepares() -> Action {
        if preparing { return .awaitPrepare }
        switch phase {
        case .failing:
            phase = .rollingBack
            return .rollBack(commitPoint: branches[commitPoint] != .waiting, branches: startedParticipants())
        case .decisionWritten:
            phase = .committing
            return .commitDecision
        default:
            return .awaitPrepare
        }
    }

    private func startedParticipants() -> [RollBack] {
        branches.indices.compactMap { i in
            guard i != commitPoint, branches[i] != .waiting else { return nil }
            return RollBack(branch: i, prepared: branches[i] == .prepared)
        }
    }

    // MARK: the decision

    public mutating func decisionCommitted() -> Action {
        phase = .phaseTwo
        return nextParticipantCommit(after: -1)
    }

    /// The COMMIT failed. `definite`: the server answered with an error, so nothing was committed;
    /// otherwise the connection was lost and the decision must be asked for.
    public mutating func decisionCommitFailed(definite: Bool) -> Action {
        guard definite else {
            phase = .learning
            return .learnDecision
        }
        return abortedAtCommitPoint()
    }

    /// What the commit point says stands for this attempt.
    public mutating func learned(_ decision: DecisionState) -> Action {
        switch decision {
        case .committed: decisionCommitted()
        case .aborted: abortedAtCommitPoint()
        }
    }

    /// The commit point could not be asked: the outcome is unknown; the prepared branches are left
    /// to the resolver, which reads the decision when the node is back.
    public mutating func learnFailed() -> Action {
        phase = .abandoning(.unknown)
        return .abandon
    }

    private mutating func abortedAtCommitPoint() -> Action {
        phase = .rollingBack
        return .rollBack(commitPoint: false, branches: startedParticipants())
    }

    // MARK: phase two

    public mutating func participantCommitted(_ i: Int) -> Action {
        nextParticipantCommit(after: i)
    }

    /// `XA COMMIT` of branch `i` failed: the decision stands; the branch is detached so that the
    /// resolver (which no other session can help while this one holds it) commits it.
    public mutating func participantCommitFailed(_ i: Int) -> Action {
        .detach(i)
    }

    public mutating func detached(_ i: Int) -> Action {
        nextParticipantCommit(after: i)
    }

    private mutating func nextParticipantCommit(after i: Int) -> Action {
        if let next = branches.indices.first(where: { $0 > i && branches[$0] == .prepared }) { return .commitParticipant(next) }
        phase = .done
        return .finish(.committed)
    }

    // MARK: endings

    public mutating func rolledBack() -> Action {
        phase = .done
        return .finish(.rolledBack)
    }

    /// A test stopped the coordinator here, as if its process died.
    public mutating func crashed() -> Action {
        phase = .abandoning(.crashed)
        return .abandon
    }

    public mutating func abandoned() -> Action {
        guard case .abandoning(let outcome) = phase else { return .finish(.crashed) }
        phase = .done
        return .finish(outcome)
    }
}
