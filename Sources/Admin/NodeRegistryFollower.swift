import BankSchema
import ClusterMetadata
import Health
import Ledger
import Logging
import MariaDB
import ServiceLifecycle
import ShardBankConfig

/// Keeps a running process's connection pools equal to the node registry (`node/{id}/info`) as the
/// watch-fed ``MetadataCache`` sees it, so nodes can join and leave without a restart:
///
/// - a node registered later gets a pool — with `migrate`, only after its schema is brought up to
///   date (the bank may write to it as soon as its pool is there);
/// - a node whose address (host, port, database, TLS mode) changed gets a new pool in place of the
///   old one (``NodeConnections/register(node:configuration:options:)``);
/// - a node whose state becomes `removed`, or whose record is deleted, loses its pool
///   (``NodeConnections/unregister(node:)``).
///
/// It wakes on the cache's changes to the registry (the cache's watch, never a poll of etcd). A
/// node that cannot be reached or migrated is logged and tried again after 0.5 s, 1 s, 2 s, … up to
/// `maximumRetryDelay`, or at once when its record changes; it is never fatal. A node for which the
/// configuration has no credentials of its own (`nodes.<id>.user`/`password_file`) has them
/// looked for again in the configuration's file at each attempt, so an operator can add them while
/// the process runs.
public final class NodeRegistryFollower: Service, Sendable {
    public struct Options: Sendable {
        /// Bring a joining node's schema up to date (``BankSchema/migrate(_:logger:)``) before its pool
        /// is published: `serve` and `bench`, whose bank writes to it. An agent only reads decisions
        /// from other nodes, so it does not.
        public var migrate: Bool
        /// The wait before the first retry of a node that could not be reached; it doubles each time.
        public var firstRetryDelay: Duration
        public var maximumRetryDelay: Duration

        public init(migrate: Bool, firstRetryDelay: Duration = .milliseconds(500), maximumRetryDelay: Duration = .seconds(8)) {
            self.migrate = migrate
            self.firstRetryDelay = firstRetryDelay
            self.maximumRetryDelay = maximumRetryDelay
        }
    }

    private let cache: MetadataCache
    private let connections: NodeConnections
    private let configuration: ShardBankConfiguration
    private let initial: [String: NodeInfo]
    private let options: Options
    private let logger: Logger

