/// The phases of a range split, in the order they run; each names the step in progress, and is
/// what the job record keeps.
public enum SplitPhase: String, Sendable, Hashable, Codable, CaseIterable {
    /// Recorded; the node's new ownership row (`[at, hi)`, active) is being added while the old
    /// row still covers `[lo, hi)`.
    case prepared
    /// The map is being changed: the old range keeps `[lo, at)`, the new one gets `[at, hi)`.
    case publishing
    /// Rows at or above the split key are relabelled in chunks (accounts: with their directory
    /// entries, under the rows' locks).
    case relabeling
    /// One short transaction under the old row's exclusive lock narrows it to `[lo, at)` and
    /// relabels the rows written under it meanwhile.
    case narrowing
    /// Accounts maps only: every directory entry of the new range's accounts names it.
    case pointing
    case done
    /// Undoing a split that has not published: the new ownership row is removed.
    case cancelling
    case cancelled

    /// The forward phases in order.
    public static let forward: [SplitPhase] = [.prepared, .publishing, .relabeling, .narrowing, .pointing, .done]

    /// Whether the split may still be undone: nothing is labelled with the new range before the map names it.
    public var cancellable: Bool { self == .prepared || self == .publishing }

    public var finished: Bool { self == .done || self == .cancelled }
}

/// The decisions of one range split, without I/O: the runner performs each ``Action`` on the
/// range's node and in etcd, records the phase, and feeds back what happened. Every step can run
/// again after a crash; a runner taking a job over starts a machine at the recorded phase.
public struct RangeSplitStateMachine: Sendable, Hashable {
    public struct Limits: Sendable, Hashable {
        /// Failed tries of a step before the job stops for an operator.
        public var stepTries: Int
        /// Tries of the narrowing transaction whose lock wait timed out (writes kept the old
        /// row share-locked) before the job stops for an operator.
        public var narrowTries: Int
        /// Tries of a pointing chunk that found a directory range in a move's switch (or the map
        /// behind) before the job stops for an operator; 200 ms apart, they do not count as failures.
        public var busyTries: Int
        public init(stepTries: Int = 5, narrowTries: Int = 20, busyTries: Int = 150) {
            self.stepTries = stepTries
            self.narrowTries = narrowTries
            self.busyTries = busyTries
        }
    }

    public enum Action: Sendable, Hashable {
        /// Add the new range's ownership row on the node (the old row unchanged).
        case addRange
        /// CAS the map (reload first when `reload`).
        case publishMap(reload: Bool)
        /// Relabel the next chunk of the old range's rows after key `after`.
        case relabelChunk(after: Int64?)
        /// Narrow the old row and relabel the stragglers, in one transaction.
        case narrow
        /// Point the next chunk of the new range's directory entries at it.
        case pointChunk(after: Int64?)
        /// Remove the new ownership row (nothing names it yet).
        case undo
        case retry(SplitPhase, after: Duration)
        case stopForOperator(reason: String)
        case finish(error: String?)
        case none
    }

    public struct Refusal: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public private(set) var phase: SplitPhase
    /// The last key relabelled or pointed (the phase's cursor).
    public private(set) var cursor: Int64?
    public private(set) var cancelReason: String?
    /// Whether the map has a directory to point (accounts maps).
    public let pointsDirectory: Bool
    public let limits: Limits
    private var failures = 0
    private var narrowTimeouts = 0
    private var busy = 0

    public init(phase: SplitPhase = .prepared, cursor: Int64? = nil, pointsDirectory: Bool, cancelReason: String? = nil, limits: Limits = Limits()) {
        self.phase = phase
        self.cursor = cursor
        self.pointsDirectory = pointsDirectory
        self.cancelReason = cancelReason
        self.limits = limits
    }

    /// The step of the current phase (after a takeover, or a retry's pause).
    public func resume() -> Action {
        switch phase {
        case .prepared: return .addRange
        case .publishing: return .publishMap(reload: true)
        case .relabeling: return .relabelChunk(after: cursor)
        case .narrowing: return .narrow
        case .pointing: return .pointChunk(after: cursor)
        case .cancelling: return .undo
        case .done, .cancelled: return .none
        }
    }

    private mutating func advance(to next: SplitPhase) -> Action {
        phase = next
        cursor = nil
        failures = 0
        if next == .done { return .finish(error: nil) }
        return resume()
    }

