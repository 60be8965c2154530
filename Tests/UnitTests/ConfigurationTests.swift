import Foundation
import MariaDB
import ShardBankConfig
import Sharding
import Testing

@Suite("Configuration file and environment overrides")
final class ConfigurationTests {
    /// One directory per test (a suite instance per test): removed when the test ends.
    let dir = FileManager.default.temporaryDirectory.path + "/shardbank-config-" + UUID().uuidString
    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ text: String) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "s3cret\n".write(toFile: dir + "/pw", atomically: true, encoding: .utf8)
        let path = dir + "/shardbank.json"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("the example file in the repository loads")
    func example() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let configuration = try await ShardBankConfiguration.load(file: root.path + "/config/shardbank.example.json", environment: [:])
        #expect(configuration.nodes.map(\.id) == ["node1", "node2", "node3"])
        #expect(configuration.etcd.endpoints.count == 3)
        #expect(configuration.balanceLimit.ceiling == BalanceLimit.defaultCeiling)
    }

    @Test("ledger.max_balance: an amount within (0, 1,000,000,000,000,000.00]; the default without it")
    func maxBalance() async throws {
        let c = try await ShardBankConfiguration.load(file: try write(#"{"ledger": {"max_balance": "5000.00"}}"#), environment: [:])
        #expect(c.balanceLimit.ceiling == Money(minorUnits: 500_000))
        #expect(try await ShardBankConfiguration.load(file: nil, environment: [:]).balanceLimit == BalanceLimit())
    }

    @Test("ledger.move_wait_ms: how long an operation waits for a moving range; 3000 without it")
    func moveWait() async throws {
        let c = try await ShardBankConfiguration.load(file: try write(#"{"ledger": {"move_wait_ms": 750}}"#), environment: [:])
        #expect(c.moveWait == .milliseconds(750))
        #expect(try await ShardBankConfiguration.load(file: nil, environment: [:]).moveWait == .seconds(3))
    }

    @Test("file values, secrets from files relative to the file, and environment overrides")
    func layering() async throws {
        let path = try write("""
            {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "request_timeout_ms": 1500, "tls_ca_file": "pw"},
             "mysql": {"user": "bank", "password_file": "pw"},
             "cluster": {"nodes": ["n1"]}, "nodes": {"n1": {"host": "10.0.0.1", "port": 3307}}}
            """)
        let c = try await ShardBankConfiguration.load(file: path, environment: [
            "SHARDBANK_ETCD_ENDPOINTS": "http://a:1,http://b:2", "SHARDBANK_NODES_N1_PORT": "3308",
        ])
        #expect(c.etcd.endpoints == ["http://a:1", "http://b:2"])
        #expect(c.etcd.requestTimeout == .milliseconds(1500))
        #expect(c.etcd.tlsCAFile == URL(fileURLWithPath: path).deletingLastPathComponent().path + "/pw", "relative to the file")
        #expect(c.mysql.password == "s3cret")
        #expect(c.nodes.first?.port == 3308)
        #expect(c.mariaDB(node: "n1", host: "h", port: 1, database: "d").password == "s3cret")
    }

    @Test("malformed files name the field", arguments: [
        (#"{"etcd": {"endpoints": "http://x:1"}}"#, "etcd.endpoints"),
        (#"{"etcd": {"endpointz": ["http://x:1"]}}"#, "etcd.endpointz"),
        (#"{"mysql": {"pool": {"max_connections": "many"}}}"#, "mysql.pool.max_connections"),
        (#"{"mysql": {"pool": {"max_connections": 0}}}"#, "mysql.pool.max_connections"),
        (#"{"mysql": {"tls_mode": "sometimes"}}"#, "mysql.tls_mode"),
        (#"{"cluster": {"nodes": ["n1"]}}"#, "nodes.n1.host"),
        (#"{"etcd": {"endpoints": ["localhost"]}}"#, "etcd.endpoints"),
        (#"{"mysql": {"password_file": "missing-file"}}"#, "mysql.password_file"),
        (#"{"etcd": {"tls_ca_file": "missing-ca.pem"}}"#, "etcd.tls_ca_file"),
        (#"{"ledger": {"max_balance": "0.00"}}"#, "ledger.max_balance"),
        (#"{"ledger": {"max_balance": "1e12"}}"#, "ledger.max_balance"),
        (#"{"ledger": {"max_balance": "1000000000000000.01"}}"#, "ledger.max_balance"),
        (#"{"ledger": {"max_balance": 100}}"#, "ledger.max_balance"),
        (#"{"ledger": {"move_wait_ms": -1}}"#, "ledger.move_wait_ms"),
        (#"{"ledger": {"move_wait_ms": 600001}}"#, "ledger.move_wait_ms"),
        (#"{"cluster": {"nodes": ["a-node-id-of-26-characters"]}}"#, "cluster.nodes"),
    ])
    func malformed(text: String, field: String) async throws {
        let path = try write(text)
        do {
            _ = try await ShardBankConfiguration.load(file: path, environment: [:])
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.field == field)
            #expect(error.description.contains(field))
        }
    }

    @Test("a file that is not JSON is refused with the file named")
    func notJSON() async throws {
        let path = try write("{\"etcd\": ")
        do {
            _ = try await ShardBankConfiguration.load(file: path, environment: [:])
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains(path))
        }
    }

    @Test("credentials are read for every nodes.<id> entry, also a spare's that cluster.nodes does not list")
    func spareCredentials() async throws {
        let path = try write("""
            {"mysql": {"user": "bank"},
             "cluster": {"nodes": ["n1"]},
             "nodes": {"n1": {"host": "10.0.0.1"},
                       "spare1": {"host": "10.0.0.9", "user": "spare_user", "password_file": "pw"}}}
            """)
        let c = try await ShardBankConfiguration.load(file: path, environment: [:])
        #expect(c.nodes.map(\.id) == ["n1"], "a spare is not bootstrapped")
        #expect(c.hasCredentials(for: "spare1"))
        #expect(!c.hasCredentials(for: "n1"))
        let spare = c.mariaDB(node: "spare1", host: "10.0.0.9", port: 3306, database: "bank_db")
        #expect(spare.user == "spare_user")
        #expect(spare.password == "s3cret")
    }

    @Test("a spare's password_file that cannot be read is refused, naming the field")
    func spareMissingPasswordFile() async throws {
        let path = try write(#"{"nodes": {"spare1": {"host": "h", "password_file": "missing"}}}"#)
        await #expect(throws: ConfigurationError.self) { _ = try await ShardBankConfiguration.load(file: path, environment: [:]) }
        do { _ = try await ShardBankConfiguration.load(file: path, environment: [:]) } catch {
            #expect(error.field == "nodes.spare1.password_file")
        }
    }

    @Test("reloaded: credentials added to the file after loading are read, also a node only the environment names")
    func reloadedCredentials() async throws {
        let path = try write(#"{"cluster": {"nodes": ["n1"]}, "nodes": {"n1": {"host": "10.0.0.1"}}}"#)
        let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let c = try await ShardBankConfiguration.load(file: path, environment: [
            "SHARDBANK_NODES_NODE9_USER": "nine", "SHARDBANK_NODES_NODE9_PASSWORD_FILE": dir + "/pw9", "HOME": "/root",
        ])
        #expect(!c.hasCredentials(for: "n4"))
        try """
            {"cluster": {"nodes": ["n1"]}, "nodes": {"n1": {"host": "10.0.0.1"}, "n4": {"host": "10.0.0.4", "user": "four", "password_file": "pw"}}}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let again = try await c.reloaded()
        #expect(again.hasCredentials(for: "n4"))
        #expect(again.mariaDB(node: "n4", host: "h", port: 1, database: "d").password == "s3cret")
        // node9 is named only by the environment (the file has no entry): read when asked for.
        try "nine's\n".write(toFile: dir + "/pw9", atomically: true, encoding: .utf8)
        #expect(!again.hasCredentials(for: "node9"))
        let nine = try await c.reloaded(readingCredentialsOf: "node9")
        #expect(nine.mariaDB(node: "node9", host: "h", port: 1, database: "d").user == "nine")
        #expect(nine.mariaDB(node: "node9", host: "h", port: 1, database: "d").password == "nine's")
    }

    @Test("descriptions of configurations name no password")
    func noPasswordInDescriptions() async throws {
        let path = try write("""
            {"mysql": {"user": "bank", "password_file": "pw"}, "cluster": {"nodes": ["n1"]},
             "nodes": {"n1": {"host": "10.0.0.1", "password_file": "pw"}, "spare1": {"host": "10.0.0.9", "password_file": "pw"}}}
            """)
        let c = try await ShardBankConfiguration.load(file: path, environment: [:])
        let database = c.mariaDB(node: "spare1", host: "10.0.0.9", port: 3306, database: "bank_db")
        for text in ["\(c)", String(reflecting: c), "\(c.mysql)", String(reflecting: c.mysql), "\(database)", String(reflecting: database)] {
            #expect(!text.contains("s3cret"), "\(text)")
        }
        #expect("\(database)".contains("spare1"))
    }
}
