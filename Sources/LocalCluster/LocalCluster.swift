#if canImport(Glibc)
import Glibc
#endif
import Etcd
import Foundation
import Logging
import MariaDB

/// Starts and controls a cluster of real `mariadbd` and `etcd` processes on loopback ports, all
/// state under one directory. Used by the integration tests and by `shardbank demo`.
public struct LocalCluster: Sendable {
    public private(set) var description: ClusterDescription
    let logger: Logger

    public var dir: String { description.dir }

    /// Names the Debian package of each program the launcher needs.
    public static let requiredPrograms: [(program: String, package: String)] = [
        ("mariadbd", "mariadb-server"), ("mariadb-install-db", "mariadb-server"), ("etcd", "etcd-server"),
    ]

    /// Fails with a message naming the package to install when a program is missing.
    public static func checkPrograms() throws {
        let missing = requiredPrograms.filter { Processes.which($0.program) == nil }
        guard missing.isEmpty else {
            let packages = Set(missing.map(\.package)).sorted().joined(separator: " ")
            throw LocalClusterError("missing \(missing.map(\.program).joined(separator: ", ")): install with `apt-get install -y \(packages)` (or run scripts/test, which installs them)")
        }
    }

    public init(description: ClusterDescription, logger: Logger) {
        self.description = description
        self.logger = logger
    }

    /// Loads `DIR/cluster.json`.
    public static func load(dir: String, logger: Logger) throws -> LocalCluster {
        let path = (dir as NSString).appendingPathComponent("cluster.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LocalClusterError("no cluster at \(dir): \(path) does not exist (start one with `shardbank demo up --dir \(dir)`)")
        }
        do {
            return LocalCluster(description: try JSONDecoder().decode(ClusterDescription.self, from: data), logger: logger)
        } catch {
            throw LocalClusterError("\(path) is not a cluster description: \(error)")
        }
    }

