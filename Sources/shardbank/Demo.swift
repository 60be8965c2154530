import Admin
import ClusterMetadata
import ArgumentParser
import Foundation
import LocalCluster
import Logging
import ShardBankConfig

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A local cluster of real mariadbd and etcd processes, for trying ShardBank and for failure drills.",
        discussion: """
            `demo up` starts the processes in the background (they outlive the command), bootstraps the \
            cluster with `ctl init`, starts one `shardbank agent` per node (a spare's with --wait-registered: \
            it beats once the spare is registered in etcd) and `shardbank serve`, and \
            writes DIR/shardbank.json (a configuration file the other commands accept) and \
            DIR/cluster.json (ports, pids, passwords). `demo down` stops every process `up` started, and \
            nothing else. Members are named node1…, etcd1… and agent-node1…; kill, stop, cont and \
            restart take these names.
            """,
        subcommands: [Up.self, Down.self, Kill.self, Stop.self, Cont.self, Restart.self])

    struct DirOption: ParsableArguments {
        @Option(help: ArgumentHelp("The cluster's directory.", valueName: "dir"))
        var dir: String
    }

    struct Up: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a local cluster and bootstrap it.")
        @OptionGroup var location: DirOption
        @Option(help: "Storage nodes in the shard map (at least 3 for the seed's layout).") var nodes = 3
        @Option(help: "etcd members (3 tolerates the loss of one).") var etcd = 3
        @Option(help: ArgumentHelp("Extra MariaDB nodes started but not registered nor in the shard map, for adding later.",
                                   discussion: "Each has its credentials in DIR/shardbank.json and an agent waiting for it to be registered (agent --wait-registered); a running serve opens its pool once node/{id}/info is written."))
        var spare = 0

        func validate() throws {
            guard nodes >= 3 else { throw ValidationError("--nodes must be at least 3: the seed's layout has three ranges") }
            guard (1...7).contains(etcd) else { throw ValidationError("--etcd must be between 1 and 7") }
            guard (0...10).contains(spare) else { throw ValidationError("--spare must be between 0 and 10") }
        }

        func run() async throws {
            try await reportingErrors {
                let logger = makeLogger(.warning)
                let progress = progressPrinter()
                progress("starting \(nodes + spare) mariadbd and \(etcd) etcd under \(location.dir)")
                var cluster = try await LocalCluster.start(dir: location.dir, nodes: nodes, spare: spare, etcdMembers: etcd, logger: logger, progress: progress)
                do {
                    let apiPort = try Processes.freePort()
                    let configPath = try cluster.writeConfiguration(apiPort: apiPort)
                    let configuration = try await ShardBankConfiguration.load(file: configPath)
                    let bootstrap = try Bootstrap(configuration: configuration)
                    try await withEtcd(configuration, logger: logger) { etcd in
                        try await bootstrap.run(etcd: etcd, logger: logger, progress: progress)
                    }
                    let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
                    for node in cluster.description.nodes {
                        progress("starting shardbank agent for \(node.id)" + (node.spare ? " (spare: it waits until the node is registered)" : ""))
                        try startAgent(&cluster, node: node.id)
                    }
                    progress("starting shardbank serve on 127.0.0.1:\(apiPort)")
                    let url = "http://127.0.0.1:\(apiPort)"
                    let pid = try Processes.spawn(executable, ["serve", "--config", configPath], logFile: cluster.dir + "/serve.log")
                    try cluster.setAPI(url: url, pid: pid)
                    try await waitReady(url: url, pid: pid, log: cluster.dir + "/serve.log")
                    print("""
                        cluster up in \(cluster.dir)
                          api:    \(url)
                          etcd:   \(cluster.description.etcd.endpoints.joined(separator: " "))
                          nodes:  \(cluster.description.nodes.map { "\($0.id)=\($0.host):\($0.port)\($0.spare ? " (spare)" : "")" }.joined(separator: " "))
                          config: \(configPath)
                        try:  shardbank ctl status --config \(configPath)
                        stop: shardbank demo down --dir \(cluster.dir)
                        """)
                } catch {
                    cluster.destroy()
                    throw error
                }
            }
        }

        /// Waits until `serve` answers /readyz (it loads metadata and migrates schemas first).
        func waitReady(url: String, pid: Int32, log: String) async throws {
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                guard Processes.isAlive(pid) else { throw CLIError("shardbank serve exited during start-up; see \(log)") }
                if try await httpStatus(url + "/readyz") == 200 { return }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw CLIError("shardbank serve did not become ready within 60 s; see \(log)")
        }
    }

    struct Down: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop every process of a local cluster and delete its directory.")
        @OptionGroup var location: DirOption
        @Flag(help: "Stop the processes but keep the directory (data, logs, cluster.json).") var keepData = false

        func run() async throws {
            try await reportingErrors {
                let cluster = try LocalCluster.load(dir: location.dir, logger: makeLogger(.warning))
                if keepData { cluster.stopAll() } else { cluster.destroy() }
                let left = cluster.description.processes.filter { cluster.owns($0.pid) }
                guard left.isEmpty else { throw CLIError("still running: \(left.map { "\($0.name) (pid \($0.pid))" }.joined(separator: ", "))") }
                print("stopped \(cluster.description.processes.count) processes" + (keepData ? "; kept \(cluster.dir)" : "; removed \(cluster.dir)"))
            }
        }
    }

    struct MemberArguments: ParsableArguments {
        @OptionGroup var location: DirOption
        @Argument(help: "A node id (node1…) or an etcd member name (etcd1…).") var member: String

        /// Loads the cluster, applies `action` to the member, reports `done`.
        func signal(done: String, _ action: (LocalCluster, String) throws -> Void) async throws {
            try await reportingErrors {
                try action(try LocalCluster.load(dir: location.dir, logger: makeLogger(.warning)), member)
                print("\(done) \(member)")
            }
        }
    }

    struct Kill: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "kill -9 a member (a crash).")
        @OptionGroup var arguments: MemberArguments
        func run() async throws { try await arguments.signal(done: "killed") { try $0.kill($1) } }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "SIGSTOP a member: it hangs with its sockets open (resume with cont).")
        @OptionGroup var arguments: MemberArguments
        func run() async throws { try await arguments.signal(done: "stopped (SIGSTOP)") { try $0.pause($1) } }
    }

    struct Cont: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "SIGCONT a stopped member.")
        @OptionGroup var arguments: MemberArguments
        func run() async throws { try await arguments.signal(done: "continued") { try $0.resume($1) } }
    }

    struct Restart: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop a member gracefully if it runs, start it again with its data, wait until it answers.",
            discussion: "An agent (agent-node1…) is started again with the cluster's configuration; the command waits until its heartbeat is in etcd.")
        @OptionGroup var arguments: MemberArguments
        func run() async throws {
            try await reportingErrors {
                let logger = makeLogger(.warning)
                var cluster = try LocalCluster.load(dir: arguments.location.dir, logger: logger)
                let member = arguments.member
                guard member.hasPrefix("agent-") else {
                    try await cluster.restart(member)
                    print("restarted \(member) (pid \(try cluster.pid(of: member)))")
                    return
                }
                let node = String(member.dropFirst("agent-".count))
                let old = try cluster.pid(of: member)
                // SIGTERM: the old agent revokes its lease, so the new one registers afresh.
                if cluster.owns(old) { Processes.terminate(old) }
                let pid = try startAgent(&cluster, node: node)
                let configuration = try await ShardBankConfiguration.load(file: cluster.dir + "/shardbank.json")
                let keys = MetadataKeys(prefix: configuration.etcdPrefix)
                let key = keys.nodeHeartbeat(node)
                let deadline = ContinuousClock.now + .seconds(15)
                let registered = try await withEtcd(configuration, logger: logger) { etcd in try await etcd.get(keys.nodeInfo(node)) != nil }
                let spare = try cluster.node(node).spare
                guard registered || !spare else {
                    print("restarted \(member) (pid \(pid)); it waits until \(node) is registered")
                    return
                }
                try await withEtcd(configuration, logger: logger) { etcd in
                    while try await etcd.get(key) == nil {
                        guard Processes.isAlive(pid) else { throw CLIError("the agent of \(node) exited during start-up; see \(cluster.dir)/agent-\(node).log") }
                        guard ContinuousClock.now < deadline else { throw CLIError("the agent of \(node) (pid \(pid)) wrote no heartbeat within 15 s; see \(cluster.dir)/agent-\(node).log") }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
                print("restarted \(member) (pid \(pid)); its heartbeat is in etcd")
            }
        }
    }
}

/// Starts `shardbank agent` for `node` with the cluster's configuration file and records its pid; a
/// spare's agent waits until its node is registered (`--wait-registered`).
@discardableResult
private func startAgent(_ cluster: inout LocalCluster, node: String) throws -> Int32 {
    let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let spare = try cluster.node(node).spare
    let pid = try Processes.spawn(executable, ["agent", "--node", node, "--config", cluster.dir + "/shardbank.json"] + (spare ? ["--wait-registered"] : []),
                                  logFile: cluster.dir + "/agent-\(node).log")
    try cluster.setAgent(node: node, pid: pid)
    return pid
}
