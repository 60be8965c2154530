import Admin
import ArgumentParser
import ClusterMetadata
import Foundation
import Ledger
import Sharding

struct Ctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Operator commands for a ShardBank cluster.",
        subcommands: [Init.self, Status.self, Verify.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bootstrap a cluster: register the nodes, create their schema, write the shard maps.",
            discussion: """
                Without map files, lays out the seed's ranges on the first three nodes of cluster.nodes: \
                accounts by balance [0.00, 10000.01) [10000.01, 50000.01) [50000.01, ∞), and the account \
                directory's hash space in three equal parts. Everything that can fail (map validation, \
                node connections, schema) is checked before etcd is written, and etcd is written in one \
                transaction. Refuses to run on an initialised cluster unless --force.
                """)

        @OptionGroup var options: ConfigOptions

        @Flag(help: "Replace the maps of an initialised cluster (account ids are never reused).")
        var force = false

        @Option(help: ArgumentHelp("A range map (JSON, see docs/SHARDING.md) for the accounts, keyed by balance in cents.", valueName: "file"))
        var accountsMap: String?

        @Option(help: ArgumentHelp("A range map (JSON) for the account directory, keyed by the account-id hash.", valueName: "file"))
        var directoryMap: String?

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let bootstrap = try Bootstrap(configuration: configuration, accounts: try accountsMap.map(loadMap),
                                              directory: try directoryMap.map(loadMap), force: force)
                try await withEtcd(configuration, logger: logger) { etcd in
                    try await bootstrap.run(etcd: etcd, logger: logger, progress: progressPrinter())
                }
                print("initialised: \(bootstrap.accounts.ranges.count) account ranges, \(bootstrap.directory.ranges.count) directory ranges on \(configuration.nodes.map(\.id).joined(separator: ", "))")
            }
        }

        func loadMap(_ path: String) throws -> RangeMap {
            guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("cannot read map file \(path)") }
            do { return try JSONDecoder().decode(RangeMap.self, from: data) } catch let error as RangeMapError {
                throw CLIError("map file \(path): \(error)")
            } catch {
                throw CLIError("map file \(path) is not a range map: \(error)")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the shard maps and the nodes.")

        @OptionGroup var options: ConfigOptions

        @Flag(help: "Print JSON instead of tables.")
        var json = false

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let status = try await withEtcd(configuration, logger: logger) { etcd in
                    try await ClusterStatus.load(store: MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix)))
                }
                print(json ? try status.json() : status.text(), terminator: "")
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the ledger's invariants on every node; exit 0 and one line when clean.",
            discussion: """
                Σ balances = Σ journal; every account on exactly one node, in the range its balance maps to, \
                with a matching balance_range and directory entry; no negative balance; every committed \
                transfer has its postings; no ShardBank XA branch still prepared after --xa-bound seconds. \
                Run it on a quiet cluster: concurrent writes between the per-node reads can show as \
                differences.
                """)

        @OptionGroup var options: ConfigOptions

        @Option(help: "Seconds a prepared XA branch may live before it counts as a violation.")
        var xaBound = 10

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let report = try await withEtcd(configuration, logger: logger) { etcd in
                    let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
                    guard let accounts = try await store.loadMap(.accounts), let directory = try await store.loadMap(.directory) else {
                        throw CLIError("the cluster is not initialised: run `shardbank ctl init --config FILE` first")
                    }
                    let connections = await nodeConnections(configuration, nodes: try await store.nodes(), logger: logger)
                    do {
                        let report = try await LedgerVerifier(connections: connections, maps: LedgerMaps(accounts: accounts.map, directory: directory.map))
                            .run(xaBound: .seconds(xaBound))
                        await connections.shutdown()
                        return report
                    } catch {
                        await connections.shutdown()
                        throw error
                    }
                }
                print(report.summary)
                if !report.clean { throw ExitCode.failure }
            }
        }
    }
}
