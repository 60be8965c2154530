import Admin
import ArgumentParser
import ClusterMetadata
import Foundation
import Ledger
import Logging
import Mover
import Moves
import Sharding
import Synchronization

extension Ctl {
    /// `ctl move`: one range (accounts or directory) to another node, online.
    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a range to another node while the bank runs.",
            discussion: """
                Copies the range's accounts, their postings and the decisions they are home of to the \
                target in chunks while the source keeps taking writes (a change log on the source \
                covers what changes behind the copy), catches up, then freezes the range while it \
                checks count, sum and checksum on both nodes, switches ownership and publishes the map. \
                Writes to the range wait during the switch (ledger.move_wait_ms) instead of failing. \
                Runs in the foreground with progress on stderr; every phase is kept in the job record \
                in etcd, so a killed `ctl move` is continued with `ctl jobs resume ID` or undone with \
                `ctl jobs cancel ID` (until the target has taken a write). One killed while the range \
                cannot be written (frozen until the map is published) is rolled forward by a running \
                `serve` within a few seconds. Exit 0 when done; 1 when the move was cancelled or \
                stopped for an operator, with the reason. A directory range (see `ctl status`) \
                moves the same way: its directory entries, and the decisions of the account openings \
                whose idempotency key falls in it.
                """)

        @OptionGroup var options: ConfigOptions

        @Argument(help: "The range id (see `shardbank ctl status`).")
        var range: String

        @Option(help: "The node to move it to.")
        var to: String

        @Option(help: ArgumentHelp("Copy at most this many rows (accounts, or directory entries) per second (default: no limit).", valueName: "n"))
        var maxRowsPerSecond: Int?

        @Option(help: ArgumentHelp("Seconds the source keeps the decision rows it gave away, after the map names the target (an in-doubt resolver may still ask the source for them).",
                                   valueName: "seconds"))
        var decisionGrace = 30

        @Flag(help: "Print the final job record as JSON.")
        var json = false

        func validate() throws {
            if let maxRowsPerSecond, maxRowsPerSecond <= 0 { throw ValidationError("--max-rows-per-second must be a positive number") }
            guard (5...3600).contains(decisionGrace) else { throw ValidationError("--decision-grace must be between 5 and 3600 seconds") }
        }

        func run() async throws {
            try await reportingErrors {
                try await withMover(options, maxRowsPerSecond: maxRowsPerSecond, decisionGrace: .seconds(decisionGrace)) { mover in
                    let map: MetadataKeys.MapName = try await mover.store.loadMap(.directory)?.map.range(id: range) != nil ? .directory : .accounts
                    let job = try await mover.create(map: map, range: range, to: to)
                    FileHandle.standardError.write(Data("job \(job.record.id): moving \(map.rawValue) range \(range) from \(job.record.from ?? "?") to \(to)\n".utf8))
                    let record = try await mover.run(job.record.id)
                    try finish(record, json: json)
                }
            }
        }
    }

    /// `ctl split`: one range becomes two on the same node, online.
    struct Split: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Split a range in two on its node while the bank runs (no row changes node).",
            discussion: """
                The node gets the new range's ownership row while the old row still covers the whole \
                range, the map is changed (the new range gets an id never used before), the rows at or \
                above the key are relabelled in chunks of 1,000, and one short transaction narrows the \
                old range and relabels what was written under it meanwhile; for an accounts range the \
                directory entries of the moved accounts then name the new range. Writes go on \
                throughout; a router still on the old map is sent to the new one by the node's bounds. \
                Without --at/--at-hash the range is split at its median by rows. Runs in the foreground \
                with progress on stderr; a killed split is continued with `ctl jobs resume ID`, or \
                undone with `ctl jobs cancel ID` until the map names the new range. Exit 0 when done; \
                1 when refused, cancelled or stopped for an operator, with the reason.
                """)

        @OptionGroup var options: ConfigOptions

        @Argument(help: "The range id (see `shardbank ctl status`): an accounts range (a…) or a directory range (d…).")
        var range: String

        @Option(help: ArgumentHelp("Accounts ranges: the balance where the new range begins, such as 2500.00 (at most two decimals).", valueName: "amount"))
        var at: String?

        @Option(name: .customLong("at-hash"), help: ArgumentHelp("Directory ranges: the account hash where the new range begins (a signed 64-bit number).", valueName: "n"))
        var atHash: Int64?

        @Flag(help: "Print the final job record as JSON.")
        var json = false

        func validate() throws {
            if at != nil, atHash != nil { throw ValidationError("give --at (accounts ranges) or --at-hash (directory ranges), not both") }
            if let at { do { _ = try Money(parsing: at) } catch { throw ValidationError("--at \(at): \(error)") } }
        }

        func run() async throws {
            try await reportingErrors {
                try await withRunners(options) { runners in
                    let store = runners.mover.store
                    let map: MetadataKeys.MapName = try await store.loadMap(.directory)?.map.range(id: range) != nil ? .directory : .accounts
                    if map == .accounts, atHash != nil { throw CLIError("\(range) is an accounts range: split it at a balance with --at, not --at-hash") }
                    if map == .directory, at != nil { throw CLIError("\(range) is a directory range: split it at a hash with --at-hash, not --at") }
                    let key = try at.map { try Money(parsing: $0).minorUnits } ?? atHash
                    let job = try await runners.splitter.create(map: map, range: range, at: key)
                    let shown = job.record.splitAt.map { map == .accounts ? Money(minorUnits: $0).description : String($0) } ?? "?"
                    FileHandle.standardError.write(Data("job \(job.record.id): splitting \(map.rawValue) range \(range) on \(job.record.from ?? "?") at \(shown) (new range \(job.record.newRange ?? "?"))\n".utf8))
                    try finish(try await runners.splitter.run(job.record.id), json: json)
                }
            }
        }
    }

    /// `ctl rebalance`: splits and moves until every active node holds its share of the accounts.
    struct Rebalance: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Split and move accounts ranges until every active node holds about as many accounts as the others.",
            discussion: """
                Counts the rows of every accounts range on its node, then plans: ranges of a draining \
                node move to the least-loaded node, ranges over --max-range-rows split at their median, \
                and while a node is more than --tolerance percent from the mean, the range that brings \
                the heaviest and the lightest node closest moves (split first when each is too big). \
                It does the plan's first step, counts again and plans again, until nothing is left to \
                do. Each step is an ordinary split or move job (`ctl jobs` lists them with the \
                rebalance as parent); a step that does not finish stops the rebalance, naming its job. \
                A range whose rows all hold one balance cannot be split: the plan says so. \
                --dry-run prints the plan and changes nothing. Exit 0 when balanced (or nothing more \
                can be done, said), 1 when a step failed.
                """)

        @OptionGroup var options: ConfigOptions
        @Flag(help: "Print the plan and the rows per node; change nothing.") var dryRun = false
        @Option(help: ArgumentHelp("Allowed distance of each node's rows from the mean, in percent.", valueName: "percent")) var tolerance = 10
        @Option(help: ArgumentHelp("Ranges with more rows than this are split first.", valueName: "rows")) var maxRangeRows = 50_000

        func validate() throws {
            guard (1...100).contains(tolerance) else { throw ValidationError("--tolerance must be between 1 and 100 (percent)") }
            guard maxRangeRows >= 2 else { throw ValidationError("--max-range-rows must be at least 2") }
        }

        func run() async throws {
            try await reportingErrors {
                try await withRunners(options) { runners in
                    let configuration = try await options.load()
                    let rebalancer = Rebalancer(mover: runners.mover, splitter: runners.splitter, logger: makeLogger(configuration.logLevel))
                    var settings = Rebalancer.Options()
                    settings.tolerance = tolerance
                    settings.maxRangeRows = maxRangeRows
                    if dryRun {
                        let (plan, rows) = try await rebalancer.plan(settings)
                        print("rows per node now: " + rows.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
                        if plan.steps.isEmpty { print("nothing to do: every active node is within \(tolerance) % of the mean") }
                        for (i, step) in plan.steps.enumerated() { print("\(i + 1). \(step)") }
                        if !plan.steps.isEmpty {
                            print("rows per node after (estimated): " + plan.projected.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
                        }
                        for note in plan.notes { print("note: \(note)") }
                        return
                    }
                    let job = try await rebalancer.create(settings)
                    FileHandle.standardError.write(Data("job \(job.record.id): rebalancing (tolerance \(tolerance) %, ranges over \(maxRangeRows) rows split)\n".utf8))
                    let outcome = try await rebalancer.run(job.record.id) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
                    let rows = outcome.rows.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                    for note in outcome.notes { print("note: \(note)") }
                    guard outcome.job.phase == "done" else { throw CLIError("rebalance \(outcome.job.id) stopped: \(outcome.job.error ?? "")") }
                    print("rebalance \(outcome.job.id): done in \(outcome.steps.count) step(s); rows per node: \(rows)")
                }
            }
        }
    }

    /// `ctl drain`: a node's ranges and history move away, then it is removed.
    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Empty a storage node while the bank runs, then remove it from the cluster.",
            discussion: """
                Marks the node draining (it takes no new ranges), moves each of its ranges of both \
                maps to the active node that holds the least (ordinary move jobs, listed by `ctl jobs` \
                with the drain as parent), waits until no branch prepared elsewhere names it as commit \
                point, then moves the history it keeps of accounts that left it by a crossing (their \
                postings there and the decisions they are home of) to each account's node, one \
                two-phase transaction per account that also takes the node out of the account's \
                previous nodes. When the node holds nothing it is marked removed: every serve closes \
                its pool and its agent exits. Runs in the foreground with progress on stderr; a killed \
                drain is continued with `ctl jobs resume ID` (or stopped with `ctl jobs cancel ID`: the \
                node stays draining, what moved stays moved). Refused: an unknown or removed node, the \
                last active node. Exit 0 when the node is removed; 1 when the drain stopped, saying why.
                """)

        @OptionGroup var options: ConfigOptions
        @Argument(help: "The node to drain (see `shardbank ctl status`).") var node: String
        @Option(help: ArgumentHelp("Seconds each range's old node keeps the decision rows it gave away, after the map names the new node (an in-doubt resolver may still ask it for them).",
                                   valueName: "seconds"))
        var decisionGrace = 30
        @Flag(help: "Print the final job record as JSON.") var json = false

        func validate() throws {
            guard (5...3600).contains(decisionGrace) else { throw ValidationError("--decision-grace must be between 5 and 3600 seconds") }
        }

        func run() async throws {
            try await reportingErrors {
                try await withRunners(options, decisionGrace: .seconds(decisionGrace)) { runners in
                    let job = try await runners.drainer.create(node: node)
                    FileHandle.standardError.write(Data("job \(job.record.id): draining \(node)\n".utf8))
                    try finish(try await runners.run(job.record.id, .resume), json: json)
                }
            }
        }
    }

    /// `ctl add-node`: a new storage node joins the running cluster.
    struct AddNode: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-node",
            abstract: "Add a storage node to the running cluster (it then takes ranges with `ctl move`).",
            discussion: """
                Connects with the configuration's credentials for the node (nodes.<ID>.password_file,                 else mysql.password_file), refuses a database that already holds ranges or accounts,                 brings its schema up to date, registers it `joining` (every serve opens a pool for it),                 waits up to --wait seconds for its agent's healthy heartbeat and makes it `active`.                 Without a heartbeat it exits 1 saying how to start the agent; run it again afterwards.
                """)

        @OptionGroup var options: ConfigOptions
        @Argument(help: "The new node's id (letters, digits, - or _).") var id: String
        @Option(help: "The MariaDB server's host.") var host: String
        @Option(help: "The MariaDB server's port.") var port: Int
        @Option(help: "The bank database on it.") var database = "bank_db"
        @Option(help: "disabled, required, verify_ca or verify_identity.") var tlsMode = "disabled"
        @Option(help: ArgumentHelp("Seconds to wait for the node's agent to beat healthy.", valueName: "seconds")) var wait = 15

        func run() async throws {
            try await reportingErrors {
                let configuration = try await options.load()
                let logger = makeLogger(configuration.logLevel)
                let node = try await withEtcd(configuration, logger: logger) { etcd in
                    try await NodeAdmission(id: id, host: host, port: port, database: database, tlsMode: tlsMode, wait: .seconds(wait))
                        .run(configuration: configuration, store: MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix)),
                             logger: logger, progress: progressPrinter())
                }
                print("\(node.id) added: \(node.host):\(node.port)/\(node.database), active")
            }
        }
    }

    /// `ctl jobs`: the jobs in etcd; resume or cancel one.
    struct Jobs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List, show, resume or cancel the cluster's jobs (range moves and splits).",
            subcommands: [List.self, Show.self, Resume.self, Cancel.self],
            defaultSubcommand: List.self)

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List every job, oldest first.")
            @OptionGroup var options: ConfigOptions
            @Flag(help: "Print JSON.") var json = false

            func run() async throws {
                try await reportingErrors {
                    let jobs = try await withStore(options) { try await $0.jobs().map(\.record) }
                    if json {
                        print(String(decoding: try jobEncoder().encode(jobs), as: UTF8.self))
                    } else if jobs.isEmpty {
                        print("no jobs")
                    } else {
                        print("ID                       KIND  RANGE            FROM → TO        PHASE           ROWS            UPDATED")
                        for j in jobs {
                            let range = "\(j.map ?? "")/\(j.range ?? "")"
                            let nodes = "\(j.from ?? "") → \(j.to ?? "")"
                            print(pad(j.id, 24), pad(j.kind.rawValue, 5), pad(range, 16), pad(nodes, 16), pad(j.phase, 15),
                                  pad("\(j.rows.copied)/\(j.rows.total)", 15), ISO8601DateFormatter().string(from: j.updatedAt))
                            if let error = j.error { print("    \(error)") }
                        }
                    }
                }
            }
        }

        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show one job's record (JSON) and who runs it.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "The job id.") var id: String

            func run() async throws {
                try await reportingErrors {
                    let (job, owner) = try await withStore(options) { store in (try await store.job(id), try await store.jobOwner(id)) }
                    guard let job else { throw CLIError("there is no job \(id); `shardbank ctl jobs` lists them") }
                    print(String(decoding: try jobEncoder().encode(job.record), as: UTF8.self))
                    FileHandle.standardError.write(Data((owner.map { "run by \($0)" } ?? (job.record.finished ? "ended" : "not running: resume or cancel it")).utf8 + [10]))
                }
            }
        }

        struct Resume: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Continue a stopped job from its recorded phase, in the foreground.",
                discussion: "Waits up to the owner lease's TTL for a runner that died to let go of the job. A move that died while its range was frozen is usually taken up by a running serve first: then this says who runs it.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "The job id.") var id: String
            @Flag(help: "Print the final job record as JSON.") var json = false

            func run() async throws {
                try await reportingErrors {
                    try await withRunners(options) { runners in try finish(try await runners.run(id, .resume), json: json) }
                }
            }
        }

        struct Cancel: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Undo a move that has not switched (the source active again, the target's copies removed), or a split the map does not show yet.",
                discussion: "Refused once the target may have taken a write (target_active and after), or once the map names a split's new range (relabeling and after): resume such a job instead.")
            @OptionGroup var options: ConfigOptions
            @Argument(help: "The job id.") var id: String
            @Flag(help: "Print the final job record as JSON.") var json = false

            func run() async throws {
                try await reportingErrors {
                    try await withRunners(options) { runners in
                        let record = try await runners.run(id, .cancel)
                        if json { print(String(decoding: try jobEncoder().encode(record), as: UTF8.self)) }
                        guard record.phase == MovePhase.cancelled.rawValue else { throw CLIError("job \(id) stopped in \(record.phase): \(record.error ?? "")") }
                        print(record.kind == .split ? "job \(id): cancelled; \(record.range ?? "") is whole again" : "job \(id): cancelled; \(record.range ?? "") stays on \(record.from ?? "")")
                    }
                }
            }
        }
    }
}

