import Admin
import BankSchema
import ClusterMetadata
import Etcd
import Foundation
@_spi(FaultInjection) import Ledger
import LocalCluster
import Logging
import MariaDB
import Sharding
import Synchronization
import Testing

/// Tests log to nowhere unless SHARDBANK_TEST_LOG is set; the logger is passed in, never bootstrapped.
let testLogger: Logger = {
    var logger = Logger(label: "shardbank.test", factory: { _ in SwiftLogNoOpLogHandler() })
    if ProcessInfo.processInfo.environment["SHARDBANK_TEST_LOG"] != nil {
        logger = Logger(label: "shardbank.test", factory: { StreamLogHandler.standardError(label: $0) })
        logger.logLevel = .debug
    }
    return logger
}()

/// Every cluster a test started, stopped at process exit even when a test fails; likewise every
/// lone process a test spawned outside a cluster (with the directory its command line names).
private let startedClusters = Mutex<[LocalCluster]>([])
private let startedProcesses = Mutex<[(pid: Int32, dir: String)]>([])
private let exitHook: Void = {
    atexit {
        startedClusters.withLock { $0.forEach { $0.destroy() } }
        startedProcesses.withLock { processes in
            for p in processes where Processes.commandLine(p.pid)?.contains(p.dir) == true { Processes.terminate(p.pid, timeout: .seconds(5)) }
        }
    }
}()

/// Registers a process a test spawned by hand (its command line names `dir`): if the test does not
/// stop it on its way out (a crash, an abort), the exit hook does.
func stopAtExit(_ pid: Int32, dir: String) {
    _ = exitHook
    startedProcesses.withLock { $0.append((pid, dir)) }
}

/// Fails the test, naming `what`, unless `condition` holds within `limit` (polled every 50 ms).
/// The limit is a deadline against hangs, not a speed requirement: make it generous.
func eventually(_ what: String, within limit: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw DeadlineExceeded(what: what, limit: limit) }
        try await Task.sleep(for: .milliseconds(50))
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    var what: String
    var limit: Duration
    var description: String { "not within \(limit): \(what)" }
}

/// Starts a fresh cluster of real processes in a temporary directory.
func startCluster(nodes: Int = 1, spare: Int = 0, etcd: Int = 1, etcdArguments: [String] = [], mariadbOptions: [String] = []) async throws -> LocalCluster {
    _ = exitHook
    let dir = FileManager.default.temporaryDirectory.path + "/shardbank-test-" + UUID().uuidString.prefix(8)
    let cluster = try await LocalCluster.start(dir: dir, nodes: nodes, spare: spare, etcdMembers: etcd, etcdArguments: etcdArguments,
                                               mariadbOptions: mariadbOptions, logger: testLogger)
    startedClusters.withLock { $0.append(cluster) }
    return cluster
}

/// Runs `body` with a fresh cluster and destroys it afterwards.
func withCluster<T>(nodes: Int = 1, spare: Int = 0, etcd: Int = 1, etcdArguments: [String] = [], mariadbOptions: [String] = [],
                   _ body: (inout LocalCluster) async throws -> T) async throws -> T {
    var cluster = try await startCluster(nodes: nodes, spare: spare, etcd: etcd, etcdArguments: etcdArguments, mariadbOptions: mariadbOptions)
    do {
        let result = try await body(&cluster)
        cluster.destroy()
        return result
    } catch {
        cluster.destroy()
        throw error
    }
}

func etcdClient(_ cluster: LocalCluster, username: String? = nil, password: String? = nil) -> EtcdClient {
    EtcdClient(configuration: EtcdConfiguration(endpoints: cluster.description.etcd.endpoints, username: username, password: password), logger: testLogger)
}

func connect(_ cluster: LocalCluster, _ node: String = "node1") async throws -> MariaDBConnection {
    try await MariaDBConnection.connect(configuration: cluster.bankConfiguration(node))
}

