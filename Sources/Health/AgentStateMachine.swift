/// The agent's decisions, beat by beat, without I/O: whether to register (grant a lease and put the
/// heartbeat), keep the lease and put, revoke, or stay silent. The agent feeds it each check's
/// result and what etcd answered.
public struct AgentStateMachine: Sendable {
    public enum Action: Sendable, Hashable {
        /// Grant a lease and put the heartbeat under it (the database answers again, or the lease was lost).
        case register
        /// Keep the lease alive and put this beat (`databaseOK` false: the first failures, which
        /// routers treat as down at once).
        case beat(databaseOK: Bool)
        /// Too many failed checks in a row: revoke the lease, so the key vanishes.
        case revoke
        /// Unregistered and the database still fails: nothing to say.
        case none
    }

    public let failuresBeforeRevoke: Int
    public private(set) var registered = false
    public private(set) var consecutiveFailures = 0

    public init(failuresBeforeRevoke: Int) {
        precondition(failuresBeforeRevoke >= 1)
        self.failuresBeforeRevoke = failuresBeforeRevoke
    }

    /// A beat with the database check's result.
    public mutating func beat(databaseOK: Bool) -> Action {
        if databaseOK {
            consecutiveFailures = 0
            return registered ? .beat(databaseOK: true) : .register
        }
        consecutiveFailures += 1
        guard registered else { return .none }
        return consecutiveFailures >= failuresBeforeRevoke ? .revoke : .beat(databaseOK: false)
    }

    /// The lease was granted and the heartbeat put.
    public mutating func registeredWithLease() { registered = true }
    /// etcd says the lease is gone (expired during an outage, or revoked): register again next beat.
    public mutating func leaseLost() { registered = false }
    /// The agent revoked its lease.
    public mutating func revoked() { registered = false }
}