/// Prints how a move ended; a move that did not finish is an error (exit 1) that says what to do.
private func finish(_ record: JobRecord, json: Bool) throws {
    if json { print(String(decoding: try jobEncoder().encode(record), as: UTF8.self)) }
    switch record.phase {
    case SplitPhase.done.rawValue where record.kind == .split:
        let seconds = Int(record.updatedAt.timeIntervalSince(record.startedAt).rounded())
        let at = record.splitAt.map { record.map == "accounts" ? Money(minorUnits: $0).description : String($0) } ?? "?"
        if !json {
            print("job \(record.id): done in \(seconds) s — \(record.range ?? "") split at \(at) on \(record.from ?? ""): \(record.newRange ?? "") holds [\(at), …), \(record.rows.copied) rows looked at"
                  + ", narrowing lock wait \(record.freeze.lockWaitMs.map(String.init) ?? "?") ms, held \(record.freeze.windowMs.map(String.init) ?? "?") ms")
        }
    case DrainPhase.done.rawValue where record.kind == .drain:
        let seconds = Int(record.updatedAt.timeIntervalSince(record.startedAt).rounded())
        if !json { print("job \(record.id): done in \(seconds) s — \(record.from ?? "") is removed; the history of \(record.rows.copied) account(s) moved off it") }
    case DrainPhase.cancelled.rawValue where record.kind == .drain:
        throw CLIError("job \(record.id) was cancelled: \(record.error ?? "no reason recorded")")
    case "done" where record.kind == .rebalance:
        if !json { print("job \(record.id): done") }
    case _ where record.kind == .drain || record.kind == .rebalance:
        throw CLIError("job \(record.id) stopped in \(record.phase): \(record.error ?? "no reason recorded"). Continue it with `shardbank ctl jobs resume \(record.id)`")
    case MovePhase.done.rawValue:
        let seconds = Int(record.updatedAt.timeIntervalSince(record.startedAt).rounded())
        if !json {
            print("job \(record.id): done in \(seconds) s — \(record.range ?? "") moved from \(record.from ?? "") to \(record.to ?? ""), \(record.rows.copied) rows copied"
                  + (record.rowsPerSecond.map { " (\(Int($0)) rows/s)" } ?? "")
                  + ", freeze lock wait \(record.freeze.lockWaitMs.map(String.init) ?? "?") ms, window \(record.freeze.windowMs.map(String.init) ?? "?") ms"
                  + (record.freeze.verifyMs.map { " (verify \($0) ms)" } ?? ""))
        }
    case MovePhase.cancelled.rawValue:
        throw CLIError("job \(record.id) was cancelled: \(record.error ?? "no reason recorded"); \(record.range ?? "") stays on \(record.from ?? "")")
    default:
        throw CLIError("job \(record.id) stopped in \(record.phase): \(record.error ?? "no reason recorded"). Continue it with `shardbank ctl jobs resume \(record.id)`"
                       + ((record.kind == .split ? SplitPhase(rawValue: record.phase)?.cancellable : MovePhase(rawValue: record.phase)?.cancellable) == true ? " or undo it with `shardbank ctl jobs cancel \(record.id)`" : ""))
    }
}

