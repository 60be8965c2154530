import Logging
import MariaDB
import Synchronization

/// One connection pool per storage node, by node id.
public final class NodeConnections: Sendable {
    private let pools: Mutex<[String: MariaDBPool]>
    private let logger: Logger

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

    /// The ids of every registered node.
    public var nodes: [String] { pools.withLock { Array($0.keys).sorted() } }

    /// The pool of `node`.
    public func pool(_ node: String) throws(LedgerError) -> MariaDBPool {
        guard let pool = pools.withLock({ $0[node] }) else {
            throw LedgerError(.nodeUnavailable, "node \(node) is not registered", node: node)
        }
        return pool
    }

    /// Runs `body` with a connection to `node`.
    public func withConnection<T: Sendable>(_ node: String, _ body: (MariaDBConnection) async throws -> T) async throws -> T {
        try await pool(node).withConnection(body)
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
