import Logging
import MariaDB

/// The decision row of a distributed transaction (`transfers`), written on the commit-point node in
/// the same local transaction as that node's own work: its COMMIT is the decision.
public struct DecisionRecord: Sendable {
    public var transferID: String
    public var kind: String
    public var fromAccount: Int64?
    public var toAccount: Int64?
    public var amountMinorUnits: Int64
    /// A fingerprint of the request (64 hex digits, from `Bank`), to refuse a reused idempotency key
    /// with a different body. Not a secret and not cryptographic: it only tells requests apart.
    public var requestHash: String
    public var participants: [String]
    /// The attempt whose branches and postings this decision commits (a new one for every try).
    public var attempt: AttemptID

    public init(transferID: String, kind: String, fromAccount: Int64? = nil, toAccount: Int64? = nil,
                amountMinorUnits: Int64, requestHash: String, participants: [String], attempt: AttemptID = .random()) {
        self.transferID = transferID
        self.attempt = attempt
        self.kind = kind
        self.fromAccount = fromAccount
        self.toAccount = toAccount
        self.amountMinorUnits = amountMinorUnits
        self.requestHash = requestHash
        self.participants = participants
    }
}

/// Steps at which a test hook may stop the coordinator (see ``CoordinatorCrash``).
public enum TwoPhaseStep: Sendable, Hashable {
    /// The participant on `node` is prepared.
    case prepared(node: String)
    /// The commit point's work and decision row are written, not yet committed.
    case beforeDecision
    /// The decision is committed; the participants are not yet told.
    case decided
}

/// Runs one atomic transaction across nodes: two-phase commit with presumed abort, where the
/// commit-point node's local COMMIT (with the decision row) is the decision (`docs/LEDGER.md`).
///
/// Participants run in the order given (callers visit nodes in one global order, so that concurrent
/// transactions cannot wait on each other across nodes), each as an XA branch
/// that is prepared before the commit point commits (its prepare overlaps the next branch's work).
/// After the decision the participants are
/// committed; any that cannot be reached stay prepared until the ``InDoubtResolver`` finishes them.
public struct TwoPhaseCommit: Sendable {
    public typealias Work = @Sendable (MariaDBConnection) async throws -> Void

    public struct Branch: Sendable {
        public var node: String
        public var work: Work
        public init(node: String, work: @escaping Work) {
            self.node = node
            self.work = work
        }
    }

    let connections: NodeConnections
    let logger: Logger
    let hook: (@Sendable (TwoPhaseStep) async throws -> Void)?

    public init(connections: NodeConnections, logger: Logger, hook: (@Sendable (TwoPhaseStep) async throws -> Void)? = nil) {
        self.connections = connections
        self.logger = logger
        self.hook = hook
    }

    /// A connection this attempt leased. `xid` is set only once this attempt's `XA START` succeeded:
    /// a branch is rolled back only by the attempt that started it (any session *can* roll back any
    /// detached branch, which is how a retry once undid a committed transfer).
    private struct Leased {
        var node: String
        var pool: MariaDBPool
        var connection: MariaDBConnection
        var isCommitPoint: Bool
        var xid: XID?
        var prepared = false
    }

    /// Runs the transaction with the commit point last. See ``run(decision:branches:commitPoint:)``.
    public func run(decision: DecisionRecord, commitPoint: Branch, participants: [Branch]) async throws {
        try await run(decision: decision, branches: participants + [commitPoint], commitPoint: commitPoint.node)
    }

