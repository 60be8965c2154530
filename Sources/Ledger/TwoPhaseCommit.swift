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

/// Steps at which a test may stop the coordinator as if its process died (see ``CoordinatorCrash``).
public enum TwoPhaseStep: Sendable, Hashable {
    /// The participant on `node` is prepared.
    case prepared(node: String)
    /// The commit point's work and decision row are written, not yet committed.
    case beforeDecision
    /// The decision is committed; the participants are not yet told.
    case decided
}

/// A test's crash points: called at each ``TwoPhaseStep``; throwing ``CoordinatorCrash`` stops the
/// coordinator there. Only tests and the `serve` fault drill set one, through the `FaultInjection` SPI.
@_spi(FaultInjection) public typealias FaultInjector = @Sendable (TwoPhaseStep) async throws -> Void

/// Runs one atomic transaction across nodes: two-phase commit with presumed abort, where the
/// commit-point node's local COMMIT (with the decision row) is the decision (`docs/LEDGER.md`).
/// The protocol's decisions are ``TwoPhaseCommitStateMachine``'s; this performs them against the
/// nodes. After the decision the participants are committed; any that cannot be reached stay
/// prepared until the ``InDoubtResolver`` finishes them.
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

    /// How a run ended.
    public enum Outcome: Sendable {
        /// The decision is committed.
        case committed
        /// Nothing of this attempt is committed, and nothing will be; `cause` is the first failure —
        /// a branch's work's own error as it threw it, or the nodes' — and every branch this attempt
        /// started is rolled back (or detached for the resolver, which finds the attempt aborted).
        case rolledBack(cause: any Error)
        /// The decision could not be learnt (``LedgerError/Code/outcomeUnknown``).
        case unknown(LedgerError)
    }

    let connections: NodeConnections
    let logger: Logger
    let faults: FaultInjector?

    public init(connections: NodeConnections, logger: Logger) {
        self.init(connections: connections, logger: logger, faults: nil)
    }

    @_spi(FaultInjection) public init(connections: NodeConnections, logger: Logger, faults: FaultInjector?) {
        self.connections = connections
        self.logger = logger
        self.faults = faults
    }

    /// A leased connection and the branch's XA name, once its `XA START` succeeded.
    private struct Leased {
        var pool: MariaDBPool
        var connection: MariaDBConnection
        var xid: XID?
    }

    /// Runs the transaction with the commit point last. See ``run(decision:branches:commitPoint:decide:)``.
    public func run(decision: DecisionRecord, commitPoint: Branch, participants: [Branch]) async throws -> Outcome {
        try await run(decision: decision, branches: participants + [commitPoint], commitPoint: commitPoint.node)
    }

    /// Runs the transaction: `branches` in the order given (one per node); the branch on
    /// `commitPoint` as a local transaction committed, with the decision row, after every other
    /// branch is prepared. `decide` writes that row on the commit point's connection (by default a
    /// plain insert of `decision`; a caller may fold checks into the statement and throw to abort).
    /// Throws only ``CoordinatorCrash`` (a test's crash point); everything else is an ``Outcome``.
    public func run(decision: DecisionRecord, branches: [Branch], commitPoint: String,
                    decide: (@Sendable (MariaDBConnection) async throws -> Void)? = nil) async throws -> Outcome {
        let transferID = decision.transferID
        guard BranchName.validate(transferID: transferID, nodes: branches.map(\.node)),
              let point = branches.firstIndex(where: { $0.node == commitPoint }),
              branches.filter({ $0.node == commitPoint }).count == 1, Set(branches.map(\.node)).count == branches.count else {
            return .rolledBack(cause: LedgerError(.invalid, "invalid transaction \(transferID): one branch per node, one on the commit point, node ids of at most \(BranchName.maxNodeIDLength) characters"))
        }
        let decide = decide ?? { try await DecisionRows.insert(decision, state: .committed, on: $0) }
        var machine = TwoPhaseCommitStateMachine(branches: branches.count, commitPoint: point)
        var leased: [Int: Leased] = [:]
        var firstError: (any Error)?
        func note(_ error: any Error) { if firstError == nil { firstError = error } }

        return try await withThrowingTaskGroup(of: (index: Int, prepared: Bool, error: (any Error)?, crash: Bool).self) { prepares in
            var action = machine.start()
            while true {
                switch action {
                case .start(let i):
                    let branch = branches[i]
                    do {
                        let pool = try connections.pool(branch.node)
                        let connection: MariaDBConnection
                        do throws(MariaDBError) { connection = try await pool.lease() } catch {
                            if error.isConnectionBroken { connections.connectionFailed(branch.node) }
                            throw error
                        }
                        leased[i] = Leased(pool: pool, connection: connection)
                        if i == point {
                            try await onThread(connection) { try await connection.begin() }
                        } else {
                            let xid = BranchName.xid(transferID: transferID, attempt: decision.attempt, participant: branch.node, commitPoint: commitPoint)
                            try await onThread(connection) { try await connection.xaStart(xid) }
                            leased[i]?.xid = xid
                        }
                        action = machine.started(i)
                    } catch {
                        note(error)
                        action = machine.startFailed(i)
                    }
                case .work(let i):
                    do {
                        let connection = leased[i]!.connection, work = branches[i].work
                        try await onThread(connection) { try await work(connection) }
                        action = machine.workDone(i)
                    } catch {
                        note(error)
                        action = machine.workFailed(i)
                    }
                case .prepareInBackground(let i):
                    let connection = leased[i]!.connection, xid = leased[i]!.xid!, node = branches[i].node, faults = self.faults
                    prepares.addTask(executorPreference: connection.executor) {
                        do {
                            try await connection.xaEnd(xid)
                            try await connection.xaPrepare(xid)
                        } catch {
                            return (i, false, error, false)
                        }
                        do { try await faults?(.prepared(node: node)) } catch { return (i, true, nil, error is CoordinatorCrash) }
                        return (i, true, nil, false)
                    }
                    action = machine.launched()
                case .writeDecision:
                    do {
                        let connection = leased[point]!.connection
                        try await onThread(connection) { try await decide(connection) }
                        action = machine.decisionWritten()
                    } catch {
                        note(error)
                        action = machine.decisionFailed()
                    }
                case .awaitPrepare:
                    guard let answer = try await prepares.next() else { preconditionFailure("the state machine awaits a prepare that was never started") }
                    if answer.crash {
                        action = machine.crashed()
                        continue
                    }
                    if let error = answer.error { note(error) }
                    action = machine.prepareAnswered(answer.index, prepared: answer.prepared)
                case .commitDecision:
                    if await crashes(at: .beforeDecision) { action = machine.crashed(); continue }
                    do {
                        let connection = leased[point]!.connection
                        try await onThread(connection) { try await connection.commit() }
                        if await crashes(at: .decided) { action = machine.crashed(); continue }
                        action = machine.decisionCommitted()
                    } catch {
                        note(error)
                        // A server's answer means the local transaction is gone; a lost connection
                        // leaves the decision to be asked for.
                        action = machine.decisionCommitFailed(definite: (error as? MariaDBError).map { !$0.isConnectionBroken } ?? false)
                    }
                case .learnDecision:
                    do {
                        let decided = try await learnDecision(transferID, attempt: decision.attempt, commitPoint: commitPoint, after: firstError!)
                        if decided == .aborted {
                            firstError = LedgerError(.aborted, "transaction \(transferID) was rolled back at the commit point", node: commitPoint, underlying: firstError)
                        }
                        action = machine.learned(decided)
                    } catch {
                        firstError = error
                        action = machine.learnFailed()
                    }
                case .commitParticipant(let i):
                    do {
                        let connection = leased[i]!.connection, xid = leased[i]!.xid!
                        try await onThread(connection) { try await connection.xaCommit(xid) }
                        action = machine.participantCommitted(i)
                    } catch {
                        logger.warning("participant not committed yet; the in-doubt resolver will finish it",
                                       metadata: ["transfer_id": "\(transferID)", "node": "\(branches[i].node)", "error": "\(error)"])
                        action = machine.participantCommitFailed(i)
                    }
                case .detach(let i):
                    // A prepared branch stays attached to its session: close it, or no other session
                    // (the resolver) can finish it, and the pool would hand out a session stuck in XA.
                    await leased[i]?.connection.close()
                    action = machine.detached(i)
                case .rollBack(let commitPointToo, let toEnd):
                    if commitPointToo, let c = leased[point]?.connection, !c.isBroken { _ = try? await c.rollback() }
                    for item in toEnd {
                        // The server rolls back an unprepared branch of a lost connection by itself.
                        guard let branch = leased[item.branch], let xid = branch.xid, !branch.connection.isBroken else { continue }
                        if !item.prepared { _ = try? await branch.connection.xaEnd(xid) }
                        do { try await branch.connection.xaRollback(xid) } catch {
                            await branch.connection.close() // detached: the resolver finds this attempt aborted
                            logger.warning("XA ROLLBACK failed; the in-doubt resolver will finish it",
                                           metadata: ["transfer_id": "\(transferID)", "node": "\(branches[item.branch].node)", "error": "\(error)"])
                        }
                    }
                    action = machine.rolledBack()
                case .abandon:
                    // Without a word to the servers, as a crashed process: prepared branches detach.
                    for branch in leased.values { await branch.connection.close() }
                    action = machine.abandoned()
                case .finish(let outcome):
                    for branch in leased.values { branch.pool.release(branch.connection) }
                    switch outcome {
                    case .committed: return .committed
                    case .crashed: throw CoordinatorCrash()
                    case .unknown:
                        return .unknown(firstError as? LedgerError ?? LedgerError(.outcomeUnknown, "the outcome of \(transferID) is unknown", node: commitPoint))
                    case .rolledBack:
                        return .rolledBack(cause: firstError ?? LedgerError(.aborted, "transaction \(transferID) was rolled back"))
                    }
                }
            }
        }
    }

    /// Runs `body` on the connection's own thread: its driver calls then run inline instead of each
    /// hopping to that thread and back (as the single-node path's local transactions do).
    private func onThread<T>(_ connection: MariaDBConnection, _ body: () async throws -> T) async throws -> T {
        try await withTaskExecutorPreference(connection.executor) { try await body() }
    }

    /// Asks the test's crash point, if any, whether the coordinator dies at `step`.
    private func crashes(at step: TwoPhaseStep) async -> Bool {
        do { try await faults?(step) } catch { return error is CoordinatorCrash }
        return false
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
}