    /// The new ownership row is on the node.
    public mutating func rangeAdded() -> Action {
        guard phase == .prepared else { return resume() }
        return advance(to: .publishing)
    }

    /// The map names both ranges (`conflict`: another change won the CAS — reload and try again).
    public mutating func published(conflict: Bool) -> Action {
        guard phase == .publishing else { return resume() }
        return conflict ? .publishMap(reload: true) : advance(to: .relabeling)
    }

    /// A chunk up to `lastKey` was relabelled; `more` tells whether rows remain after it.
    public mutating func chunkRelabeled(lastKey: Int64?, more: Bool) -> Action {
        guard phase == .relabeling else { return resume() }
        if let lastKey { cursor = lastKey }
        failures = 0
        return more ? .relabelChunk(after: cursor) : advance(to: .narrowing)
    }

    /// The old row covers `[lo, at)` only; no row of the old range lies at or above `at`.
    public mutating func narrowed() -> Action {
        guard phase == .narrowing else { return resume() }
        return pointsDirectory ? advance(to: .pointing) : advance(to: .done)
    }

    /// The narrowing's lock wait timed out: try again, a little later each time.
    public mutating func narrowTimedOut() -> Action {
        guard phase == .narrowing else { return resume() }
        narrowTimeouts += 1
        if narrowTimeouts >= limits.narrowTries {
            narrowTimeouts = 0
            return .stopForOperator(reason: "the old range's ownership row stayed locked by writes through \(limits.narrowTries) tries; resume the job")
        }
        return .retry(.narrowing, after: .milliseconds(50 * Int64(min(narrowTimeouts, 10))))
    }

    /// A chunk of directory entries up to `lastKey` names the new range; `more` tells whether rows remain.
    public mutating func chunkPointed(lastKey: Int64?, more: Bool) -> Action {
        guard phase == .pointing else { return resume() }
        if let lastKey { cursor = lastKey }
        failures = 0
        busy = 0
        return more ? .pointChunk(after: cursor) : advance(to: .done)
    }

    /// A pointing chunk found a directory range not active where the map says (a move's switch, or
    /// the map behind): wait for the map to change, without counting it as a failure, up to a limit.
    public mutating func directoryBusy(_ what: String) -> Action {
        guard phase == .pointing else { return resume() }
        busy += 1
        if busy >= limits.busyTries {
            busy = 0
            return .stopForOperator(reason: "pointing waited \(limits.busyTries) times for \(what); resume the job once the directory range has settled")
        }
        return .retry(.pointing, after: .milliseconds(200))
    }

    /// The new row is gone: the split is undone.
    public mutating func undone() -> Action {
        guard phase == .cancelling else { return resume() }
        phase = .cancelled
        return .finish(error: cancelReason)
    }

    /// A step failed with an error that may pass (a node down for a moment, etcd unreachable).
    /// Undoing is retried for as long as it takes; other steps stop for an operator after the limit.
    public mutating func stepFailed(_ reason: String) -> Action {
        guard !phase.finished else { return .none }
        failures += 1
        if failures < limits.stepTries || phase == .cancelling {
            return .retry(phase, after: .milliseconds(100 << min(failures, 6)))
        }
        failures = 0
        return .stopForOperator(reason: "\(phase.rawValue) failed \(limits.stepTries) times: \(reason)")
    }

    /// A check found the node no longer as the job recorded it (the range moved or changed): the
    /// split is undone while it can be, else it stops for an operator.
    public mutating func conflict(_ what: String) -> Action {
        guard phase.cancellable else { return .stopForOperator(reason: what) }
        return cancel(because: what)
    }

    // MARK: operator

    /// An operator cancels the split: allowed until the map names the new range.
    public mutating func cancel() throws(Refusal) -> Action {
        if phase == .cancelling || phase == .cancelled { return resume() }
        guard phase.cancellable else {
            throw Refusal(message: phase == .done ? "the split is done" : "the map names the new range already (\(phase.rawValue)): the split can only go forward; resume it")
        }
        return cancel(because: "cancelled by an operator")
    }

    /// An operator resumes a stopped split.
    public mutating func operatorResume() throws(Refusal) -> Action {
        guard !phase.finished else { throw Refusal(message: "the split has ended (\(phase.rawValue)); there is nothing to resume") }
        failures = 0
        narrowTimeouts = 0
        return resume()
    }

    private mutating func cancel(because reason: String) -> Action {
        phase = .cancelling
        cursor = nil
        cancelReason = reason
        failures = 0
        return .undo
    }
}