private func jobEncoder() -> JSONEncoder {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    return encoder
}

private func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text : text + String(repeating: " ", count: width - text.count) }

/// A metadata store for the configuration's cluster.
private func withStore<T>(_ options: ConfigOptions, _ body: (MetadataStore) async throws -> T) async throws -> T {
    let configuration = try await options.load()
    return try await withEtcd(configuration, logger: makeLogger(configuration.logLevel)) { etcd in
        try await body(MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix)))
    }
}

/// What runs jobs here: a mover and a splitter over every registered node, with a progress line on stderr.
private struct Runners {
    let mover: RangeMover
    let splitter: RangeSplitter
    let logger: Logger

    var drainer: NodeDrainer { NodeDrainer(mover: mover, logger: logger) }

    /// Runs job `id` with the runner of its kind.
    func run(_ id: String, _ command: RangeMover.Command) async throws -> JobRecord {
        guard let job = try await mover.store.job(id) else { throw MoveError(.notFound, "there is no job \(id); `shardbank ctl jobs` lists them") }
        let told: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        switch job.record.kind {
        case .split: return try await splitter.run(id, command)
        case .drain: return try await drainer.run(id, command, told: told)
        case .rebalance:
            if command == .cancel { throw MoveError(.invalid, "a rebalance is not cancelled: cancel its unfinished step (a job whose parent is \(id))") }
            return try await Rebalancer(mover: mover, splitter: splitter, logger: logger).run(id, told: told).job
        case .move: return try await mover.run(id, command)
        }
    }
}