    /// Runs the transaction. `branches` run in the order given (one per node); the branch on
    /// `commitPoint` runs as a local transaction opened at its place in that order and committed,
    /// with the decision row, after every other branch is prepared. `decide` writes that row on the
    /// commit point's connection (by default a plain insert of `decision`; a caller may fold checks
    /// into the statement and throw to abort). It runs once every branch's work is done (while the
    /// last prepares finish), never earlier: a retry holding an uncommitted decision row while it
    /// waits for a prepared branch's locks would block the resolver that must decide that branch.
    /// The commit comes only after every prepare answered. Returns when the decision is committed;
    /// throws `.aborted` when everything was rolled back, `.outcomeUnknown` when the decision could
    /// not be learnt.
    public func run(decision: DecisionRecord, branches: [Branch], commitPoint: String,
                    decide: (@Sendable (MariaDBConnection) async throws -> Void)? = nil) async throws {
        let transferID = decision.transferID
        let attempt = decision.attempt
        guard BranchName.validate(transferID: transferID, nodes: branches.map(\.node)),
              branches.filter({ $0.node == commitPoint }).count == 1, Set(branches.map(\.node)).count == branches.count else {
            throw LedgerError(.aborted, "invalid transaction \(transferID): one branch per node, one on the commit point, names within XA limits")
        }
        var leased: [Leased] = []
        do {
            let decide = decide ?? { try await DecisionRows.insert(decision, state: .committed, on: $0) }
            try await phaseOne(branches, transferID: transferID, attempt: attempt, commitPoint: commitPoint, decide: decide, leased: &leased)
            try await hook?(.beforeDecision)
        } catch is CoordinatorCrash {
            await abandon(leased)
            throw CoordinatorCrash()
        } catch {
            await rollBack(leased, transferID: transferID)
            release(leased)
            // A node known to be down is named as such (503 node_unavailable, not a vague abort).
            if let e = error as? LedgerError, e.code == .nodeUnavailable { throw e }
            throw LedgerError(.aborted, "transaction \(transferID) was rolled back: \(error)", underlying: error)
        }

        let point = leased.first { $0.isCommitPoint }!
        do {
            try await point.connection.commit()
        } catch {
            // A definite server error means the local transaction is gone; a lost connection leaves
            // the decision unknown until the commit point is asked.
            let decided: DecisionState
            do {
                decided = try await learnDecision(transferID, attempt: attempt, commitPoint: commitPoint, after: error)
            } catch {
                // Outcome unknown: hang up on the participants, so their prepared branches detach
                // from our sessions and the in-doubt resolver can finish them from the decision.
                await abandon(leased)
                throw error
            }
            if decided == .aborted {
                await rollBack(leased.filter { !$0.isCommitPoint }, transferID: transferID)
                release(leased)
                throw LedgerError(.aborted, "transaction \(transferID) was rolled back at the commit point: \(error)", node: commitPoint, underlying: error)
            }
        }
        do {
            try await hook?(.decided)
        } catch is CoordinatorCrash {
            await abandon(leased)
            throw CoordinatorCrash()
        }
        // Phase two: tell the participants. The decision stands whatever happens here.
        for branch in leased where branch.prepared {
            do {
                try await branch.connection.xaCommit(branch.xid!)
            } catch {
                // A prepared branch stays attached to its session: close it, or no other session
                // (the resolver) can commit it, and the pool would hand out a session stuck in XA.
                await branch.connection.close()
                logger.warning("participant not committed yet; the in-doubt resolver will finish it",
                               metadata: ["transfer_id": "\(transferID)", "node": "\(branch.node)", "error": "\(error)"])
            }
        }
        release(leased)
    }

