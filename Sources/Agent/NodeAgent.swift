import ClusterMetadata
import Etcd
import Foundation
import Health
import Logging
import MariaDB
import ServiceLifecycle

/// The sidecar beside one MariaDB node: every beat it checks the database (`SELECT 1`) and keeps
/// `node/{id}/heartbeat` under an etcd lease, saying whether the database answered, how fast, and
/// which ranges the node holds. After `failuresBeforeRevoke` failed checks in a row it revokes the
/// lease, so the node shows as down everywhere at once; when the database answers again, or etcd
/// comes back after losing the lease, it registers again. On graceful shutdown (SIGTERM) it revokes
/// the lease. The decisions are ``AgentStateMachine``'s; this type only does the I/O.
///
/// Not built on ``LeaseKeepAlive``: that service keeps a lease alive unconditionally, while here the
/// lease's life follows the database's checks (revoked after failures, granted again on recovery),
/// and every keep-alive travels with the beat's put.
public final class NodeAgent: Service, Sendable {
    public struct Options: Sendable {
        public var node: String
        public var interval: Duration
        /// Lease TTL in seconds (etcd 3.4's minimum is 2).
        public var ttl: Int64
        public var failuresBeforeRevoke: Int
        /// Row counts are refreshed every this many beats (they scan the node's tables).
        public var countEvery: Int
        public var version: String

        public init(node: String, interval: Duration = .seconds(1), ttl: Int64 = 3, failuresBeforeRevoke: Int = 2,
                    countEvery: Int = 10, version: String) {
            self.node = node
            self.interval = interval
            self.ttl = ttl
            self.failuresBeforeRevoke = failuresBeforeRevoke
            self.countEvery = countEvery
            self.version = version
        }
    }

    public let options: Options
    private let etcd: EtcdClient
    private let keys: MetadataKeys
    private let database: MariaDBConfiguration
    private let logger: Logger

    /// - Parameter database: how to reach the node; keep its timeouts short (they bound a check).
    public init(options: Options, etcd: EtcdClient, keys: MetadataKeys, database: MariaDBConfiguration, logger: Logger) {
        self.options = options
        self.etcd = etcd
        self.keys = keys
        self.database = database
        var logger = logger
        logger[metadataKey: "node"] = "\(options.node)"
        self.logger = logger
    }

    public func run() async throws {
        var beats = await cancelWhenGracefulShutdown {
            var beats = Beats(agent: self)
            await beats.loop()
            return beats
        }
        await beats.stop()
    }

    /// The loop's mutable state, owned by the one task that runs it.
    private struct Beats: Sendable {
        let agent: NodeAgent
        var machine: AgentStateMachine
        var lease: Int64?
        var sequence: Int64 = 0
        var connection: MariaDBConnection?
        var ranges: [Heartbeat.RangeRows] = []

        init(agent: NodeAgent) {
            self.agent = agent
            self.machine = AgentStateMachine(failuresBeforeRevoke: agent.options.failuresBeforeRevoke)
        }

        mutating func loop() async {
            let clock = ContinuousClock()
            var next = clock.now
            while !Task.isCancelled {
                await beat()
                // After a failed check or while unregistered (the database failed, or etcd lost the
                // lease): look four times as often, so a node that comes back is healthy again
                // within a fraction of a beat.
                let steady = machine.registered && machine.consecutiveFailures == 0
                next = next.advanced(by: steady ? agent.options.interval : agent.options.interval / 4)
                if next < clock.now { next = clock.now } // a slow beat (etcd or the database hung): no burst to catch up
                try? await clock.sleep(until: next)
            }
        }