    /// Writes `DIR/cluster.json` (mode 0600: it holds the node passwords).
    public func save() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let path = (dir as NSString).appendingPathComponent("cluster.json")
        try encoder.encode(description).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o600)
    }

    // MARK: start

    /// Starts `nodes` + `spare` MariaDB servers and an `etcdMembers`-member etcd under `dir`, and
    /// returns once every one answers. On failure, stops whatever it started. `mariadbOptions` are
    /// extra `name=value` lines for every server's option file (e.g. `ssl_cert=…` for TLS).
    ///
    /// Ports come from `freePort` (free when asked, bound by the server a moment later): when a
    /// server exits at start-up because its port was taken in between, it is started again on new
    /// ports, up to `startAttempts` times.
    public static func start(dir: String, nodes: Int, spare: Int = 0, etcdMembers: Int, etcdArguments: [String] = [],
                             mariadbOptions: [String] = [], logger: Logger,
                             freePort: () throws -> Int = Processes.freePort, startAttempts: Int = 3,
                             progress: @Sendable (String) -> Void = { _ in }) async throws -> LocalCluster {
        try checkPrograms()
        let fm = FileManager.default
        let root = URL(fileURLWithPath: dir).standardizedFileURL.path
        if fm.fileExists(atPath: root + "/cluster.json") {
            throw LocalClusterError("\(root) already holds a cluster (cluster.json exists): stop it with `shardbank demo down --dir \(root)` or choose another directory")
        }
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        let token = "shardbank-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)

        var members: [ClusterDescription.EtcdMember] = []
        for i in 1...max(1, etcdMembers) {
            let client = try freePort()
            let peer = try freePort()
            members.append(.init(name: "etcd\(i)", clientURL: "http://127.0.0.1:\(client)", peerURL: "http://127.0.0.1:\(peer)",
                                 pid: 0, dataDir: root + "/etcd\(i)/data", logFile: root + "/etcd\(i)/etcd.log"))
        }
        let initialCluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        var description = ClusterDescription(
            dir: root,
            etcd: .init(endpoints: members.map(\.clientURL), members: members, initialCluster: initialCluster, clusterToken: token,
                        extraArguments: etcdArguments.isEmpty ? nil : etcdArguments),
            nodes: [])
        for i in stride(from: 1, through: nodes + spare, by: 1) {
            let id = "node\(i)"
            let nodeDir = root + "/" + id
            description.nodes.append(.init(
                id: id, host: "127.0.0.1", port: try freePort(), database: "bank_db", user: "bank",
                password: randomPassword(), pid: 0, spare: i > nodes, dataDir: nodeDir + "/data",
                socket: nodeDir + "/mysqld.sock", configFile: nodeDir + "/my.cnf", logFile: nodeDir + "/mariadbd.log"))
        }
        var cluster = LocalCluster(description: description, logger: logger)
        var etcdLogStarts: [String: UInt64] = [:]
        do {
            for i in cluster.description.etcd.members.indices {
                try cluster.spawnEtcd(i, new: true)
            }
            try cluster.save()
            for i in cluster.description.nodes.indices {
                progress("starting mariadbd \(cluster.description.nodes[i].id)")
                try cluster.installNode(i, options: mariadbOptions)
                for attempt in 1...max(1, startAttempts) {
                    let logStart = Self.size(of: cluster.description.nodes[i].logFile)
                    try cluster.spawnNode(i)
                    try cluster.save()
                    do {
                        try await cluster.waitNodeReady(i)
                        break
                    } catch {
                        let node = cluster.description.nodes[i]
                        guard attempt < startAttempts, !Processes.isAlive(node.pid),
                              Self.text(of: node.logFile, from: logStart).contains("Address already in use") else { throw error }
                        let port = try freePort()
                        logger.notice("mariadbd could not bind its port; starting it again on another", metadata: ["node": "\(node.id)", "port": "\(node.port)", "new_port": "\(port)"])
                        cluster.description.nodes[i].port = port
                        try cluster.writeNodeOptions(i, options: mariadbOptions)
                    }
                }
                try await cluster.createBankUser(i)
            }
            progress("waiting for etcd")
            for attempt in 1...max(1, startAttempts) {
                do {
                    for member in cluster.description.etcd.members { try await cluster.waitEtcdReady(member) }
                    break
                } catch {
                    // A member that could not bind its client or peer port exits; the peer URLs are in
                    // every member's initial cluster, so the whole etcd cluster starts again, new.
                    let clash = cluster.description.etcd.members.contains { m in
                        !Processes.isAlive(m.pid) && Self.text(of: m.logFile, from: etcdLogStarts[m.name] ?? 0).contains("address already in use")
                    }
                    guard attempt < startAttempts, clash else { throw error }
                    logger.notice("an etcd member could not bind its port; starting etcd again on other ports")
                    for m in cluster.description.etcd.members where cluster.owns(m.pid) { Processes.terminate(m.pid) }
                    for i in cluster.description.etcd.members.indices {
                        let m = cluster.description.etcd.members[i]
                        try? FileManager.default.removeItem(atPath: m.dataDir)
                        cluster.description.etcd.members[i].clientURL = "http://127.0.0.1:\(try freePort())"
                        cluster.description.etcd.members[i].peerURL = "http://127.0.0.1:\(try freePort())"
                    }
                    let members = cluster.description.etcd.members
                    cluster.description.etcd.endpoints = members.map(\.clientURL)
                    cluster.description.etcd.initialCluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
                    for i in members.indices {
                        etcdLogStarts[members[i].name] = Self.size(of: members[i].logFile)
                        try cluster.spawnEtcd(i, new: true)
                    }
                    try cluster.save()
                }
            }
            try cluster.save()
        } catch {
            cluster.stopAll()
            throw error
        }
        return cluster
    }

    private static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        return String((0..<24).map { _ in alphabet.randomElement()! })
    }

    private static func size(of file: String) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// What `file` holds from byte `offset` on (this start's part of a log that is appended to).
    private static func text(of file: String, from offset: UInt64) -> String {
        guard let handle = FileHandle(forReadingAtPath: file) else { return "" }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }

    private func installNode(_ i: Int, options: [String]) throws {
        let node = description.nodes[i]
        let nodeDir = (node.dataDir as NSString).deletingLastPathComponent
        // A private tmpdir: in the shared /tmp, concurrent installs and runs delete each other's
        // temporary tables (`#sql-temptable-…`), and install-db fails.
        let tmpDir = Self.tmpDir(nodeDir)
        try FileManager.default.createDirectory(atPath: tmpDir, withIntermediateDirectories: true)
        try writeNodeOptions(i, options: options)
        let status = try Processes.run(Processes.which("mariadb-install-db")!, [
            "--no-defaults", "--datadir=\(node.dataDir)", "--tmpdir=\(tmpDir)", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db",
        ], logFile: nodeDir + "/install.log")
        guard status == 0 else {
            throw LocalClusterError("mariadb-install-db failed for \(node.id) (exit \(status)); see \(nodeDir)/install.log")
        }
    }

    private static func tmpDir(_ nodeDir: String) -> String { nodeDir + "/tmp" }

    /// Writes the node's option file (its port included).
    private func writeNodeOptions(_ i: Int, options: [String]) throws {
        let node = description.nodes[i]
        let nodeDir = (node.dataDir as NSString).deletingLastPathComponent
        let tmpDir = Self.tmpDir(nodeDir)
        let cnf = """
        [mariadbd]
        user=root
        datadir=\(node.dataDir)
        port=\(node.port)
        bind-address=127.0.0.1
        socket=\(node.socket)
        pid-file=\(nodeDir)/mariadbd.pid
        tmpdir=\(tmpDir)
        log-error=\(node.logFile)
        innodb_buffer_pool_size=64M
        innodb_log_file_size=64M
        innodb_lock_wait_timeout=5
        skip-name-resolve
        performance_schema=OFF
        max_connections=512
        character-set-server=utf8mb4
        \(options.map { $0 + "\n" }.joined())
        """
        try cnf.write(toFile: node.configFile, atomically: true, encoding: .utf8)
    }

    private mutating func spawnNode(_ i: Int) throws {
        let node = description.nodes[i]
        // --defaults-file must be the first argument.
        description.nodes[i].pid = try Processes.spawn(Processes.which("mariadbd")!, ["--defaults-file=\(node.configFile)"], logFile: node.logFile)
    }

    private mutating func spawnEtcd(_ i: Int, new: Bool) throws {
        let m = description.etcd.members[i]
        try FileManager.default.createDirectory(atPath: (m.dataDir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        description.etcd.members[i].pid = try Processes.spawn(Processes.which("etcd")!, [
            "--name", m.name, "--data-dir", m.dataDir,
            "--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
            "--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
            "--initial-cluster", description.etcd.initialCluster, "--initial-cluster-token", description.etcd.clusterToken,
            "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
        ] + (description.etcd.extraArguments ?? []), logFile: m.logFile)
    }

    /// A root connection over the node's Unix socket (root has no password and no TCP access).
    func rootConfiguration(_ node: ClusterDescription.Node) -> MariaDBConfiguration {
        MariaDBConfiguration(label: node.id, unixSocket: node.socket, user: "root", password: "", connectTimeout: 2, readTimeout: 10, writeTimeout: 10)
    }

    /// The bank user's configuration for `node` (TCP).
    public func bankConfiguration(_ nodeID: String) throws -> MariaDBConfiguration {
        let node = try self.node(nodeID)
        return MariaDBConfiguration(label: node.id, host: node.host, port: node.port, user: node.user, password: node.password, database: node.database)
    }

    private func waitNodeReady(_ i: Int, timeout: Duration = .seconds(60)) async throws {
        let node = description.nodes[i]
        let deadline = ContinuousClock.now + timeout
        while true {
            if !Processes.isAlive(node.pid) {
                throw LocalClusterError("mariadbd for \(node.id) exited during start-up; see \(node.logFile):\n\(tail(node.logFile))")
            }
            if let c = try? await MariaDBConnection.connect(configuration: rootConfiguration(node)) {
                await c.close()
                return
            }
            guard ContinuousClock.now < deadline else {
                throw LocalClusterError("mariadbd for \(node.id) did not answer within \(timeout); see \(node.logFile)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    private func createBankUser(_ i: Int) async throws {
        let node = description.nodes[i]
        let c = try await MariaDBConnection.connect(configuration: rootConfiguration(node))
        do {
            try await c.query("CREATE DATABASE IF NOT EXISTS `\(node.database)`")
            try await c.query("CREATE USER IF NOT EXISTS '\(node.user)'@'%' IDENTIFIED BY '\(node.password)'")
            try await c.query("GRANT ALL PRIVILEGES ON `\(node.database)`.* TO '\(node.user)'@'%'")
        } catch {
            await c.close()
            throw error
        }
        await c.close()
    }

    private func waitEtcdReady(_ member: ClusterDescription.EtcdMember, timeout: Duration = .seconds(30)) async throws {
        let client = EtcdClient(configuration: EtcdConfiguration(endpoints: [member.clientURL], connectTimeout: .milliseconds(500), requestTimeout: .seconds(1)), logger: logger)
        do {
            try await pollEtcd(member, client: client, timeout: timeout)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try? await client.shutdown()
    }

    private func pollEtcd(_ member: ClusterDescription.EtcdMember, client: EtcdClient, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            if !Processes.isAlive(member.pid) {
                throw LocalClusterError("etcd member \(member.name) exited during start-up; see \(member.logFile):\n\(tail(member.logFile))")
            }
            // Status needs no credentials even with auth on; a known leader means the member serves.
            if let status = try? await client.status(endpoint: member.clientURL), status.leader != 0 { return }
            guard ContinuousClock.now < deadline else {
                throw LocalClusterError("etcd member \(member.name) did not answer within \(timeout); see \(member.logFile)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    private func tail(_ file: String, lines: Int = 15) -> String {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return "(no log)" }
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    // MARK: control

    public func node(_ id: String) throws -> ClusterDescription.Node {
        guard let n = description.nodes.first(where: { $0.id == id }) else {
            throw LocalClusterError("no node \(id) in this cluster (nodes: \(description.nodes.map(\.id).joined(separator: ", ")))")
        }
        return n
    }

    /// The pid of a member: a node id or an etcd member name.
    public func pid(of member: String) throws -> Int32 {
        if let n = description.nodes.first(where: { $0.id == member }) { return n.pid }
        if let m = description.etcd.members.first(where: { $0.name == member }) { return m.pid }
        if member.hasPrefix("agent-"), let pid = description.nodes.first(where: { "agent-" + $0.id == member })?.agentPID { return pid }
        let names = description.nodes.map(\.id) + description.nodes.filter { $0.agentPID != nil }.map { "agent-" + $0.id } + description.etcd.members.map(\.name)
        throw LocalClusterError("no member \(member) in this cluster; members: \(names.joined(separator: ", "))")
    }

    /// Whether the process still is the one this cluster started (pids get reused).
    public func owns(_ pid: Int32) -> Bool {
        guard pid > 0, Processes.isAlive(pid), let cmd = Processes.commandLine(pid) else { return false }
        return cmd.contains(dir + "/")
    }

    /// `kill -9`.
    public func kill(_ member: String) throws {
        let pid = try pid(of: member)
        guard owns(pid) else { return }
        Processes.signal(pid, SIGKILL)
        Processes.waitGone(pid, timeout: .seconds(5))
    }

    /// SIGSTOP: the process hangs with its sockets open.
    public func pause(_ member: String) throws {
        let pid = try pid(of: member)
        if owns(pid) { Processes.signal(pid, SIGSTOP) }
    }

    /// SIGCONT.
    public func resume(_ member: String) throws {
        let pid = try pid(of: member)
        if owns(pid) { Processes.signal(pid, SIGCONT) }
    }

    /// Stops a member gracefully (SIGTERM).
    public func stop(_ member: String) throws {
        let pid = try pid(of: member)
        if owns(pid) { Processes.terminate(pid) }
    }

    /// Starts a member again with its data (after `kill` or `stop`), waits until it answers, saves.
    public mutating func restart(_ member: String) async throws {
        let pid = try pid(of: member)
        guard !member.hasPrefix("agent-") else {
            throw LocalClusterError("\(member) is a shardbank process, not a server of the cluster: restart it with `shardbank demo restart \(member)`, which knows the executable")
        }
        if owns(pid) { Processes.terminate(pid) }
        if let i = description.nodes.firstIndex(where: { $0.id == member }) {
            try spawnNode(i)
            try save()
            try await waitNodeReady(i)
        } else if let i = description.etcd.members.firstIndex(where: { $0.name == member }) {
            try spawnEtcd(i, new: false)
            try save()
            try await waitEtcdReady(description.etcd.members[i])
        }
    }

    /// Records the agent `demo up` started beside `node`, so that `down` stops it too.
    public mutating func setAgent(node: String, pid: Int32) throws {
        guard let i = description.nodes.firstIndex(where: { $0.id == node }) else { throw LocalClusterError("no node \(node) in this cluster") }
        description.nodes[i].agentPID = pid
        try save()
    }

    /// Writes `DIR/shardbank.json` — a configuration for this cluster that every command accepts —
    /// plus one password file per node under `DIR/secrets` (mode 0600); returns its path.
    public func writeConfiguration(apiPort: Int) throws -> String {
        let fm = FileManager.default
        let secrets = dir + "/secrets"
        try fm.createDirectory(atPath: secrets, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var nodes: [String: Any] = [:]
        for node in description.nodes {
            let file = "\(secrets)/\(node.id)-password"
            try node.password.write(toFile: file, atomically: true, encoding: .utf8)
            try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
            nodes[node.id] = ["host": node.host, "port": node.port, "database": node.database, "user": node.user,
                              "password_file": "secrets/\(node.id)-password"]
        }
        let config: [String: Any] = [
            "logging": ["level": "info"],
            "etcd": ["endpoints": description.etcd.endpoints, "prefix": "/shardbank/"],
            "mysql": ["user": "bank", "pool": ["max_connections": 32]],
            "cluster": ["nodes": description.nodes.filter { !$0.spare }.map(\.id)],
            "nodes": nodes,
            "http": ["host": "127.0.0.1", "port": apiPort],
        ]
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        let path = dir + "/shardbank.json"
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Records the API process `demo up` started, so that `down` stops it too.
    public mutating func setAPI(url: String, pid: Int32) throws {
        description.api = .init(url: url, pid: pid)
        try save()
    }

    /// Stops every process this cluster started, and nothing else.
    public func stopAll() {
        // The saved description is the newest: a copy of this value may have restarted members.
        let processes = ((try? Self.load(dir: dir, logger: logger))?.description.processes ?? []) + description.processes
        let owned = Set(processes.map(\.pid).filter(owns))
        for pid in owned {
            Processes.signal(pid, SIGCONT)
            Processes.signal(pid, SIGTERM)
        }
        for pid in owned {
            Processes.waitGone(pid, timeout: .seconds(10))
            if owns(pid) {
                Processes.signal(pid, SIGKILL)
                Processes.waitGone(pid, timeout: .seconds(5))
            }
        }
    }

    /// Stops everything and deletes the directory.
    public func destroy() {
        stopAll()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