    /// Phase one: runs every branch's work in order, each participant's inside its XA branch,
    /// prepares the participants and writes the decision row (uncommitted). A participant's `XA END`
    /// and `XA PREPARE` (a log flush) run while the next branch does its work, or while the decision
    /// row is written: the participant's locks are already held, so the global lock order is kept,
    /// and the row is written only when every branch holds its locks (waiting for locks while
    /// holding it could block the resolver). This returns only when every prepare has answered;
    /// every branch that was started is in `leased` when it returns or throws; a `CoordinatorCrash`
    /// from the hook wins over other errors.
    private func phaseOne(_ branches: [Branch], transferID: String, attempt: AttemptID, commitPoint: String,
                          decide: @Sendable (MariaDBConnection) async throws -> Void, leased: inout [Leased]) async throws {
        typealias Prepared = (index: Int, prepared: Bool, error: (any Error)?)
        let hook = self.hook
        var failures: [any Error] = []
        await withTaskGroup(of: Prepared.self) { prepares in
            do {
                for branch in branches {
                    let pool = try connections.pool(branch.node)
                    let connection: MariaDBConnection
                    do throws(MariaDBError) { connection = try await pool.lease() } catch {
                        if error.isConnectionBroken { connections.connectionFailed(branch.node) }
                        throw error
                    }
                    if branch.node == commitPoint {
                        // The commit point: a local transaction, kept open until the others are prepared.
                        leased.append(Leased(node: branch.node, pool: pool, connection: connection, isCommitPoint: true))
                        try await connection.begin()
                        try await branch.work(connection)
                        continue
                    }
                    let xid = BranchName.xid(transferID: transferID, attempt: attempt, participant: branch.node, commitPoint: commitPoint)
                    leased.append(Leased(node: branch.node, pool: pool, connection: connection, isCommitPoint: false))
                    try await connection.xaStart(xid)
                    leased[leased.count - 1].xid = xid
                    try await branch.work(connection)
                    let index = leased.count - 1, node = branch.node
                    prepares.addTask {
                        var prepared = false
                        do {
                            try await connection.xaEnd(xid)
                            try await connection.xaPrepare(xid)
                            prepared = true
                            try await hook?(.prepared(node: node))
                            return (index, true, nil)
                        } catch {
                            return (index, prepared, error)
                        }
                    }
                }
                try await decide(leased.first { $0.isCommitPoint }!.connection)
            } catch {
                failures.append(error)
            }
            for await result in prepares {
                leased[result.index].prepared = result.prepared
                if let error = result.error { failures.append(error) }
            }
        }
        if failures.contains(where: { $0 is CoordinatorCrash }) { throw CoordinatorCrash() }
        if let first = failures.first { throw first }
    }

    /// After a failed COMMIT on `commitPoint` (a two-phase commit's, or a local transaction's): the
    /// decision that stands there. A definite server error means nothing was committed; a lost
    /// connection is settled by the decision row — where there is none, an `aborted` row is recorded
    /// (the primary key arbitrates against a commit still in flight). When the node cannot be asked
    /// for ~2 s the outcome is unknown, and said so.
    func learnDecision(_ transferID: String, attempt: AttemptID, commitPoint: String, after error: any Error) async throws -> DecisionState {
        if let e = error as? MariaDBError, !e.isConnectionBroken { return .aborted }
        for asked in 0..<10 {
            do {
                return try await connections.withConnection(commitPoint) { try await DecisionRows.decideIfAbsent(transferID, attempt: attempt, on: $0) }
            } catch {
                logger.warning("cannot learn the decision yet", metadata: ["transfer_id": "\(transferID)", "attempt": "\(attempt)", "asked": "\(asked)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        throw LedgerError(.outcomeUnknown, "the commit of \(transferID) on \(commitPoint) lost its answer and \(commitPoint) does not answer; retry with the same Idempotency-Key later to learn the outcome (prepared branches are finished by the in-doubt resolver)",
                          node: commitPoint, underlying: error)
    }

    /// Rolls back what was started: the commit point's local transaction and every XA branch.
    private func rollBack(_ leased: [Leased], transferID: String) async {
        for branch in leased {
            let c = branch.connection
            guard !c.isBroken else { continue } // the server rolls back an unprepared branch of a lost connection
            if branch.isCommitPoint {
                _ = try? await c.rollback()
            } else if let xid = branch.xid {
                if !branch.prepared { _ = try? await c.xaEnd(xid) }
                do { try await c.xaRollback(xid) } catch {
                    await c.close() // detach the branch (see phase two)
                    logger.warning("XA ROLLBACK failed; the in-doubt resolver will finish it",
                                   metadata: ["transfer_id": "\(transferID)", "node": "\(branch.node)", "error": "\(error)"])
                }
            } else {
                // Its XA START failed: there is no branch of ours on that session to end.
                continue
            }
        }
    }

    /// Drops every connection without a word to the servers, as a crashed process would.
    private func abandon(_ leased: [Leased]) async {
        for branch in leased {
            await branch.connection.close()
            branch.pool.release(branch.connection)
        }
    }

    private func release(_ leased: [Leased]) {
        for branch in leased { branch.pool.release(branch.connection) }
    }
}