/// Runs `body` with an etcd client that is shut down afterwards, whatever happens.
@discardableResult
func withEtcd<T>(_ cluster: LocalCluster, username: String? = nil, password: String? = nil, requestTimeout: Duration = .seconds(2),
                 _ body: (EtcdClient) async throws -> T) async throws -> T {
    try await EtcdClient.with(configuration: EtcdConfiguration(endpoints: cluster.description.etcd.endpoints, username: username, password: password,
                                                               requestTimeout: requestTimeout), logger: testLogger, body)
}

/// The seed layout's maps, as `ctl init` writes them by default.
let seedMaps = LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())

/// Runs `body` with a fresh three-node cluster initialised by `ctl init` (with `maps`, the seed
/// layout by default) and an etcd client to it.
func withInitialisedCluster(maps: LedgerMaps = seedMaps, _ body: (inout LocalCluster, EtcdClient) async throws -> Void) async throws {
    try await withCluster(nodes: 3, etcd: 1) { cluster in
        let configuration = try await configurationFor(cluster)
        try await withEtcd(cluster) { etcd in
            try await Bootstrap(configuration: configuration, accounts: maps.accounts, directory: maps.directory)
                .run(etcd: etcd, logger: testLogger, progress: { _ in })
            try await body(&cluster, etcd)
        }
    }
}

/// A test CA and a server certificate for 127.0.0.1 made with `openssl`, a second certificate
/// from the same CA for another host name only, and a second CA that signed nothing. Returns the paths.
func makeCertificates(in dir: String) throws -> (ca: String, otherCA: String, cert: String, key: String, otherNameCert: String, otherNameKey: String) {
    guard let openssl = Processes.which("openssl") else {
        throw LocalClusterError("openssl is missing: install it with `apt-get install -y openssl`")
    }
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    func file(_ name: String) -> String { dir + "/" + name }
    try "subjectAltName=IP:127.0.0.1\n".write(toFile: file("san.ext"), atomically: true, encoding: .utf8)
    try "subjectAltName=DNS:not-this-host.invalid\n".write(toFile: file("other-name.ext"), atomically: true, encoding: .utf8)
    let steps: [[String]] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", file("ca.key"), "-out", file("ca.pem"), "-days", "2", "-subj", "/CN=ShardBank test CA"],
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", file("other.key"), "-out", file("other.pem"), "-days", "2", "-subj", "/CN=Some other CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", file("server.key"), "-out", file("server.csr"), "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", file("server.csr"), "-CA", file("ca.pem"), "-CAkey", file("ca.key"), "-CAcreateserial",
         "-out", file("server.pem"), "-days", "2", "-extfile", file("san.ext")],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", file("other-name.key"), "-out", file("other-name.csr"), "-subj", "/CN=not-this-host.invalid"],
        ["x509", "-req", "-in", file("other-name.csr"), "-CA", file("ca.pem"), "-CAkey", file("ca.key"), "-CAcreateserial",
         "-out", file("other-name.pem"), "-days", "2", "-extfile", file("other-name.ext")],
    ]
    for step in steps {
        let status = try Processes.run(openssl, step, logFile: file("openssl.log"))
        guard status == 0 else { throw LocalClusterError("openssl \(step[0]) failed; see \(dir)/openssl.log") }
    }
    return (file("ca.pem"), file("other.pem"), file("server.pem"), file("server.key"), file("other-name.pem"), file("other-name.key"))
}

