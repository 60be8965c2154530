/// The bookkeeping of a connection pool, free of I/O so it can be tested alone.
///
/// Connections are named by `ID`; waiters by an `Int`. Each event returns what the I/O shell must do.
/// Invariant: `leased + opening + idle.count <= maxConnections`.
public struct PoolStateMachine<ID: Hashable & Sendable>: Sendable {
    public struct Idle: Sendable {
        public var id: ID
        /// Monotonic nanoseconds of the last release.
        public var lastUsed: UInt64
    }

    public let maxConnections: Int
    /// An idle connection unused for longer than this is pinged before it is handed out.
    public let validateAfterNanoseconds: UInt64
    public private(set) var idle: [Idle] = []
    public private(set) var leased = 0
    public private(set) var opening = 0
    public private(set) var waiters: [Int] = []
    public private(set) var isShutDown = false

    public init(maxConnections: Int, validateAfterNanoseconds: UInt64) {
        precondition(maxConnections > 0)
        self.maxConnections = maxConnections
        self.validateAfterNanoseconds = validateAfterNanoseconds
    }

    public enum AcquireAction: Equatable, Sendable {
        /// Hand out this idle connection (ping it first when `validate`).
        case lease(ID, validate: Bool)
        /// Open a new connection for the caller; report with `opened` or `openFailed`.
        case open
        /// Park the caller as a waiter until a grant or its timeout.
        case wait
        case failShutDown
    }

    public mutating func acquire(waiter: Int, now: UInt64) -> AcquireAction {
        if isShutDown { return .failShutDown }
        if let c = idle.popLast() {
            leased += 1
            return .lease(c.id, validate: now &- c.lastUsed > validateAfterNanoseconds)
        }
        if leased + opening < maxConnections {
            opening += 1
            return .open
        }
        waiters.append(waiter)
        return .wait
    }

    /// A new connection is open and leased to its opener.
    public mutating func opened() {
        opening -= 1
        leased += 1
    }

    public enum SlotAction: Equatable, Sendable {
        case none
        /// Let this waiter open a connection in the freed slot.
        case permitOpen(waiter: Int)
    }

    /// Opening failed: the slot is free again; a waiter may use it.
    public mutating func openFailed() -> SlotAction {
        opening -= 1
        return freeSlot()
    }

    public enum ReleaseAction: Equatable, Sendable {
        /// Keep it idle.
        case keep
        /// Hand it straight to this waiter.
        case handOver(waiter: Int)
        /// Close it; and, if set, let that waiter open a replacement.
        case close(permitOpenFor: Int?)
    }

    /// A leased connection comes back; `broken` ones are closed, never reused.
    public mutating func release(_ id: ID, broken: Bool, now: UInt64) -> ReleaseAction {
        leased -= 1
        if isShutDown { return .close(permitOpenFor: nil) }
        if broken {
            if case .permitOpen(let w) = freeSlot() { return .close(permitOpenFor: w) }
            return .close(permitOpenFor: nil)
        }
        if !waiters.isEmpty {
            leased += 1
            return .handOver(waiter: waiters.removeFirst())
        }
        idle.append(Idle(id: id, lastUsed: now))
        return .keep
    }

    /// A waiter gave up (timeout or cancellation). Returns false if it was no longer waiting.
    public mutating func abandon(waiter: Int) -> Bool {
        guard let i = waiters.firstIndex(of: waiter) else { return false }
        waiters.remove(at: i)
        return true
    }

    /// Shuts down: returns the idle connections to close and the waiters to fail.
    public mutating func shutDown() -> (close: [ID], fail: [Int]) {
        isShutDown = true
        let result = (idle.map(\.id), waiters)
        idle.removeAll()
        waiters.removeAll()
        return result
    }

    /// The server went away: every idle connection is presumed dead. Returns them to close (waiters
    /// cannot exist while connections are idle, so no slot is handed over).
    public mutating func dropIdle() -> [ID] {
        defer { idle.removeAll() }
        return idle.map(\.id)
    }

    private mutating func freeSlot() -> SlotAction {
        guard !waiters.isEmpty, leased + opening < maxConnections else { return .none }
        opening += 1
        return .permitOpen(waiter: waiters.removeFirst())
    }
}
