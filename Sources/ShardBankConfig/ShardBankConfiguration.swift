import Configuration
import Etcd
import Foundation
import Logging
import MariaDB
import Sharding
import SystemPackage

/// Everything a ShardBank process is configured with: one JSON file (the seed's `appsettings.json`),
/// every value overridable by an environment variable `SHARDBANK_<PATH>` (e.g. `etcd.endpoints` →
/// `SHARDBANK_ETCD_ENDPOINTS=http://a:2379,http://b:2379`). Secrets come from files named in the
/// configuration (`*.password_file`), never from etcd. See `config/shardbank.example.json`.
public struct ShardBankConfiguration: Sendable {
    /// A storage node to bootstrap (`ctl init`): where it is. Credentials are in ``MySQL``.
    public struct Node: Sendable, Hashable {
        public var id: String
        public var host: String
        public var port: Int
        public var database: String
        public var tlsMode: MariaDBConfiguration.TLSMode
    }

    /// How to log in to the storage nodes. Its description leaves the passwords out.
    public struct MySQL: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
        public var user: String
        public var password: String
        /// Per-node overrides of user and password: every `nodes.<id>` entry that names a `user` or
        /// a password, whether or not `cluster.nodes` lists the node (a spare added later needs its
        /// credentials as much as a bootstrapped node does).
        public var credentials: [String: (user: String, password: String)]
        public var connectTimeout: Int
        public var readTimeout: Int
        public var writeTimeout: Int
        public var tlsMode: MariaDBConfiguration.TLSMode
        public var tlsCAFile: String?
        public var pool: MariaDBPool.Options

        public var description: String {
            let nodes = credentials.keys.sorted().map { "\($0): user \(credentials[$0]!.user)" }.joined(separator: ", ")
            return "MySQL(user: \(user), password: <redacted>, per-node credentials: [\(nodes)], tls_mode: \(tlsMode.rawValue))"
        }

