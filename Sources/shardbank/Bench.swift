import Admin
import AsyncHTTPClient
import Ledger
import NIOCore
import ArgumentParser
import ClusterMetadata
import Foundation
import Synchronization
import Logging
import ShardBankConfig

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load generators; results go to docs/BENCHMARKS.md with the command that produced them.",
        subcommands: [Ledger.self, PointSelect.self, Etcd.self],
        defaultSubcommand: Ledger.self)

    struct Ledger: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ledger",
            abstract: "TPC-B-like load on the ledger (the default): transfers, deposits and reads by N clients.",
            discussion: """
                80 % transfers (--cross-node of them between accounts on different nodes), 10 % deposits, \
                10 % reads, on accounts opened for the run in the middle of each node's range. Through the \
                library (in this process) or, with --http, through the running service's API. With \
                --baseline, the same mix then runs as plain SQL on node1 — the ledger's single-node \
                statements without routing, fence or two-phase commit, on scratch tables — for the ratio. \
                With --xa-anchor, the same mix runs as plain SQL on node1 and node2, its cross-node \
                transfers (the same --cross-node share) with XA two-phase commit — node2 the prepared \
                participant, node1 the commit point with the decision row — for the ratio of the \
                ledger's cross-node path (e.g. --cross-node 1 --xa-anchor). \
                The library client watches the metadata as `serve` does for the whole run: shard-map \
                changes, nodes registered (their pools opened once their schema is current) and nodes \
                removed are seen while it runs; the accounts are opened at the start on the nodes of the \
                map then.
                """)
        @OptionGroup var options: ConfigOptions
        @OptionGroup var common: Common
        @Option(help: "Concurrent clients.") var clients = 16
        @Option(help: "Share of transfers across nodes, 0 to 1.") var crossNode = 0.5
        @Option(help: "Accounts opened per node for the run.") var accountsPerNode = 100
        @Option(help: ArgumentHelp("Run the mix only on these nodes' accounts (comma-separated; one node needs --cross-node 0).",
                                   discussion: "With --baseline on node1, --only-node node1 compares the ledger and plain SQL on the same node; with --xa-anchor, --only-node node1,node2 runs the ledger on the anchor's two nodes."))
        var onlyNode: String?
        @Flag(help: "Go through the HTTP API of the running service (http.host:http.port).") var http = false
        @Flag(help: "Also run the same mix as plain SQL on node1, for the ratio.") var baseline = false
        @Flag(help: ArgumentHelp("Also run the same mix as plain SQL with XA between node1 and node2 (the cross-node anchor), for the ratio.",
                                 discussion: "The anchor's cross-node transfers: on node2 XA START, SELECT … FOR UPDATE, UPDATE, posting INSERT, XA END, XA PREPARE; on node1 BEGIN, lock, UPDATE, posting INSERT, decision row INSERT, COMMIT; then XA COMMIT on node2. Scratch tables on both nodes."))
        var xaAnchor = false
        @Flag(help: ArgumentHelp("With --xa-anchor: run the anchor's XA transfers without preferring each connection's executor.",
                                 discussion: "Every statement then hops to its connection's thread and back, as a caller on Swift's cooperative pool does (the ledger's two-phase commit today): measures what those hops cost."))
        var anchorPerCallHops = false
        @Option(help: ArgumentHelp("Write one JSON line per second of the run to this file: ops, errors, p99 and max latency (µs).",
                                   discussion: "`{\"t\":12,\"ops\":1830,\"errors\":0,\"p99_us\":21000,\"max_us\":48000}` — t is the second since the run began. A dip (a range move's freeze, a node lost) shows as fewer ops or a higher p99 in that second.",
                                   valueName: "file"))
        var timeline: String?
        @Option(help: ArgumentHelp("Write the transfer id of every transfer and deposit the ledger acknowledged to this file, one per line.",
                                   discussion: "For checks after the run: each must be found committed (`GET /v1/transfers/{id}`), whatever moved, split or drained meanwhile.",
                                   valueName: "file"))
        var acknowledged: String?

        func validate() throws {
            guard (0...1).contains(crossNode) else { throw ValidationError("--cross-node must be between 0 and 1") }
            guard (1...1024).contains(clients) else { throw ValidationError("--clients must be between 1 and 1024") }
            guard onlyNodes.count != 1 || crossNode == 0 else { throw ValidationError("--only-node with one node runs on one node's accounts: give --cross-node 0 with it") }
        }

        var onlyNodes: [String] { onlyNode.map { $0.split(separator: ",").map { String($0) } } ?? [] }

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let progress = common.json ? nil : progressPrinter()
                let runtime = try await BankRuntime.start(configuration, logger: logger)
                do {
                    // The metadata watch and the registry follower run for the whole benchmark, so a
                    // range reassigned or a node added or removed meanwhile is seen as `serve` sees it.
                    try await runtime.run { try await measure(runtime, configuration: configuration, logger: logger, progress: progress) }
                } catch {
                    await runtime.shutdown()
                    throw error
                }
                await runtime.shutdown()
            }
        }

        func measure(_ runtime: BankRuntime, configuration: ShardBankConfiguration, logger: Logger, progress: (@Sendable (String) -> Void)?) async throws {
            let snapshot = runtime.cache.snapshot
            let maps = LedgerMaps(accounts: snapshot.accounts!.map, directory: snapshot.directory!.map)
            var accounts = try await LedgerBenchmark.setUp(bank: runtime.bank, maps: maps, accountsPerNode: accountsPerNode,
                                                           only: onlyNodes.isEmpty ? nil : Set(onlyNodes), progress: progress)
            if !onlyNodes.isEmpty {
                var only: [String: [Int64]] = [:]
                for node in onlyNodes {
                    guard let ids = accounts[node] else {
                        throw CLIError("--only-node \(node) holds no range of the accounts map; nodes with ranges: \(accounts.keys.sorted().joined(separator: ", "))")
                    }
                    only[node] = ids
                }
                accounts = only
            }
            let options = LedgerBenchmark.Options(clients: clients, duration: .seconds(common.duration), crossNode: crossNode, accountsPerNode: accountsPerNode,
                                                  anchorPrefersConnectionExecutor: !anchorPerCallHops)
            let client = http ? try httpClient(configuration) : libraryClient(runtime.bank)
            let points = TimelineSink()
            var sink: (@Sendable ([TimelinePoint]) -> Void)?
            if timeline != nil { sink = { list in points.store(list) } }
            let acked = AcknowledgedSink()
            var note: (@Sendable (String) -> Void)?
            if acknowledged != nil { note = { @Sendable id in acked.add(id) } }
            let summary = await LedgerBenchmark.run(client: client.client, accounts: accounts, options: options, progress: progress, timeline: sink,
                                                    acknowledged: note)
            if let acknowledged {
                let ids = acked.all
                guard FileManager.default.createFile(atPath: acknowledged, contents: Data(ids.map { $0 + "\n" }.joined().utf8)) else {
                    throw CLIError("cannot write the acknowledged transfer ids to \(acknowledged)")
                }
            }
            if let timeline {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                let lines = try points.points.withLock { try $0.map { String(decoding: try encoder.encode($0), as: UTF8.self) } }
                guard FileManager.default.createFile(atPath: timeline, contents: Data((lines.joined(separator: "\n") + "\n").utf8)) else {
                    throw CLIError("cannot write the timeline to \(timeline)")
                }
            }
            try await client.shutdown()
            try printSummary(summary, label: "ledger \(http ? "http" : "library") clients=\(clients) cross-node=\(crossNode)", json: common.json)
            if baseline, let node1 = snapshot.nodes["node1"], let ids = accounts["node1"] {
                progress?("baseline: the same mix as plain SQL on node1")
                let base = try await LedgerBenchmark.baseline(
                    configuration: configuration.mariaDB(node: node1.id, host: node1.host, port: node1.port, database: node1.database, tlsMode: node1.tlsMode),
                    accounts: ids.count, options: options, logger: logger, progress: progress)
                try printSummary(base, label: "baseline plain SQL on node1 clients=\(clients)", json: common.json)
                if !common.json { print(String(format: "ratio ledger/baseline: %.2f", summary.throughput / max(base.throughput, 1))) }
            }
            if xaAnchor {
                guard let node1 = snapshot.nodes["node1"], let node2 = snapshot.nodes["node2"] else {
                    throw CLIError("--xa-anchor runs on node1 and node2; registered nodes: \(snapshot.nodes.keys.sorted().joined(separator: ", "))")
                }
                progress?("anchor: the same mix as plain SQL with XA between node1 and node2")
                let anchor = try await LedgerBenchmark.xaAnchor(
                    commitPoint: configuration.mariaDB(node: node1.id, host: node1.host, port: node1.port, database: node1.database, tlsMode: node1.tlsMode),
                    participant: configuration.mariaDB(node: node2.id, host: node2.host, port: node2.port, database: node2.database, tlsMode: node2.tlsMode),
                    options: options, logger: logger, progress: progress)
                try printSummary(anchor, label: "anchor plain SQL + XA node1/node2\(anchorPerCallHops ? " (per-call hops)" : "") clients=\(clients) cross-node=\(crossNode)", json: common.json)
                if !common.json { print(String(format: "ratio ledger/anchor: %.2f", summary.throughput / max(anchor.throughput, 1))) }
            }
        }

        struct ClientHandle {
            var client: LedgerBenchmark.Client
            var shutdown: @Sendable () async throws -> Void
        }

        func libraryClient(_ bank: Bank) -> ClientHandle {
            ClientHandle(client: LedgerBenchmark.Client(
                transfer: { _ = try await bank.transfer(from: $0, to: $1, amount: $2, idempotencyKey: $3) },
                deposit: { _ = try await bank.deposit($0, amount: $1, idempotencyKey: $2) },
                read: { _ = try await bank.account($0) }), shutdown: {})
        }

        func httpClient(_ configuration: ShardBankConfiguration) throws -> ClientHandle {
            let base = "http://\(configuration.httpHost == "0.0.0.0" ? "127.0.0.1" : configuration.httpHost):\(configuration.httpPort)"
            var config = HTTPClient.Configuration()
            config.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 1024)
            let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
            @Sendable func send(_ path: String, _ body: String?, key: String?) async throws {
                var request = HTTPClientRequest(url: base + path)
                if let body {
                    request.method = .POST
                    request.headers.add(name: "Content-Type", value: "application/json")
                    request.body = .bytes(ByteBuffer(string: body))
                }
                if let key { request.headers.add(name: "Idempotency-Key", value: key) }
                let response = try await http.execute(request, timeout: .seconds(30))
                let payload = try await response.body.collect(upTo: 1 << 20)
                guard response.status.code < 300 else {
                    let text = String(buffer: payload)
                    let code = text.split(separator: "\"").dropFirst(5).first.map(String.init) ?? "http_\(response.status.code)"
                    throw LedgerBenchmark.ClientError(code: code, message: "HTTP \(response.status.code) \(text)")
                }
            }
            return ClientHandle(client: LedgerBenchmark.Client(
                transfer: { try await send("/v1/transfers", "{\"from\":\($0),\"to\":\($1),\"amount\":\"\($2)\"}", key: $3) },
                deposit: { try await send("/v1/accounts/\($0)/deposit", "{\"amount\":\"\($1)\"}", key: $2) },
                read: { try await send("/v1/accounts/\($0)", nil, key: nil) }), shutdown: { try await http.shutdown() })
        }
    }

    struct Common: ParsableArguments {
        @Option(help: "Seconds to run.") var duration = 10
        @Flag(help: "Print the summary as JSON.") var json = false

        func validate() throws {
            guard (1...3600).contains(duration) else { throw ValidationError("--duration must be between 1 and 3600 seconds") }
        }
    }

    struct PointSelect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "point-select",
            abstract: "sysbench oltp_point_select through the MariaDB driver, on one registered node.",
            discussion: "Needs sysbench's table: run `sysbench oltp_point_select --table-size=N … prepare` first (bench/point-select.sh does).")
        @OptionGroup var options: ConfigOptions
        @OptionGroup var common: Common
        @Option(help: "The node to load.") var node = "node1"
        @Option(help: "Concurrent connections.") var connections = 1
        @Option(help: "Rows in sbtest1 (sysbench --table-size).") var tableSize = 10_000

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let nodes = try await withEtcd(configuration, logger: logger) { etcd in
                    try await MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix)).nodes()
                }
                guard let info = nodes.first(where: { $0.id == node }) else {
                    throw CLIError("no node \(node) registered; nodes: \(nodes.map(\.id).joined(separator: ", "))")
                }
                let summary = try await DriverBenchmarks.pointSelect(
                    configuration: configuration.mariaDB(node: info.id, host: info.host, port: info.port, database: info.database, tlsMode: info.tlsMode),
                    connections: connections, duration: .seconds(common.duration), tableSize: tableSize,
                    progress: common.json ? nil : progressPrinter())
                try printSummary(summary, label: "point-select connections=\(connections)", json: common.json)
            }
        }
    }

    struct Etcd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put or get latency of the etcd client, to compare with `etcdctl check perf`.")
        @OptionGroup var options: ConfigOptions
        @OptionGroup var common: Common
        @Option(help: "put, get (linearizable) or get-serializable.") var operation = "put"
        @Option(help: "Concurrent clients.") var clients = 1

        func validate() throws {
            guard ["put", "get", "get-serializable"].contains(operation) else { throw ValidationError("--operation must be put, get or get-serializable") }
        }

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let summary = try await withEtcd(configuration, logger: logger) { etcd in
                    try await DriverBenchmarks.etcd(client: etcd, operation: operation, clients: clients, duration: .seconds(common.duration),
                                                    progress: common.json ? nil : progressPrinter())
                }
                try printSummary(summary, label: "etcd \(operation) clients=\(clients)", json: common.json)
            }
        }
    }
}

func printSummary(_ summary: LatencySummary, label: String, json: Bool) throws {
    if json {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(summary), as: UTF8.self))
    } else {
        print("\(label): \(summary.line)")
        for (code, count) in summary.errorsByCode.sorted(by: { $0.key < $1.key }) {
            print("  errors \(code): \(count)" + (summary.firstErrorByCode[code].map { " — first: \($0)" } ?? ""))
        }
    }
}

/// The ids of the movements acknowledged during a run (`--acknowledged`).
private final class AcknowledgedSink: Sendable {
    private let ids = Mutex<[String]>([])
    func add(_ id: String) { ids.withLock { $0.append(id) } }
    var all: [String] { ids.withLock { $0 } }
}

/// Where a run's timeline lands when the load ends.
private final class TimelineSink: Sendable {
    let points = Mutex<[TimelinePoint]>([])
    func store(_ list: [TimelinePoint]) { points.withLock { $0 = list } }
}
