import ClusterMetadata
import Foundation
import Health
import Sharding

/// `ctl status`: the maps and the nodes, as text or JSON.
public struct ClusterStatus: Sendable {
    public var prefix: String
    public var accounts: StoredMap?
    public var directory: StoredMap?
    public var nodes: [NodeInfo]
    /// Each node's health from its agent's heartbeat. A one-shot reader judges a beat's age by the
    /// agent's clock (`time_ms`) against this machine's; `serve` uses receipt times instead.
    public var health: [NodeHealth] = []
    /// Jobs still running or stopped, and the five that ended last.
    public var jobs: [JobRecord] = []

    public static func load(store: MetadataStore) async throws -> ClusterStatus {
        async let accounts = store.loadMap(.accounts)
        async let directory = store.loadMap(.directory)
        async let nodes = store.nodes()
        var status = ClusterStatus(prefix: store.keys.prefix, accounts: try await accounts, directory: try await directory, nodes: try await nodes)
        // Every heartbeat in one read.
        var beats: [String: Heartbeat] = [:]
        for kv in try await store.etcd.range(.prefix(store.keys.prefix + "node/")).kvs {
            if let (id, leaf) = store.keys.parseNodeKey(kv.key), leaf == "heartbeat" { beats[id] = Heartbeat.decode(kv.value) }
        }
        let jobs = try await store.jobs().map(\.record)
        status.jobs = jobs.filter { !$0.finished } + jobs.filter(\.finished).sorted { $0.updatedAt < $1.updatedAt }.suffix(5)
        let nowMillis = Int64(Date().timeIntervalSince1970 * 1000)
        status.health = status.nodes.map { node in
            let beat = beats[node.id]
            return NodeHealth.judge(node: node.id, beat: beat, age: beat.map { .milliseconds(max(0, nowMillis - $0.timeMillis)) }, poolErrorAge: nil)
        }
        return status
    }

    /// How a bound of a map reads to a person: money for balances, the raw hash otherwise.
    static func bound(_ value: Int64?, keyKind: String) -> String {
        guard let value else { return "∞" }
        return keyKind == "balance_cents" ? Money(minorUnits: value).description : String(value)
    }

    public func text() -> String {
        guard accounts != nil || directory != nil || !nodes.isEmpty else {
            return "No ShardBank cluster under \(prefix): run `shardbank ctl init --config FILE` first.\n"
        }
        var out = ""
        for (title, stored) in [("accounts (by balance)", accounts), ("directory (by account-id hash)", directory)] {
            guard let stored else { out += "\(title): not initialised\n\n"; continue }
            out += "\(title) map, version \(stored.map.version), etcd revision \(stored.modRevision)\n"
            var rows = [["RANGE", "FROM", "TO", "NODE"]]
            for r in stored.map.ranges {
                rows.append([r.id, Self.bound(r.lowerBound, keyKind: stored.map.keyKind), Self.bound(r.upperBound, keyKind: stored.map.keyKind), r.node])
            }
            out += table(rows) + "\n"
        }
        out += "nodes\n"
        var rows = [["NODE", "ADDRESS", "DATABASE", "TLS", "STATE", "HEALTH", "LAST BEAT"]]
        for n in nodes {
            let h = health.first { $0.node == n.id }
            rows.append([n.id, "\(n.host):\(n.port)", n.database, n.tlsMode, n.state.rawValue, h?.state.rawValue ?? "-",
                         h?.heartbeatAge.map { "\($0.milliseconds) ms ago" } ?? "none"])
        }
        out += table(rows)
        for h in health where h.state != .healthy { out += "  \(h.node): \(h.reason ?? h.state.rawValue)\n" }
        if !jobs.isEmpty {
            out += "\njobs (unfinished, then the last ended)\n"
            var rows = [["JOB", "KIND", "RANGE", "FROM", "TO", "PHASE", "ROWS", "NOTE"]]
            for j in jobs {
                rows.append([j.id, j.kind.rawValue, "\(j.map ?? "")/\(j.range ?? "")", j.from ?? "", j.to ?? "", j.phase,
                             "\(j.rows.copied)/\(j.rows.total)", j.error ?? ""])
            }
            out += table(rows)
        }
        return out
    }

    public func json() throws -> String {
        struct MapOut: Encodable {
            var name: String, version: Int64, key: String, modRevision: Int64
            var ranges: [RangeOut]
            enum CodingKeys: String, CodingKey { case name, version, key, modRevision = "mod_revision", ranges }
        }
        struct RangeOut: Encodable {
            var id: String, lo: Int64, hi: Int64?, from: String, to: String, node: String
        }
        struct HealthOut: Encodable {
            var node: String, state: String, healthy: Bool, heartbeatAgeMs: Int64?, reason: String?
            enum CodingKeys: String, CodingKey { case node, state, healthy, heartbeatAgeMs = "heartbeat_age_ms", reason }
        }
        struct Out: Encodable { var prefix: String; var maps: [MapOut]; var nodes: [NodeInfo]; var health: [HealthOut]; var jobs: [JobRecord] }
        let maps = [accounts, directory].compactMap { $0 }.map { s in
            MapOut(name: s.map.name, version: s.map.version, key: s.map.keyKind, modRevision: s.modRevision, ranges: s.map.ranges.map {
                RangeOut(id: $0.id, lo: $0.lowerBound, hi: $0.upperBound, from: Self.bound($0.lowerBound, keyKind: s.map.keyKind),
                         to: Self.bound($0.upperBound, keyKind: s.map.keyKind), node: $0.node)
            })
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: try encoder.encode(Out(prefix: prefix, maps: maps, nodes: nodes, health: health.map {
            HealthOut(node: $0.node, state: $0.state.rawValue, healthy: $0.state == .healthy, heartbeatAgeMs: $0.heartbeatAge?.milliseconds, reason: $0.reason)
        }, jobs: jobs)), as: UTF8.self) + "\n"
    }

    private func table(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }
}
