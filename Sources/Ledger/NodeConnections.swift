import Logging
import MariaDB
import Synchronization

/// One connection pool per storage node, by node id.
public final class NodeConnections: Sendable {
    private let pools: Mutex<[String: MariaDBPool]>
    private let logger: Logger
    private let health = Mutex<Health?>(nil)
    private let removed = Mutex<Set<String>>([])

    /// What the health layer says about nodes (see ``watchHealth(refuse:connectionFailed:)``).
    struct Health: Sendable {
        var refuse: @Sendable (String) -> LedgerError?
        var connectionFailed: @Sendable (String) -> Void
    }

    public init(logger: Logger) {
        self.pools = Mutex([:])
        self.logger = logger
    }

    /// Adds (or replaces, when the address changed) the pool of `node`.
    public func register(node: String, configuration: MariaDBConfiguration, options: MariaDBPool.Options = .init()) async {
        let replaced = pools.withLock { pools -> MariaDBPool? in
            if let existing = pools[node], existing.configuration == configuration { return nil }
            let old = pools[node]
            pools[node] = MariaDBPool(configuration: configuration, options: options, logger: logger)
            return old
        }
        if let replaced { await replaced.shutdown() }
    }

    /// Removes the pool of `node` (the node left the registry): from now on ``pool(_:)`` and
    /// ``withConnection(_:_:)`` fail at once with `node_unavailable`. The pool is then shut down:
    /// its idle connections close, callers still waiting for one of its connections fail, and
    /// connections in use stay usable until their users release them, then close. Returns whether
    /// the node had a pool.
    @discardableResult
    public func unregister(node: String) async -> Bool {
        guard let removed = pools.withLock({ $0.removeValue(forKey: node) }) else { return false }
        await removed.shutdown()
        return true
    }

    /// Notes that the registry marks `nodes` (and no others) `removed`: drained to the end, they own no range and
    /// will never own one again (a removed id is not registered again), so nothing they hold is
    /// asked for — an in-doubt branch naming one as its commit point is rolled back
    /// (``InDoubtResolver``). Whoever follows the registry tells; a process that never heard of a
    /// node does not presume it removed.
    /// Each call replaces what the last one said: the registry's current word counts.
    public func markRemoved<S: Sequence<String>>(_ nodes: S) {
        removed.withLock { $0 = Set(nodes) }
    }

    /// Whether the registry marked `node` `removed` (``markRemoved(_:)``) and it has no pool here:
    /// a node with a pool is one this process was told is registered, whatever it heard before.
    public func isRemoved(_ node: String) -> Bool {
        removed.withLock { $0.contains(node) } && pools.withLock { $0[node] == nil }
    }

    /// The driver configuration of `node`'s pool, or nil when the node has none.
    public func configuration(of node: String) -> MariaDBConfiguration? {
        pools.withLock { $0[node]?.configuration }
    }

    /// The ids of every registered node.
    public var nodes: [String] { pools.withLock { Array($0.keys).sorted() } }

    /// Wires the health view in: `refuse` is asked before a node is used and returns the error to
    /// fail with at once when the node is down (no waiting on a dead socket); `connectionFailed` is
    /// told of every connection error to a node (which also drops that node's idle connections).
    public func watchHealth(refuse: @escaping @Sendable (String) -> LedgerError?, connectionFailed: @escaping @Sendable (String) -> Void) {
        health.withLock { $0 = Health(refuse: refuse, connectionFailed: connectionFailed) }
    }

    /// The pool of `node`; fails at once when the node is not registered or is down.
    public func pool(_ node: String) throws(LedgerError) -> MariaDBPool {
        guard let pool = pools.withLock({ $0[node] }) else {
            throw LedgerError(.nodeUnavailable, "node \(node) is not registered", node: node)
        }
        if let refused = health.withLock({ $0 })?.refuse(node) {
            // Its idle connections died with it (or will be useless): when it is back, new ones.
            pool.dropIdle()
            throw refused
        }
        return pool
    }

    /// Runs `body` with a connection to `node`.
    public func withConnection<T: Sendable>(_ node: String, _ body: (MariaDBConnection) async throws -> T) async throws -> T {
        let pool = try pool(node)
        do {
            return try await pool.withConnection(body)
        } catch let error as MariaDBError where error.isConnectionBroken {
            connectionFailed(node)
            throw error
        }
    }

    /// Records a connection error to `node`: the health view marks it suspect, its idle connections go.
    public func connectionFailed(_ node: String) {
        pools.withLock { $0[node] }?.dropIdle()
        health.withLock { $0 }?.connectionFailed(node)
    }

    /// Shuts every pool down.
    public func shutdown() async {
        let all = pools.withLock { pools in
            defer { pools.removeAll() }
            return Array(pools.values)
        }
        for pool in all { await pool.shutdown() }
    }
}
