/// A node's health as routers see it.
public enum NodeState: String, Sendable, Hashable, Codable {
    /// Beats arrive on time and the database answers.
    case healthy
    /// A beat is late (more than twice the interval), or the pool saw connection errors since the
    /// last good beat. Requests still go to the node.
    case suspect
    /// No heartbeat key (the lease lapsed or was revoked), or the agent reports that the database
    /// does not answer. Requests that need the node fail at once with `node_unavailable`.
    case down
}

/// What a router knows of one node at one moment.
public struct NodeHealth: Sendable, Hashable {
    public var node: String
    public var state: NodeState
    /// Time since the last beat was received; nil when there is none.
    public var heartbeatAge: Duration?
    /// Why the node is not healthy, for people.
    public var reason: String?

    public init(node: String, state: NodeState, heartbeatAge: Duration?, reason: String?) {
        self.node = node
        self.state = state
        self.heartbeatAge = heartbeatAge
        self.reason = reason
    }

    /// The judgement, a pure function of what was seen.
    /// - Parameters:
    ///   - beat: the node's current heartbeat value; nil when the key is absent.
    ///   - age: time since that beat was received.
    ///   - poolErrorAge: time since the pool last saw a connection error to the node, if ever.
    public static func judge(node: String, beat: Heartbeat?, age: Duration?, poolErrorAge: Duration?) -> NodeHealth {
        guard let beat, let age else {
            return NodeHealth(node: node, state: .down, heartbeatAge: nil, reason: "no heartbeat: the agent's lease is gone (agent stopped, or it revoked it because the database failed its checks)")
        }
        if !beat.database.ok {
            return NodeHealth(node: node, state: .down, heartbeatAge: age, reason: "the agent reports the database not answering: \(beat.database.error ?? "check failed")")
        }
        if age > .milliseconds(2 * max(beat.intervalMillis, 1)) {
            return NodeHealth(node: node, state: .suspect, heartbeatAge: age, reason: "the last heartbeat is \(age.milliseconds) ms old, more than twice the \(beat.intervalMillis) ms interval")
        }
        if let poolErrorAge, poolErrorAge < age {
            return NodeHealth(node: node, state: .suspect, heartbeatAge: age, reason: "connection errors to the node since its last heartbeat")
        }
        return NodeHealth(node: node, state: .healthy, heartbeatAge: age, reason: nil)
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 { microseconds / 1000 }

    /// Whole microseconds, rounded down.
    public var microseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}