        mutating func beat() async {
            let check = await checkDatabase()
            switch machine.beat(databaseOK: check.ok) {
            case .register:
                do {
                    let granted = try await agent.etcd.grantLease(ttl: agent.options.ttl)
                    lease = granted.id
                    try await put(check, lease: granted.id)
                    machine.registeredWithLease()
                    agent.logger.info("registered: heartbeat under a new lease", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
                } catch {
                    agent.logger.warning("cannot register with etcd yet", metadata: ["error": "\(error)"])
                }
            case .beat:
                guard let current = lease else { machine.leaseLost(); return }
                do {
                    guard try await agent.etcd.keepAliveOnce(current) != nil else {
                        agent.logger.warning("the heartbeat lease is gone (etcd unreachable for longer than the TTL?); registering again", metadata: ["lease": "\(current)"])
                        lease = nil
                        machine.leaseLost()
                        if check.ok { await beat() } // register now, not a beat later
                        return
                    }
                    try await put(check, lease: current)
                } catch {
                    agent.logger.warning("heartbeat not written", metadata: ["error": "\(error)"])
                }
            case .revoke:
                agent.logger.error("the database failed \(machine.consecutiveFailures) checks in a row; revoking the heartbeat lease", metadata: ["error": "\(check.error ?? "")"])
                if let current = lease { try? await agent.etcd.revokeLease(current) }
                lease = nil
                machine.revoked()
            case .none:
                break
            }
        }

        mutating func put(_ check: Heartbeat.Database, lease: Int64) async throws {
            sequence += 1
            let beat = Heartbeat(node: agent.options.node, timeMillis: Int64(Date().timeIntervalSince1970 * 1000), sequence: sequence,
                                 database: check, ranges: ranges, version: agent.options.version,
                                 intervalMillis: agent.options.interval.milliseconds)
            _ = try await agent.etcd.put(agent.keys.nodeHeartbeat(agent.options.node), value: beat.encoded(), lease: lease)
        }

        /// `SELECT 1` on the agent's own connection (reconnecting when needed); every
        /// `countEvery` good beats also the rows per range.
        mutating func checkDatabase() async -> Heartbeat.Database {
            let start = ContinuousClock.now
            do {
                let c: MariaDBConnection
                if let existing = connection, !existing.isBroken {
                    c = existing
                } else {
                    if let broken = connection { await broken.close() }
                    connection = nil
                    c = try await MariaDBConnection.connect(configuration: agent.database)
                    connection = c
                }
                _ = try await c.query("SELECT 1")
                let latency = ContinuousClock.now - start
                if ranges.isEmpty || sequence % Int64(agent.options.countEvery) == 0 {
                    ranges = try await Self.countRows(c)
                }
                return Heartbeat.Database(ok: true, latencyMicros: latency.microseconds)
            } catch {
                if let c = connection { await c.close() }
                connection = nil
                return Heartbeat.Database(ok: false, latencyMicros: (ContinuousClock.now - start).microseconds, error: "\(error)")
            }
        }

        static func countRows(_ c: MariaDBConnection) async throws -> [Heartbeat.RangeRows] {
            let rows = try await c.query("""
                SELECT r.map_name, r.range_id,
                  CASE r.map_name WHEN 'accounts' THEN (SELECT COUNT(*) FROM account_info a WHERE a.balance_range = r.range_id)
                                  ELSE (SELECT COUNT(*) FROM account_directory d WHERE d.directory_range = r.range_id) END AS n
                FROM range_ownership r WHERE r.state = 'active' ORDER BY r.map_name, r.range_id
                """).rows
            return try rows.map { Heartbeat.RangeRows(map: try $0.string("map_name"), range: try $0.string("range_id"), rows: try $0.int64("n")) }
        }

        /// Graceful shutdown: the key goes at once, not after the TTL.
        mutating func stop() async {
            if let current = lease {
                do {
                    try await agent.etcd.revokeLease(current)
                    agent.logger.info("stopped: heartbeat lease revoked", metadata: ["lease": "\(current)"])
                } catch {
                    agent.logger.warning("could not revoke the heartbeat lease; the node shows as down when it lapses", metadata: ["error": "\(error)"])
                }
            }
            lease = nil
            if let c = connection { await c.close() }
            connection = nil
        }
    }
}