    /// - Parameters:
    ///   - initial: the registry entries `connections` already has pools for (what the process
    ///     opened at start-up); anything else in the cache is followed from there.
    ///   - configuration: the credentials and pool options.
    public init(cache: MetadataCache, connections: NodeConnections, configuration: ShardBankConfiguration,
                initial: [NodeInfo], options: Options, logger: Logger) {
        self.cache = cache
        self.connections = connections
        self.configuration = configuration
        self.initial = Dictionary(initial.filter { $0.state != .removed }.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        self.options = options
        self.logger = logger
    }

    public func run() async throws {
        // Graceful shutdown cancels the wait for the next change (and an attempt under way).
        await cancelWhenGracefulShutdown {
            await self.follow()
        }
    }

    /// A node that could not be opened yet: which record, how many attempts, when to try again.
    private struct Pending {
        var info: NodeInfo
        var attempts: Int
        var next: ContinuousClock.Instant
    }

    private func follow() async {
        var applied = initial
        var pending: [String: Pending] = [:]
        while !Task.isCancelled {
            let registry = cache.snapshot.nodes
            await reconcile(registry, applied: &applied, pending: &pending)
            do {
                try await waitForChange(from: registry, orUntil: pending.values.map(\.next).min())
            } catch {
                return // cancelled, or the cache stopped: the process is shutting down
            }
        }
    }

    /// Makes the pools follow `registry` once.
    private func reconcile(_ registry: [String: NodeInfo], applied: inout [String: NodeInfo], pending: inout [String: Pending]) async {
        let wanted = registry.filter { $0.value.state != .removed }
        connections.markRemoved(registry.filter { $0.value.state == .removed }.keys)
        for id in applied.keys.sorted() where wanted[id] == nil {
            applied[id] = nil
            if await connections.unregister(node: id) {
                logger.notice("node left the registry: its pool is closed (connections in use close when their work ends)",
                              metadata: ["node": "\(id)", "state": "\(registry[id]?.state.rawValue ?? "deleted")"])
            }
        }
        // A record that changed while it was failing is tried at once.
        pending = pending.filter { wanted[$0.key] == $0.value.info }
        let now = ContinuousClock.now
        for (id, info) in wanted.sorted(by: { $0.key < $1.key }) where applied[id] != info {
            if let waiting = pending[id], waiting.next > now { continue }
            do {
                try await open(info)
                applied[id] = info
                pending[id] = nil
            } catch is CancellationError {
                return
            } catch {
                let attempts = (pending[id]?.attempts ?? 0) + 1
                let delay = retryDelay(after: attempts)
                pending[id] = Pending(info: info, attempts: attempts, next: .now + delay)
                logger.warning("cannot open a pool to a registered node yet; trying again",
                               metadata: ["node": "\(id)", "address": "\(info.host):\(info.port)", "attempt": "\(attempts)",
                                          "retry_in_ms": "\(delay.milliseconds)",
                                          "error": "\(error)"])
            }
        }
    }

    /// Opens (or replaces) the pool of a registered node, its schema brought up to date first.
    private func open(_ info: NodeInfo) async throws {
        let database = await configuration.mariaDB(for: info, logger: logger)
        let current = connections.configuration(of: info.id)
        // Same address and credentials (e.g. active → draining): the pool stays as it is.
        guard current != database else { return }
        if options.migrate {
            let c = try await MariaDBConnection.connect(configuration: database)
            let versions: [Int]
            do { versions = try await BankSchema.migrate(c, logger: logger) } catch {
                await c.close()
                throw error
            }
            await c.close()
            if !versions.isEmpty {
                logger.info("brought a joining node's schema up to date", metadata: ["node": "\(info.id)", "applied": "\(versions)"])
            }
        }
        await connections.register(node: info.id, configuration: database, options: configuration.mysql.pool)
        logger.notice(current == nil ? "node joined the registry: its pool is open" : "node's address changed: its pool is replaced",
                      metadata: ["node": "\(info.id)", "address": "\(info.host):\(info.port)", "database": "\(info.database)", "state": "\(info.state.rawValue)"])
    }

    private func retryDelay(after attempts: Int) -> Duration {
        var delay = options.firstRetryDelay
        for _ in 1..<max(1, attempts) where delay < options.maximumRetryDelay { delay *= 2 }
        return min(delay, options.maximumRetryDelay)
    }

    /// Returns when the registry differs from `registry`, or at `deadline` (a retry is due).
    private func waitForChange(from registry: [String: NodeInfo], orUntil deadline: ContinuousClock.Instant?) async throws {
        let cache = self.cache
        guard let deadline else {
            _ = try await cache.waitUntil { $0.nodes != registry }
            return
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { _ = try await cache.waitUntil { $0.nodes != registry } }
            group.addTask { try await Task.sleep(until: deadline, clock: .continuous) }
            try await group.next()
            group.cancelAll()
        }
    }
}

extension ShardBankConfiguration {
    /// The driver configuration for a registered node: this configuration's credentials, or — when
    /// it has none of its own for the node (`nodes.<id>.user`, `nodes.<id>.password_file`) — those
    /// of the configuration read again from its file, since the operator may have added them after
    /// the process started. A file that cannot be read again is logged (never a password) and the
    /// credentials read at start-up are used.
    public func mariaDB(for info: NodeInfo, logger: Logger) async -> MariaDBConfiguration {
        var source = self
        if !hasCredentials(for: info.id) {
            do {
                source = try await reloaded(readingCredentialsOf: info.id)
            } catch {
                logger.warning("cannot read the configuration again for a joining node's credentials; using the ones read at start-up",
                               metadata: ["node": "\(info.id)", "error": "\(error)"])
            }
        }
        return source.mariaDB(node: info.id, host: info.host, port: info.port, database: info.database, tlsMode: info.tlsMode)
    }
}