        public var debugDescription: String { description }
    }

    public var sourceFile: String?
    public var logLevel: Logger.Level
    public var etcd: EtcdConfiguration
    /// Prefix of every ShardBank key in etcd.
    public var etcdPrefix: String
    public var mysql: MySQL
    /// The nodes `ctl init` registers (ids from `cluster.nodes`, addresses from `nodes.<id>`).
    public var nodes: [Node]
    public var httpHost: String
    public var httpPort: Int
    /// The highest balance an account may hold (`ledger.max_balance`, a decimal string).
    public var balanceLimit: BalanceLimit
    /// How long an operation waits for a range frozen by a move to switch before it answers
    /// `range_moving` (`ledger.move_wait_ms`, default 3000).
    public var moveWait: Duration = .seconds(3)
    /// `http.admin_routes`: serve the cluster's admin routes (range moves, jobs). Off by default:
    /// anyone who reaches the port could use them (API tokens with an admin role come later).
    public var adminRoutes = false
    /// The `SHARDBANK_*` environment it was loaded with, so ``reloaded(readingCredentialsOf:)``
    /// reads the same overrides.
    var environment: [String: String] = [:]

    /// Whether this configuration has credentials of its own for node `id` (a `nodes.<id>` entry
    /// naming a user or a password); without them the `mysql` ones are used.
    public func hasCredentials(for id: String) -> Bool { mysql.credentials[id] != nil }

    /// The configuration read again from the same file with the same environment overrides — the
    /// password files included, so an operator can add a node's credentials while the process
    /// runs. With `node`, that node's `nodes.<node>.user` and password are read even when
    /// neither `cluster.nodes` nor the file's `nodes` section names it (e.g. only the environment
    /// does: `SHARDBANK_NODES_NODE4_PASSWORD_FILE`).
    public func reloaded(readingCredentialsOf node: String? = nil) async throws(ConfigurationError) -> ShardBankConfiguration {
        try await Self.load(file: sourceFile, environment: environment, credentialsOf: node.map { [$0] } ?? [])
    }

    /// The driver configuration for a node at a registered address.
    public func mariaDB(node id: String, host: String, port: Int, database: String, tlsMode: String? = nil) -> MariaDBConfiguration {
        let credentials = mysql.credentials[id] ?? (mysql.user, mysql.password)
        return MariaDBConfiguration(
            label: id, host: host, port: port, user: credentials.user, password: credentials.password, database: database,
            connectTimeout: mysql.connectTimeout, readTimeout: mysql.readTimeout, writeTimeout: mysql.writeTimeout,
            tlsMode: tlsMode.flatMap(MariaDBConfiguration.TLSMode.init(rawValue:)) ?? mysql.tlsMode, tlsCAFile: mysql.tlsCAFile)
    }

    /// Loads `file` (optional: environment variables alone may configure everything) and applies
    /// the environment's overrides. Errors name the file and the field.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) async throws(ConfigurationError) -> ShardBankConfiguration {
        try await load(file: file, environment: environment, credentialsOf: [])
    }

    private static func load(file: String?, environment: [String: String], credentialsOf extraNodes: [String]) async throws(ConfigurationError) -> ShardBankConfiguration {
        // Only the SHARDBANK_ variables configure anything; the rest is not kept for a reload.
        let environment = environment.filter { $0.key.uppercased().hasPrefix("SHARDBANK_") }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: environment).prefixKeys(with: ["shardbank"]),
        ]
        var baseDirectory = FileManager.default.currentDirectoryPath
        var fileNodes: [String] = []
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigurationError(file: file, field: nil, "the file does not exist or cannot be read")
            }
            fileNodes = try ConfigurationSchema.validate(data, file: file)
            do {
                providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(file)))
            } catch {
                throw ConfigurationError(file: file, field: nil, "cannot be read as JSON: \(error)")
            }
            baseDirectory = URL(fileURLWithPath: file).deletingLastPathComponent().path
        }
        let r = Reader(reader: ConfigReader(providers: providers), file: file, baseDirectory: baseDirectory)
        var configuration = try r.configuration(credentialNodes: fileNodes + extraNodes)
        configuration.environment = environment
        return configuration
    }
}

extension ShardBankConfiguration: CustomStringConvertible, CustomDebugStringConvertible {
    /// What a log may say about the configuration: no password (the `mysql` and etcd ones are redacted).
    public var description: String {
        "ShardBankConfiguration(file: \(sourceFile ?? "none"), etcd: \(etcd.endpoints.joined(separator: ",")) prefix \(etcdPrefix)"
            + (etcd.username.map { " user \($0)" } ?? "") + (etcd.password == nil ? "" : " password <redacted>")
            + ", mysql: \(mysql), nodes: \(nodes.map(\.id).joined(separator: ",")), http: \(httpHost):\(httpPort))"
    }

    public var debugDescription: String { description }
}

/// A configuration problem: which file, which field, what is wrong, and what to do.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var file: String?
    public var field: String?
    public var message: String

    public init(file: String?, field: String?, _ message: String) {
        self.file = file
        self.field = field
        self.message = message
    }

    public var description: String {
        var s = "configuration error"
        if let file { s += " in \(file)" }
        if let field { s += ": field \(field) (environment SHARDBANK_\(field.uppercased().replacingOccurrences(of: ".", with: "_")))" }
        return s + ": " + message
    }
}

/// Typed reads with defaults, turning conversion failures into errors that name the field.
private struct Reader {
    let reader: ConfigReader
    let file: String?
    let baseDirectory: String

    private func fail(_ field: String, _ message: String) -> ConfigurationError {
        ConfigurationError(file: file, field: field, message)
    }

    private func isMissing(_ error: any Error) -> Bool { "\(error)".hasPrefix("Missing required") }

