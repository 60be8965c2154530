import Etcd
import MariaDB
import Sharding

/// Micro-benchmarks of the two drivers, to compare with sysbench and `etcdctl check perf`.
public enum DriverBenchmarks {
    /// sysbench's `oltp_point_select`: `SELECT c FROM sbtest1 WHERE id=?` with uniform random ids,
    /// one prepared statement per connection, `connections` concurrent clients.
    public static func pointSelect(configuration: MariaDBConfiguration, connections: Int, duration: Duration, tableSize: Int,
                                   progress: (@Sendable (String) -> Void)?) async throws -> LatencySummary {
        var opened: [MariaDBConnection] = []
        for _ in 0..<connections { opened.append(try await MariaDBConnection.connect(configuration: configuration)) }
        let check = try await opened[0].query("SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'sbtest1'")
        guard try check.rows.first?.int64("n") == 1 else {
            for c in opened { await c.close() }
            throw AdminError("table sbtest1 is missing in \(configuration.database ?? "the database"): run `sysbench oltp_point_select … prepare` first (bench/point-select.sh does)")
        }
        let pool = opened
        // One cheap generator per client: the system generator costs a getrandom(2) call per id.
        let generators = (0..<connections).map { SplitMix(seed: UInt64($0) &+ 0x5EED) }
        // Each client runs on its connection's thread, so driver calls run inline (see MariaDBConnection.executor).
        let summary = await LoadRunner.run(clients: connections, duration: duration, progress: progress,
                                           executor: { pool[$0].executor }) { client in
            let id = Int64(generators[client].next() % UInt64(tableSize)) + 1
            let rows = try await pool[client].execute("SELECT c FROM sbtest1 WHERE id=?", [.int(id)]).rows
            guard rows.count == 1 else { throw AdminError("row \(id) missing") }
        } errorCode: { ($0 as? MariaDBError)?.code.rawValue ?? "\($0)" }
        for c in opened { await c.close() }
        return summary
    }

    /// Puts (or serializable gets) of small values on distinct keys through the etcd client.
    public static func etcd(client: EtcdClient, operation: String, clients: Int, duration: Duration,
                            progress: (@Sendable (String) -> Void)?) async throws -> LatencySummary {
        let value = String(repeating: "x", count: 256)
        for i in 0..<100 { try await client.put("/shardbank-bench/key\(i)", value) }
        let summary = await LoadRunner.run(clients: clients, duration: duration, progress: progress) { c in
            let key = "/shardbank-bench/key\(Int.random(in: 0..<100))"
            if operation == "put" {
                try await client.put(key, value)
            } else {
                _ = try await client.get(key, consistency: operation == "get-serializable" ? .serializable : .linearizable)
            }
        } errorCode: { ($0 as? EtcdError)?.code.rawValue ?? "\($0)" }
        try await client.delete(.prefix("/shardbank-bench/"))
        return summary
    }
}

/// SplitMix64 as a tiny per-client random source for load generators (not for anything secret):
/// the generator's output is `DirectoryHash.mix64` of its running state.
/// `@unchecked Sendable`: each instance is used by exactly one client task.
final class SplitMix: @unchecked Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    func next() -> UInt64 {
        defer { state &+= 0x9E37_79B9_7F4A_7C15 }
        return DirectoryHash.mix64(state)
    }
}