private func withMover(_ options: ConfigOptions, maxRowsPerSecond: Int?, decisionGrace: Duration = .seconds(30),
                       _ body: (RangeMover) async throws -> Void) async throws {
    try await withRunners(options, maxRowsPerSecond: maxRowsPerSecond, decisionGrace: decisionGrace) { try await body($0.mover) }
}

private func withRunners(_ options: ConfigOptions, maxRowsPerSecond: Int? = nil, decisionGrace: Duration = .seconds(30),
                         _ body: (Runners) async throws -> Void) async throws {
    let configuration = try await options.load()
    let logger = makeLogger(configuration.logLevel)
    try await withEtcd(configuration, logger: logger) { etcd in
        let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
        let connections = await nodeConnections(configuration, nodes: try await store.nodes(), logger: logger)
        var moverOptions = RangeMover.Options()
        moverOptions.maxRowsPerSecond = maxRowsPerSecond
        moverOptions.decisionGrace = decisionGrace
        var splitterOptions = RangeSplitter.Options()
        // Fault drills (scripts/acceptance): stop in a phase and wait there to be killed.
        if let hold = ProcessInfo.processInfo.environment["SHARDBANK_TEST_MOVE_HOLD_AT"] {
            @Sendable func holding(_ phase: String) async throws {
                guard phase == hold else { return }
                FileHandle.standardError.write(Data("holding at \(phase) (SHARDBANK_TEST_MOVE_HOLD_AT)\n".utf8))
                while true { try await Task.sleep(for: .seconds(3600)) }
            }
            moverOptions.beforeStep = { try await holding($0.rawValue) }
            splitterOptions.beforeStep = { try await holding($0.rawValue) }
        }
        let bar = ProgressLine()
        let runners = Runners(mover: RangeMover(connections: connections, store: store, options: moverOptions, logger: logger) { bar.show($0) },
                              splitter: RangeSplitter(connections: connections, store: store, options: splitterOptions, logger: logger) { bar.show($0) },
                              logger: logger)
        do {
            try await body(runners)
            bar.end()
            await connections.shutdown()
        } catch {
            bar.end()
            await connections.shutdown()
            throw error
        }
    }
}

