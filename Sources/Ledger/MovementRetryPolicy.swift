/// How a balance change goes on after each try — `Bank`'s retry policy without I/O.
///
/// Accounts whose places are known take the lock-first path (no read before the transaction; it
/// cannot go stale under contention as a read-then-write plan can). Anything that path cannot do
/// (a move, an account that lived elsewhere) goes to the general path: first a look for a committed
/// earlier attempt of the key, then a plan from reads, executed with each row locked and checked. A
/// plan gone stale writes nothing and is made again after a short, growing pause — with the
/// locations forgotten unless the rows were still where they were read, and the maps re-read when a
/// node refused a range (`wrong_shard`). The pause doubles from 4 ms up to ``longestPause`` (the
/// caller adds jitter, so that two requests contending for one account do not retry in step). After
/// ``maximumTries`` stale plans (0.8–1.5 s of pauses), or at the first stale plan after
/// ``timeBudget`` of trying (each try may also wait for locks: up to 5 s for a key's claim held by
/// an in-doubt branch), it gives up: nothing was done, and the client may retry with the same key. Contention on an account whose balance keeps crossing a
/// range bound (each crossing moves the row) can make several plans in a row go stale.
public struct MovementRetryPolicy: Sendable, Hashable {
    public enum Action: Sendable, Hashable {
        case lockFirst
        case lookForEarlierCommit
        case plan
        /// Pause, then ask again (``backedOff(allLocationsKnown:)``).
        case backOff(Duration, forgetLocations: Bool, refreshMaps: Bool)
        /// A range is frozen for a move (its switch takes milliseconds): wait for the maps to change —
        /// the caller bounds the wait, then gives up — and plan again (``mapsChanged()``).
        case awaitMapChange
        case giveUp
    }

    /// Why a try wrote nothing and may be tried again.
    public struct Stale: Sendable, Hashable {
        /// The rows were where they were read (only their balances changed): the locations hold.
        public var stillThere: Bool
        /// A node refused a range the map gave it: the map is behind.
        public var wrongShard: Bool
        /// A range is frozen for a move: neither the map nor the rows are wrong, they are about to change.
        public var rangeMoving: Bool
        public init(stillThere: Bool = false, wrongShard: Bool = false, rangeMoving: Bool = false) {
            self.stillThere = stillThere
            self.wrongShard = wrongShard
            self.rangeMoving = rangeMoving
        }
    }

    public static let maximumTries = 12
    public static let longestPause = Duration.milliseconds(256)
    public static let timeBudget = Duration.seconds(10)
    public private(set) var stalePlans = 0
    private var lockFirstAllowed = true

    public init() {}

    public mutating func start(allLocationsKnown: Bool) -> Action {
        lockFirstAllowed && allLocationsKnown ? .lockFirst : .lookForEarlierCommit
    }

    /// The lock-first path found the case not simple (it wrote nothing): the general path takes it, for good.
    public mutating func lockFirstNotSimple() -> Action {
        lockFirstAllowed = false
        return .lookForEarlierCommit
    }

    /// The lock-first try went stale (it wrote nothing): the general path plans from fresh reads.
    public mutating func lockFirstStale(_ stale: Stale) -> Action {
        .lookForEarlierCommit
    }

    public mutating func noEarlierCommit() -> Action { .plan }

    /// A try found another attempt of the key committed: the look for it answers the request.
    public mutating func earlierAttemptCommitted() -> Action { .lookForEarlierCommit }

    /// A plan went stale (it wrote nothing), `elapsed` after the request began. A moving range does
    /// not count as a stale plan: the wait for its switch is bounded in time by the caller.
    public mutating func planStale(_ stale: Stale, elapsed: Duration = .zero) -> Action {
        if stale.rangeMoving { return .awaitMapChange }
        stalePlans += 1
        guard stalePlans < Self.maximumTries, elapsed < Self.timeBudget else { return .giveUp }
        return .backOff(min(.milliseconds(2 << stalePlans), Self.longestPause), forgetLocations: !stale.stillThere, refreshMaps: stale.wrongShard)
    }

    /// The pause to sleep for a ``Action/backOff(_:forgetLocations:refreshMaps:)``: a random 50–100 %
    /// of it, so that requests contending for one account do not retry in step.
    public static func jittered(_ pause: Duration) -> Duration {
        pause * Double.random(in: 0.5...1.0)
    }

    public mutating func backedOff(allLocationsKnown: Bool) -> Action {
        start(allLocationsKnown: allLocationsKnown)
    }

    /// The wait for a moving range ended (the maps changed, or a short slice passed): the places
    /// learnt may be the move's source, so they are read again.
    public mutating func mapsChanged() -> Action {
        start(allLocationsKnown: false)
    }
}
