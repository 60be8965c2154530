import Admin
import ArgumentParser
import ClusterMetadata
import Foundation
import ShardBankConfig

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load generators; results go to docs/BENCHMARKS.md with the command that produced them.",
        subcommands: [PointSelect.self, Etcd.self])

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
        for (code, count) in summary.errorsByCode.sorted(by: { $0.key < $1.key }) { print("  errors \(code): \(count)") }
    }
}
