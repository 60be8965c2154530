/// Where a range move is. Stored as the job record's `phase`; each phase names the step being
/// worked on, so a runner that takes a job over (its owner died) does that step again — every step
/// is idempotent on the nodes (a CAS on the ownership row's state and epoch, upserts, deletes).
public enum MovePhase: String, Sendable, Hashable, Codable, CaseIterable {
    /// The target is migrated and gets the range's ownership row as `incoming`, epoch + 1.
    case prepared
    /// The source's ownership row gets `capture = 1` (under its exclusive lock: in-flight writes end
    /// first, none fails), so every later change to the range's rows is logged in `range_changes`.
    case capturing
    /// Rows copied to the target in chunks of keys (accounts, their postings, the decisions they are
    /// home of), by upsert; the change log covers whatever changes behind the copy.
    case copying
    /// The logged keys reconciled until few are pending; immutable history compared.
    case catchingUp = "catching_up"
    /// The source's ownership row is set `frozen` (a short lock wait, retried): writes to the range
    /// now wait for the map to change (`ledger.move_wait_ms`).
    case frozen
    /// The last changes applied; count, sum and checksum of the range's rows and recent history equal
    /// on both nodes.
    case verified
    /// The source's row leaves `frozen` for `moved` (CAS on state and epoch).
    case sourceMoved = "source_moved"
    /// The target's row becomes `active`: from here the target may take writes, and the move only
    /// goes forward.
    case targetActive = "target_active"
    /// The map names the target (etcd CAS; reloaded and retried on conflict).
    case published
    /// The source's copies deleted in chunks; its moved decision rows only once no prepared branch
    /// anywhere names the source as their commit point and 30 s have passed.
    case cleaning
    case done
    /// Being undone: the source active again without capture, the target's copies and row gone.
    case cancelling
    case cancelled
}

extension MovePhase {
    /// The forward phases in order.
    public static let forward: [MovePhase] = [.prepared, .capturing, .copying, .catchingUp, .frozen, .verified,
                                              .sourceMoved, .targetActive, .published, .cleaning, .done]

    /// Whether the move may still be cancelled: the target never took a write before `target_active`.
    public var cancellable: Bool {
        guard let i = Self.forward.firstIndex(of: self) else { return false }
        return i < Self.forward.firstIndex(of: .targetActive)!
    }

    /// Whether the range cannot be written in this phase (from the freeze until the map names the
    /// target): a job left without an owner here is rolled forward by any `serve`, not left waiting.
    public var rangeUnwritable: Bool {
        switch self {
        case .frozen, .verified, .sourceMoved, .targetActive, .published: return true
        default: return false
        }
    }

    /// Whether the job has ended.
    public var finished: Bool { self == .done || self == .cancelled }
}

/// The decisions of one range move, without I/O: the runner performs each ``Action`` against the
/// nodes and etcd, records the phase, and feeds back what happened. A runner that dies leaves the
/// phase in the job record; another starts a machine at that phase and calls ``resume()``.
public struct RangeMoveStateMachine: Sendable, Hashable {
    public struct Limits: Sendable, Hashable {
        /// Catch-up continues until fewer changes than this are pending, then the range freezes.
        public var pendingToFreeze: Int
        /// Freeze attempts whose lock wait timed out before the move is undone (the range is
        /// writable again, the operator told why).
        public var freezeTries: Int
        /// Failed tries of one step before the job stops for an operator (before the freeze) or is
        /// undone (frozen, not yet switched); after the switch it is retried for as long as it takes.
        public var stepTries: Int
        public init(pendingToFreeze: Int = 200, freezeTries: Int = 10, stepTries: Int = 5) {
            self.pendingToFreeze = pendingToFreeze
            self.freezeTries = freezeTries
            self.stepTries = stepTries
        }
    }

