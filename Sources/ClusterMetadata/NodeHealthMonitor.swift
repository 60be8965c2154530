import Health
import Synchronization

/// The health of every node as this process sees it: the agents' heartbeats from the watch-fed
/// ``MetadataCache`` (their presence, their database check, when each arrived here) and the
/// connection errors this process's pools met. The judgement is ``NodeHealth/judge``'s.
public final class NodeHealthMonitor: Sendable {
    private let cache: MetadataCache
    private let poolErrors = Mutex<[String: ContinuousClock.Instant]>([:])
    /// Decoded heartbeats by node, with the mod revision they were decoded from (routing asks for
    /// a node's health on every request; decoding JSON each time would cost more than the check).
    private let decoded = Mutex<[String: (revision: Int64, beat: Heartbeat?)]>([:])

    public init(cache: MetadataCache) {
        self.cache = cache
    }

    /// One node's health now.
    public func health(of node: String) -> NodeHealth {
        let now = ContinuousClock.now
        let snapshot = cache.snapshot
        let beat = snapshot.heartbeats[node].flatMap { kv in
            decoded.withLock { cache in
                if let hit = cache[node], hit.revision == kv.modRevision { return hit.beat }
                let beat = Heartbeat.decode(kv.value)
                cache[node] = (kv.modRevision, beat)
                return beat
            }
        }
        let age = snapshot.heartbeatReceived[node].map { now - $0 }
        let poolErrorAge = poolErrors.withLock { $0[node] }.map { now - $0 }
        return NodeHealth.judge(node: node, beat: beat, age: beat == nil ? nil : age, poolErrorAge: poolErrorAge)
    }

    /// Every registered node's health, by id.
    public func all() -> [NodeHealth] {
        cache.snapshot.nodes.keys.sorted().map(health(of:))
    }

    /// The pool met a connection error to `node`: suspect until a good beat arrives after it.
    public func connectionFailed(_ node: String) {
        poolErrors.withLock { $0[node] = .now }
    }
}
