import Admin
import ArgumentParser
import Etcd
import AsyncHTTPClient
import ClusterMetadata
import Foundation
import Ledger
import Logging
import ShardBankConfig

/// Options shared by every command that talks to a cluster.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The configuration file (JSON).", valueName: "file"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical (overrides logging.level).", valueName: "level"))
    var logLevel: String?

    func load() async throws -> ShardBankConfiguration {
        var configuration = try await ShardBankConfiguration.load(file: config)
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw CLIError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
            }
            configuration.logLevel = level
        }
        return configuration
    }
}

/// A message for the operator; printed as `error: …`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The process's logger: stderr, the configured level. Only the executable bootstraps logging.
func makeLogger(_ level: Logger.Level, label: String = "shardbank") -> Logger {
    var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = level
    return logger
}

/// Runs `body`; prints any error as one clear line and exits non-zero.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch let error as any ValidationErrorLike {
        throw error
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
}

/// Errors ArgumentParser formats itself (usage errors).
protocol ValidationErrorLike: Error {}
extension ValidationError: ValidationErrorLike {}

/// An etcd client for a configuration, shut down after `body`.
func withEtcd<T>(_ configuration: ShardBankConfiguration, logger: Logger, _ body: (EtcdClient) async throws -> T) async throws -> T {
    try await EtcdClient.with(configuration: configuration.etcd, logger: logger, body)
}

func progressPrinter(_ quiet: Bool = false) -> @Sendable (String) -> Void {
    { message in if !quiet { FileHandle.standardError.write(Data("  \(message)\n".utf8)) } }
}

/// The status of a GET, or nil when nothing answered within 2 s.
func httpStatus(_ url: String) async throws -> Int? {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    let status: Int?
    do {
        let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(2))
        status = Int(response.status.code)
    } catch {
        status = nil
    }
    try await client.shutdown()
    return status
}

/// A pool per registered node and the shard maps, read from the cluster `options` names; the pools
/// and the etcd client are shut down after `body`.
func withNodeConnections<T: Sendable>(_ options: ConfigOptions, _ body: (NodeConnections, LedgerMaps) async throws -> T) async throws -> T {
    let configuration = try await options.load()
    let logger = makeLogger(configuration.logLevel)
    return try await withEtcd(configuration, logger: logger) { etcd in
        let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: configuration.etcdPrefix))
        guard let accounts = try await store.loadMap(.accounts), let directory = try await store.loadMap(.directory) else {
            throw CLIError("the cluster is not initialised: run `shardbank ctl init --config FILE` first")
        }
        let connections = await nodeConnections(configuration, nodes: try await store.nodes(), logger: logger)
        do {
            let result = try await body(connections, LedgerMaps(accounts: accounts.map, directory: directory.map))
            await connections.shutdown()
            return result
        } catch {
            await connections.shutdown()
            throw error
        }
    }
}