    public enum Action: Sendable, Hashable {
        case prepareTarget
        case startCapture
        /// Copy the next chunk of keys after `after` (nil: from the start).
        case copyChunk(after: Int64?)
        /// Reconcile the logged keys (in the range on the source → the target equals it; gone → the
        /// target's copies removed).
        case catchUp
        /// Count and sum the immutable history (older than 10 s) on both nodes.
        case compareHistory
        /// Wait until no branch is prepared on the source for over 200 ms, then freeze its row.
        case freezeSource
        /// Apply the last changes; compare count, sum and checksum on both nodes.
        case verify
        case markSourceMoved
        case activateTarget
        /// CAS the map to name the target (reload first when `reload`).
        case publishMap(reload: Bool)
        case cleanSourceChunk
        /// Delete the source's moved decision rows once nothing prepared names them (and 30 s passed).
        case cleanDecisions
        /// Undo: source active without capture, the target's copies and ownership row deleted.
        case undo
        /// Retry the same step after a pause.
        case retry(MovePhase, after: Duration)
        /// Stop and keep the phase: an operator resumes or cancels (`reason` goes in the job record).
        case stopForOperator(reason: String)
        /// The job ended (done or cancelled); `error` is recorded when it was cancelled for a reason.
        case finish(error: String?)
        /// Nothing to do (asked of a finished job).
        case none
    }

    /// Why a move is refused an operator's request.
    public struct Refusal: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public private(set) var phase: MovePhase
    /// The last key copied.
    public private(set) var cursor: Int64?
    /// Why the move is being undone, if it is.
    public private(set) var cancelReason: String?
    private var failures = 0
    private var freezeTimeouts = 0
    public let limits: Limits

    /// A new move (``MovePhase/prepared``), or one taken over at its recorded phase and cursor.
    public init(phase: MovePhase = .prepared, cursor: Int64? = nil, cancelReason: String? = nil, limits: Limits = Limits()) {
        self.phase = phase
        self.cursor = cursor
        self.cancelReason = cancelReason
        self.limits = limits
    }

    /// The step of the current phase: what a new runner, or one taking the job over, does first.
    public func resume() -> Action {
        switch phase {
        case .prepared: return .prepareTarget
        case .capturing: return .startCapture
        case .copying: return .copyChunk(after: cursor)
        case .catchingUp: return .catchUp
        case .frozen: return .freezeSource
        case .verified: return .verify
        case .sourceMoved: return .markSourceMoved
        case .targetActive: return .activateTarget
        case .published: return .publishMap(reload: true)
        case .cleaning: return .cleanSourceChunk
        case .cancelling: return .undo
        case .done, .cancelled: return .none
        }
    }

    /// The runner holding the job lost its lease: roll the job forward (or its undo) when the range
    /// cannot be written meanwhile; otherwise it waits for an operator's resume or cancel.
    public func ownerLost() -> Action {
        if phase.rangeUnwritable || phase == .cancelling { return resume() }
        if phase.finished { return .none }
        return .stopForOperator(reason: "the runner of this move stopped in \(phase.rawValue); resume or cancel it")
    }

    // MARK: steps done

    private mutating func advance(to next: MovePhase) -> Action {
        phase = next
        failures = 0
        return resume()
    }

    /// The step of the current phase finished (for steps with no more to say than that).
    public mutating func stepDone() -> Action {
        switch phase {
        case .prepared: return advance(to: .capturing)
        case .capturing: return advance(to: .copying)
        case .copying, .catchingUp, .frozen, .verified, .published, .cleaning:
            // These report with their own events.
            return resume()
        case .sourceMoved: return advance(to: .targetActive)
        case .targetActive: return advance(to: .published)
        case .cancelling:
            phase = .cancelled
            return .finish(error: cancelReason)
        case .done, .cancelled: return .none
        }
    }

    /// A chunk was copied up to `lastKey`; `more` tells whether keys remain after it.
    public mutating func chunkCopied(lastKey: Int64?, more: Bool) -> Action {
        guard phase == .copying else { return resume() }
        if let lastKey { cursor = lastKey }
        failures = 0
        return more ? .copyChunk(after: cursor) : advance(to: .catchingUp)
    }

    /// A catch-up pass left `pending` logged changes: below the limit, the history is compared.
    public mutating func caughtUp(pending: Int) -> Action {
        guard phase == .catchingUp else { return resume() }
        failures = 0
        return pending < limits.pendingToFreeze ? .compareHistory : .catchUp
    }

