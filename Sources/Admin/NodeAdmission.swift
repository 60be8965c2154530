import BankSchema
import ClusterMetadata
import Foundation
import Health
import Ledger
import Logging
import MariaDB
import ShardBankConfig

/// `ctl add-node`: a new storage node joins a running cluster. It is connected to with the
/// configuration's credentials, refused when its database holds a bank already, migrated,
/// registered `joining` (every `serve` opens a pool for it), and made `active` — a node that may
/// receive ranges — once its agent beats healthy.
public struct NodeAdmission: Sendable {
    public var id: String
    public var host: String
    public var port: Int
    public var database: String
    public var tlsMode: String
    /// How long to wait for the node's agent to beat healthy.
    public var wait: Duration

    public init(id: String, host: String, port: Int, database: String, tlsMode: String = "disabled", wait: Duration = .seconds(15)) {
        self.id = id
        self.host = host
        self.port = port
        self.database = database
        self.tlsMode = tlsMode
        self.wait = wait
    }

    /// Why a node was not admitted, in a sentence that says what to do.
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var description: String
        /// The node was registered `joining`, but its agent did not beat healthy in time.
        public var registered: Bool
        init(_ description: String, registered: Bool = false) {
            self.description = description
            self.registered = registered
        }
    }

    /// Checks the input, then admits the node; returns it as registered at the end (`active`).
    /// A node registered `joining` by an earlier run that gave up waiting is taken up again.
    public func run(configuration: ShardBankConfiguration, store: MetadataStore, logger: Logger,
                    progress: @Sendable (String) -> Void) async throws -> NodeInfo {
        guard BranchName.validate(transferID: "x", nodes: [id]), id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw Refusal("node id \(id) must be 1–\(BranchName.maxNodeIDLength) letters, digits, - or _")
        }
        guard (1...65535).contains(port) else { throw Refusal("--port must be between 1 and 65535") }
        guard ["disabled", "required", "verify_ca", "verify_identity"].contains(tlsMode) else {
            throw Refusal("--tls-mode must be one of disabled, required, verify_ca, verify_identity")
        }
        let nodes = try await store.nodes()
        if let known = nodes.first(where: { $0.id == id }), known.state != .joining {
            throw Refusal("node id \(id) is registered already (\(known.state.rawValue)); registered: \(nodes.map(\.id).sorted().joined(separator: ", "))")
        }
        if let same = nodes.first(where: { $0.id != id && $0.host == host && $0.port == port && $0.database == database && $0.state != .removed }) {
            throw Refusal("\(host):\(port)/\(database) is node \(same.id) already")
        }
        // A drained node's database under a new id: a process that missed the removal may still
        // write to it under the old id (its fence would let it: the ranges are there again), and
        // the resolvers roll back branches naming a removed commit point.
        if let same = nodes.first(where: { $0.id != id && $0.host == host && $0.port == port && $0.database == database && $0.state == .removed }) {
            throw Refusal("\(host):\(port)/\(database) was node \(same.id), which is removed (drained): give the new node another database on that server (a fresh, empty schema, --database), so that nothing still addressing \(same.id) can write to it")
        }
        var node = NodeInfo(id: id, host: host, port: port, database: database, tlsMode: tlsMode, state: .joining)
        progress("connecting to \(id) at \(host):\(port) as the configuration's user")
        let connection: MariaDBConnection
        do {
            connection = try await MariaDBConnection.connect(configuration: configuration.mariaDB(node: id, host: host, port: port, database: database, tlsMode: tlsMode))
        } catch {
            throw Refusal("cannot connect to \(id) at \(host):\(port)/\(database): \(error) — check the address, that the database exists, and the password (nodes.\(id).password_file or mysql.password_file)")
        }
        do {
            try await Self.refuseIfInUse(connection, id: id)
            progress("bringing \(id)'s schema up to date")
            _ = try await BankSchema.migrate(connection, logger: logger)
            await connection.close()
        } catch {
            await connection.close()
            throw error
        }
        progress("registering \(id) as joining")
        try await store.register(node)
        progress("waiting up to \(wait) for \(id)'s agent to beat healthy")
        guard try await healthyBeat(store) else {
            throw Refusal("\(id) is registered (joining) but no healthy heartbeat came within \(wait): start its agent (`shardbank agent --node \(id) --config FILE`), then add the node again", registered: true)
        }
        node.state = .active
        try await store.register(node)
        progress("\(id) is active: it may receive ranges (`shardbank ctl move RANGE --to \(id)`)")
        return node
    }

    /// A database that holds ranges or accounts belongs to a bank already (another cluster's, or a
    /// node removed without being emptied): never mixed into this one.
    static func refuseIfInUse(_ c: MariaDBConnection, id: String) async throws {
        let tables = Set(try await c.execute("SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()").rows.map { try $0.string("t") })
        var held: [String] = []
        if tables.contains("range_ownership"),
           let n = try await c.execute("SELECT COUNT(*) AS n FROM range_ownership").rows.first?.int64("n"), n > 0 { held.append("\(n) ranges") }
        if tables.contains("account_info"),
           let n = try await c.execute("SELECT COUNT(*) AS n FROM account_info").rows.first?.int64("n"), n > 0 { held.append("\(n) accounts") }
        guard held.isEmpty else {
            throw Refusal("\(id)'s database holds \(held.joined(separator: " and ")): it belongs to a bank already (another cluster's, or a node removed without being emptied); give an empty database")
        }
    }

    /// Whether the node's agent beats healthy within ``wait`` (judged as `ctl status` does).
    func healthyBeat(_ store: MetadataStore) async throws -> Bool {
        let deadline = ContinuousClock.now + wait
        repeat {
            if let kv = try await store.etcd.get(store.keys.nodeHeartbeat(id)), let beat = Heartbeat.decode(kv.value) {
                let age = Duration.milliseconds(max(0, Int64(Date().timeIntervalSince1970 * 1000) - beat.timeMillis))
                if NodeHealth.judge(node: id, beat: beat, age: age, poolErrorAge: nil).state == .healthy { return true }
            }
            try await Task.sleep(for: .milliseconds(250))
        } while ContinuousClock.now < deadline
        return false
    }
}