/// A bootstrapped three-node cluster (`maps`, the seed layout by default) and a Bank over it; with
/// `captureTriggers`, the capture triggers installed on every node, as a mover does on its source.
func withBank(maps: LedgerMaps = seedMaps, captureTriggers: Bool = false,
              _ body: (LocalCluster, Bank, NodeConnections) async throws -> Void) async throws {
    try await withInitialisedCluster(maps: maps) { cluster, etcd in
        let connections = NodeConnections(logger: testLogger)
        for node in ["node1", "node2", "node3"] {
            await connections.register(node: node, configuration: try cluster.bankConfiguration(node), options: .init(maxConnections: 24))
            if captureTriggers { try await connections.withConnection(node) { try await BankSchema.installCaptureTriggers($0) } }
        }
        let allocator = IDAllocator(store: MetadataStore(etcd: etcd, keys: MetadataKeys()), blockSize: 50)
        let bank = Bank(connections: connections, maps: { maps }, nextAccountID: { try await allocator.nextID() }, logger: testLogger)
        do {
            try await body(cluster, bank, connections)
        } catch {
            await connections.shutdown()
            throw error
        }
        await connections.shutdown()
    }
}

func money(_ text: String) -> Money { try! Money(parsing: text) }

/// A second coordinator over the same nodes (seed maps) that dies — drops its connections without a
/// word, as a killed process would — when two-phase commit reaches a step `step` accepts. `nextID`
/// gives the ids of the accounts it opens.
func crashingBank(_ connections: NodeConnections, nextID: @escaping @Sendable () -> Int64 = { -1 },
                  at step: @escaping @Sendable (TwoPhaseStep) -> Bool) -> Bank {
    let maps = LedgerMaps(accounts: SeedLayout.accountsMap(), directory: SeedLayout.directoryMap())
    return Bank(connections: connections, maps: { maps }, nextAccountID: { nextID() }, logger: testLogger,
                faults: { if step($0) { throw CoordinatorCrash() } })
}

/// Prepared XA branches over every node.
func preparedCount(_ connections: NodeConnections) async throws -> Int {
    var n = 0
    for node in connections.nodes { n += try await connections.withConnection(node) { try await $0.xaRecover() }.count }
    return n
}

/// Waits (at most 15 s) until no branch is prepared on any node; records an issue otherwise.
func waitUntilNothingPrepared(_ connections: NodeConnections) async throws {
    for _ in 0..<150 where try await preparedCount(connections) > 0 { try await Task.sleep(for: .milliseconds(100)) }
    #expect(try await preparedCount(connections) == 0, "prepared branches left behind")
}

/// An in-doubt resolver passing over every node every `interval`, until the returned task is cancelled.
func startResolver(_ connections: NodeConnections, minimumAge: Duration, interval: Duration = .milliseconds(100)) -> Task<Void, Never> {
    let resolver = InDoubtResolver(connections: connections, minimumAge: minimumAge, interval: interval, logger: testLogger)
    return Task {
        while !Task.isCancelled {
            await resolver.resolveOnce()
            try? await Task.sleep(for: interval)
        }
    }
}

/// Runs `body` while a resolver passes over every node every 100 ms (branches older than 300 ms).
func withResolver<T: Sendable>(_ connections: NodeConnections, _ body: () async throws -> T) async throws -> T {
    let task = startResolver(connections, minimumAge: .milliseconds(300))
    defer { task.cancel() }
    return try await body()
}

/// Opens a home (debited) account and another, then lets a second coordinator that has seen both
/// (so it takes the lock-first path) die at `step` while moving 1.00 from home to the other with `key`.
@discardableResult
func crashedTransfer(_ bank: Bank, _ connections: NodeConnections, home homeBalance: String, other otherBalance: String,
                     key: String, at step: TwoPhaseStep) async throws -> (home: Account, other: Account) {
    let home = try await bank.openAccount(customerName: "Home", balance: money(homeBalance), idempotencyKey: "o-home")
    let other = try await bank.openAccount(customerName: "Other", balance: money(otherBalance), idempotencyKey: "o-other")
    let dying = crashingBank(connections) { $0 == step }
    _ = (try await dying.account(home.id), try await dying.account(other.id))
    await #expect(throws: CoordinatorCrash.self) {
        _ = try await dying.transfer(from: home.id, to: other.id, amount: money("1.00"), idempotencyKey: key)
    }
    return (home, other)
}