    /// The immutable history agrees on both nodes: the range freezes.
    public mutating func historyMatched() -> Action {
        guard phase == .catchingUp else { return resume() }
        return advance(to: .frozen)
    }

    /// The freeze's lock wait timed out (writes kept the ownership row share-locked): try again,
    /// and after too many tries undo the move, so the range is not left waiting on a freeze.
    public mutating func freezeTimedOut() -> Action {
        guard phase == .frozen else { return resume() }
        freezeTimeouts += 1
        if freezeTimeouts >= limits.freezeTries {
            return cancel(because: "the range could not be frozen: its ownership row stayed locked by writes through \(freezeTimeouts) tries")
        }
        return .retry(.frozen, after: .milliseconds(50 * Int64(freezeTimeouts)))
    }

    /// The source's row is frozen.
    public mutating func sourceFrozen() -> Action {
        guard phase == .frozen else { return resume() }
        return advance(to: .verified)
    }

    /// Both nodes agree on the range's rows and recent history.
    public mutating func verifiedEqual() -> Action {
        guard phase == .verified else { return resume() }
        return advance(to: .sourceMoved)
    }

    /// A difference the catch-up could not explain, or a decision row of another request under the
    /// same key on the target (never overwritten): the move is undone, naming it.
    public mutating func mismatch(_ what: String) -> Action {
        guard phase.cancellable else {
            return .stopForOperator(reason: "after the switch a difference was found: \(what)")
        }
        return cancel(because: what)
    }

    /// The map names the target (`conflict`: another change won the CAS — reload and try again).
    public mutating func published(conflict: Bool) -> Action {
        guard phase == .published else { return resume() }
        return conflict ? .publishMap(reload: true) : advance(to: .cleaning)
    }

    /// A chunk of the source's copies was deleted; `more` tells whether rows remain.
    public mutating func sourceChunkCleaned(more: Bool) -> Action {
        guard phase == .cleaning else { return resume() }
        return more ? .cleanSourceChunk : .cleanDecisions
    }

    /// The source's moved decision rows are gone: the move is done.
    public mutating func decisionsCleaned() -> Action {
        guard phase == .cleaning else { return resume() }
        phase = .done
        return .finish(error: nil)
    }

    /// A step failed with an error that may pass (a node down for a moment, etcd unreachable).
    public mutating func stepFailed(_ reason: String) -> Action {
        guard !phase.finished else { return .none }
        failures += 1
        let pause = Duration.milliseconds(100 << min(failures, 6))
        if failures < limits.stepTries || phase == .cancelling || !phase.cancellable && phase.rangeUnwritable {
            // Before the limit; or undoing; or switched and unwritable until published: only forward.
            return .retry(phase, after: pause)
        }
        if phase.rangeUnwritable {
            // Frozen but not switched: writable again beats waiting for a node that may not come back.
            return cancel(because: "\(phase.rawValue) failed \(failures) times: \(reason)")
        }
        return .stopForOperator(reason: "\(phase.rawValue) failed \(failures) times: \(reason)")
    }

    // MARK: operator

    /// An operator cancels the move: allowed until the target may have taken a write.
    public mutating func cancel() throws(Refusal) -> Action {
        if phase == .cancelling || phase == .cancelled { return resume() }
        guard phase.cancellable else {
            throw Refusal(message: phase == .done ? "the move is done; move the range back instead"
                : "the move is past \(MovePhase.sourceMoved.rawValue) (the target may have taken writes): it can only go forward; resume it")
        }
        return cancel(because: "cancelled by an operator")
    }

    /// An operator resumes a stopped move.
    public mutating func operatorResume() throws(Refusal) -> Action {
        guard !phase.finished else { throw Refusal(message: "the move has ended (\(phase.rawValue)); there is nothing to resume") }
        failures = 0
        return resume()
    }

    private mutating func cancel(because reason: String) -> Action {
        phase = .cancelling
        cancelReason = reason
        failures = 0
        return .undo
    }
}
