import Admin
import ArgumentParser
import ClusterMetadata
import Foundation
import Ledger
import Sharding

struct Ctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Operator commands for a ShardBank cluster.",
        subcommands: [Init.self, Status.self, Verify.self, XA.self, AddNode.self, Move.self, Split.self, Rebalance.self, Drain.self, Jobs.self])

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
                Checks, over every node: Σ balances = Σ journal; every account on exactly one node, in the \
                range its balance maps to; each balance equals the sum of its postings on every node it \
                lived on and its last posting's balance_after; directory entries agree with the rows (node, \
                range, previous nodes); at most one committed decision per transfer id, whose postings are \
                exactly those its kind and amount imply, all of its attempt, and no posting without one; \
                range_ownership agrees with the maps; every prepared ShardBank XA branch names a registered \
                commit point and none is still prepared after --xa-bound seconds. \
                Safe under load: what a first pass finds is checked again after in-flight transactions \
                finished, and only what is still wrong is reported. Exit 1 with one line per violation.
                """)

        @OptionGroup var options: ConfigOptions

        @Option(help: "Seconds a prepared XA branch may live before it counts as a violation.")
        var xaBound = 10

        func run() async throws {
            try await reportingErrors {
                let report = try await withNodeConnections(options) { connections, maps in
                    try await LedgerVerifier(connections: connections, maps: maps).run(xaBound: .seconds(xaBound))
                }
                print(report.summary)
                if !report.clean { throw ExitCode.failure }
            }
        }
    }
}

extension Ctl {
    /// `ctl xa list|resolve`: the prepared XA branches of ShardBank on every node.
    struct XA: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "xa",
            abstract: "List or finish prepared (in-doubt) two-phase-commit branches.",
            discussion: """
                Every serve and every agent finishes in-doubt branches by itself within seconds. These \
                commands are for an operator: to see what is prepared (a branch holds its rows' locks), \
                and to finish branches by hand — always from their attempt's decision on the commit \
                point, never against it.
                """,
            subcommands: [List.self, Resolve.self])

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Show each prepared branch: node, transfer, attempt, commit point, age and decision.")

            @OptionGroup var options: ConfigOptions

            @Flag(help: "Print JSON instead of a table.")
            var json = false

            func run() async throws {
                try await reportingErrors {
                    let branches = try await withNodeConnections(options) { connections, _ in try await PreparedBranch.list(connections) }
                    if json {
                        let rows = branches.map { b -> [String: String] in
                            ["node": b.node, "transfer_id": b.name.transferID, "attempt": b.name.attempt.rawValue, "commit_point": b.name.commitPoint,
                             "age_ms": b.age.map { String($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? "",
                             "decision": b.decision?.rawValue ?? (b.decisionError == nil ? "none" : "unknown"),
                             "commit_point_removed": b.commitPointRemoved ? "true" : "false"]
                        }
                        let encoder = JSONEncoder()
                        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                        print(String(decoding: try encoder.encode(rows), as: UTF8.self))
                        return
                    }
                    guard !branches.isEmpty else { print("no prepared ShardBank branch on any node"); return }
                    print(pad("NODE", 10) + pad("TRANSFER", 40) + pad("ATTEMPT", 14) + pad("COMMIT POINT", 14) + pad("AGE", 10) + "DECISION")
                    for b in branches {
                        let age = b.age.map { String(format: "%.1f s", Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18) } ?? "—"
                        let decision: String
                        if let state = b.decision {
                            decision = state == .committed ? "committed: resolve commits it" : "aborted: resolve rolls it back"
                        } else if b.commitPointRemoved {
                            decision = "none: \(b.name.commitPoint) is removed (drained), it decided nothing: resolve rolls it back"
                        } else if let error = b.decisionError {
                            decision = "unknown: \(b.name.commitPoint) does not answer (\(error.prefix(60)))"
                        } else {
                            decision = "none yet: resolve records an abort, then rolls back"
                        }
                        print(pad(b.node, 10) + pad(b.name.transferID, 40) + pad(b.name.attempt.description, 14) + pad(b.name.commitPoint, 14) + pad(age, 10) + decision)
                    }
                }
            }
        }

        struct Resolve: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Finish prepared branches from their decisions.",
                discussion: """
                    Finishes the prepared branches of TRANSFER (or, with --all, every one) that are still \
                    prepared after --min-age seconds: committed decision → XA COMMIT; aborted → XA ROLLBACK; \
                    no decision yet → an abort is recorded for that attempt on the commit point (the same \
                    arbitration the automatic resolver uses; a coordinator still running then fails to \
                    commit), then XA ROLLBACK. A commit point that is removed (drained) decided nothing: \
                    the branch is rolled back. When the commit point does not answer, nothing is done: its \
                    decision is unknown. Exit 1 if a branch could not be finished.
                    """)

            @OptionGroup var options: ConfigOptions

            @Argument(help: "The transfer id (idempotency key) whose branches to finish.")
            var transfer: String?

            @Flag(help: "Finish every prepared ShardBank branch.")
            var all = false

            @Option(help: "Only branches seen prepared for at least this many seconds (their coordinator had its time).")
            var minAge = 5

            func validate() throws {
                guard (transfer == nil) == all else { throw ValidationError("give either a transfer id or --all") }
                guard (0...3600).contains(minAge) else { throw ValidationError("--min-age must be 0 to 3600 seconds") }
            }

            func run() async throws {
                try await reportingErrors {
                    let failed = try await withNodeConnections(options) { connections, _ in
                        let selected = { (branches: [PreparedBranch]) in branches.filter { all || $0.name.transferID == transfer } }
                        var candidates = selected(try await PreparedBranch.list(connections))
                        if candidates.isEmpty {
                            print("nothing to resolve: no prepared branch\(transfer.map { " of \($0)" } ?? "")")
                            return 0
                        }
                        if minAge > 0 {
                            print("\(candidates.count) prepared branch(es); waiting \(minAge) s to leave their coordinators time to finish …")
                            try await Task.sleep(for: .seconds(minAge))
                            let still = Set(selected(try await PreparedBranch.list(connections)).map { "\($0.node) \($0.xid)" })
                            candidates = candidates.filter { still.contains("\($0.node) \($0.xid)") }
                        }
                        var failed = 0
                        for b in candidates {
                            do {
                                let r = try await InDoubtResolver.resolve(b.xid, on: b.node, connections: connections)
                                print("\(b.node) \(b.name.transferID) attempt \(b.name.attempt): \(r.decision == .committed ? "committed" : "rolled back")")
                            } catch {
                                // Another resolver (every serve and agent runs one) may have finished it meanwhile.
                                let still = try? await PreparedBranch.list(connections, nodes: [b.node]).contains { $0.xid == b.xid }
                                if still == false {
                                    print("\(b.node) \(b.name.transferID) attempt \(b.name.attempt): finished meanwhile by an automatic resolver")
                                } else {
                                    failed += 1
                                    print("\(b.node) \(b.name.transferID) attempt \(b.name.attempt): not finished — \(error)")
                                }
                            }
                        }
                        if candidates.isEmpty { print("nothing left to resolve: the branches finished by themselves") }
                        return failed
                    }
                    if failed > 0 { throw ExitCode.failure }
                }
            }
        }
    }
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? String(text.prefix(width - 1)) + " " : text + String(repeating: " ", count: width - text.count)
}