/// One line of progress on stderr: redrawn in place on a terminal, a line per phase (and every
/// few seconds) otherwise.
private final class ProgressLine: Sendable {
    private let terminal = isatty(STDERR_FILENO) == 1
    private let last = Mutex<(phase: String, at: ContinuousClock.Instant)?>(nil)

    func show(_ record: JobRecord) {
        var text = "  \(record.phase)"
        if record.rows.total > 0 || record.rows.copied > 0 {
            text += "  \(record.rows.copied)/\(record.rows.total) rows"
            if record.rows.total > 0 { text += " (\(min(100, record.rows.copied * 100 / max(record.rows.total, 1)))%)" }
        }
        if let rate = record.rowsPerSecond, rate > 0 {
            text += "  \(Int(rate)) rows/s"
            if record.phase == MovePhase.copying.rawValue, record.rows.total > record.rows.copied {
                text += "  ETA \(Int((Double(record.rows.total - record.rows.copied) / rate).rounded(.up))) s"
            }
        }
        if record.phase == MovePhase.catchingUp.rawValue { text += "  \(record.rows.pendingChanges) changes pending" }
        if let wait = record.freeze.lockWaitMs, MovePhase(rawValue: record.phase).map({ $0.rangeUnwritable }) == true { text += "  freeze lock wait \(wait) ms" }
        let now = ContinuousClock.now
        let print = last.withLock { last -> Bool in
            defer { if last?.phase != record.phase || terminal || now - (last?.at ?? now) >= .seconds(3) { last = (record.phase, now) } }
            return terminal || last?.phase != record.phase || now - (last?.at ?? now) >= .seconds(3)
        }
        guard print else { return }
        FileHandle.standardError.write(Data((terminal ? "\r\u{1B}[K" + text : text + "\n").utf8))
    }

    func end() {
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