    func string(_ key: String) throws(ConfigurationError) -> String? {
        do { return try reader.requiredString(forKey: ConfigKey(key)) } catch {
            if isMissing(error) { return nil }
            throw fail(key, "must be a string")
        }
    }

    func int(_ key: String, default value: Int, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        let v: Int
        do { v = try reader.requiredInt(forKey: ConfigKey(key)) } catch {
            if isMissing(error) { return value }
            throw fail(key, "must be a whole number")
        }
        guard range.contains(v) else { throw fail(key, "must be between \(range.lowerBound) and \(range.upperBound), not \(v)") }
        return v
    }

    func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        do { return try reader.requiredBool(forKey: ConfigKey(key)) } catch {
            if isMissing(error) { return nil }
            throw fail(key, "must be true or false")
        }
    }

    func strings(_ key: String) throws(ConfigurationError) -> [String]? {
        do { return try reader.requiredStringArray(forKey: ConfigKey(key)) } catch {
            if isMissing(error) { return nil }
            throw fail(key, "must be a list of strings")
        }
    }

    /// A secret: read from `<key>_file` (preferred), or `<key>` itself (e.g. from the environment).
    func secret(_ key: String) throws(ConfigurationError) -> String? {
        if let path = try string(key + "_file"), !path.isEmpty {
            let full = path.hasPrefix("/") ? path : baseDirectory + "/" + path
            guard let data = FileManager.default.contents(atPath: full) else {
                throw fail(key + "_file", "the secret file \(full) does not exist or cannot be read")
            }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        return try string(key)
    }

    func tlsMode(_ key: String, default value: MariaDBConfiguration.TLSMode) throws(ConfigurationError) -> MariaDBConfiguration.TLSMode {
        guard let s = try string(key) else { return value }
        guard let mode = MariaDBConfiguration.TLSMode(rawValue: s) else {
            throw fail(key, "must be one of \(MariaDBConfiguration.TLSMode.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(s)\"")
        }
        return mode
    }

    /// The configuration; credentials are read for every node of `cluster.nodes` and of `credentialNodes`
    /// (the file's `nodes` entries, and any node a reload asks for).
    func configuration(credentialNodes: [String]) throws(ConfigurationError) -> ShardBankConfiguration {
        let levelText = try string("logging.level") ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else {
            throw fail("logging.level", "must be one of trace, debug, info, notice, warning, error, critical")
        }
        let endpoints = try strings("etcd.endpoints") ?? ["http://127.0.0.1:2379"]
        guard !endpoints.isEmpty else { throw fail("etcd.endpoints", "must name at least one etcd member") }
        for e in endpoints where !(e.hasPrefix("http://") || e.hasPrefix("https://")) || URL(string: e)?.port == nil {
            throw fail("etcd.endpoints", "\"\(e)\" is not a URL like http://127.0.0.1:2379")
        }
        let username = try string("etcd.username").flatMap { $0.isEmpty ? nil : $0 }
        let etcdPassword = try secret("etcd.password")
        if username != nil && etcdPassword == nil {
            throw fail("etcd.password_file", "etcd.username is set, so a password is required")
        }
        var etcdCAFile: String?
        if let path = try string("etcd.tls_ca_file"), !path.isEmpty {
            let full = path.hasPrefix("/") ? path : baseDirectory + "/" + path
            guard FileManager.default.isReadableFile(atPath: full) else {
                throw fail("etcd.tls_ca_file", "the CA file \(full) does not exist or cannot be read")
            }
            etcdCAFile = full
        }
        let etcd = EtcdConfiguration(
            endpoints: endpoints, username: username, password: etcdPassword,
            connectTimeout: .milliseconds(try int("etcd.connect_timeout_ms", default: 1000, range: 50...60_000)),
            requestTimeout: .milliseconds(try int("etcd.request_timeout_ms", default: 2000, range: 100...120_000)),
            tlsCAFile: etcdCAFile)
        let prefix = try string("etcd.prefix") ?? "/shardbank/"
        guard prefix.hasPrefix("/") else { throw fail("etcd.prefix", "must start with /") }

        let user = try string("mysql.user") ?? "bank"
        let password = try secret("mysql.password") ?? ""
        var credentials: [String: (user: String, password: String)] = [:]
        var nodes: [ShardBankConfiguration.Node] = []
        let defaultTLS = try tlsMode("mysql.tls_mode", default: .disabled)
        for id in try strings("cluster.nodes") ?? [] {
            guard !id.isEmpty, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw fail("cluster.nodes", "node id \"\(id)\" may contain only ASCII letters, digits, - and _")
            }
            guard id.utf8.count <= 25 else {
                throw fail("cluster.nodes", "node id \"\(id)\" is longer than 25 characters (two node ids and an attempt id name an XA branch in 64 bytes)")
            }
            guard let host = try string("nodes.\(id).host") else { throw fail("nodes.\(id).host", "node \(id) is listed in cluster.nodes but has no host") }
            nodes.append(.init(id: id, host: host, port: try int("nodes.\(id).port", default: 3306, range: 1...65535),
                               database: try string("nodes.\(id).database") ?? "bank_db", tlsMode: try tlsMode("nodes.\(id).tls_mode", default: defaultTLS)))
        }
        if Set(nodes.map(\.id)).count != nodes.count { throw fail("cluster.nodes", "lists a node twice") }
        // Every node the configuration describes, not only those `ctl init` registers: a spare
        // registered later is reached with its own credentials too.
        for id in Set(nodes.map(\.id) + credentialNodes).sorted() {
            let nodeUser = try string("nodes.\(id).user")
            let nodePassword = try secret("nodes.\(id).password")
            if nodeUser != nil || nodePassword != nil { credentials[id] = (nodeUser ?? user, nodePassword ?? password) }
        }

        let mysql = ShardBankConfiguration.MySQL(
            user: user, password: password, credentials: credentials,
            connectTimeout: try int("mysql.connect_timeout_s", default: 3, range: 1...600),
            readTimeout: try int("mysql.read_timeout_s", default: 30, range: 1...3600),
            writeTimeout: try int("mysql.write_timeout_s", default: 30, range: 1...3600),
            tlsMode: defaultTLS, tlsCAFile: try string("mysql.tls_ca_file").flatMap { $0.isEmpty ? nil : $0 },
            pool: MariaDBPool.Options(
                maxConnections: try int("mysql.pool.max_connections", default: 32, range: 1...4096),
                acquireTimeout: .milliseconds(try int("mysql.pool.acquire_timeout_ms", default: 2000, range: 1...600_000))))
        var configuration = ShardBankConfiguration(
            sourceFile: file, logLevel: level, etcd: etcd, etcdPrefix: prefix, mysql: mysql, nodes: nodes,
            httpHost: try string("http.host") ?? "127.0.0.1", httpPort: try int("http.port", default: 8080, range: 0...65535),
            balanceLimit: try balanceLimit("ledger.max_balance"))
        configuration.moveWait = .milliseconds(try int("ledger.move_wait_ms", default: 3000, range: 0...60_000))
        configuration.adminRoutes = try bool("http.admin_routes") ?? false
        return configuration
    }

    func balanceLimit(_ key: String) throws(ConfigurationError) -> BalanceLimit {
        guard let text = try string(key) else { return BalanceLimit() }
        let ceiling: Money
        do { ceiling = try Money(parsing: text) } catch {
            throw fail(key, "must be an amount such as \"1000000000000.00\": \(error.description)")
        }
        guard ceiling.minorUnits > 0, ceiling <= BalanceLimit.maximumCeiling else {
            throw fail(key, "must be more than 0.00 and at most \(BalanceLimit.maximumCeiling), not \(ceiling)")
        }
        return BalanceLimit(ceiling: ceiling)
    }
}
