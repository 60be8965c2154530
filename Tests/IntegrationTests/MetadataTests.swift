import Admin
import BankSchema
import ClusterMetadata
import Etcd
import Foundation
import LocalCluster
import Sharding
import ShardBankConfig
import Testing

@Suite("Cluster metadata in a real etcd", .serialized)
struct MetadataTests {
    @Test("shard map compare-and-swap: of two concurrent writers one wins, the other gets a conflict")
    func casConflict() async throws {
        try await withCluster(nodes: 0, etcd: 1) { cluster in
            try await withEtcd(cluster) { etcd in
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: "/cas/"))
                let rev = try await store.saveMap(SeedLayout.accountsMap(), as: .accounts, expectedRevision: 0)
                // A second create fails: the map exists.
                await #expect(throws: MetadataError.self) { try await store.saveMap(SeedLayout.accountsMap(), as: .accounts, expectedRevision: 0) }
                let a = try SeedLayout.accountsMap().splitting("a3", at: 10_000_001, newID: "a4")
                let b = try SeedLayout.accountsMap().reassigning("a1", to: "node2")
                let results = await withTaskGroup(of: Result<Int64, MetadataError>.self) { group in
                    for map in [a, b] {
                        group.addTask {
                            do throws(MetadataError) { return .success(try await store.saveMap(map, as: .accounts, expectedRevision: rev)) } catch { return .failure(error) }
                        }
                    }
                    return await group.reduce(into: []) { $0.append($1) }
                }
                let wins = results.filter { if case .success = $0 { true } else { false } }
                #expect(wins.count == 1)
                for case .failure(let error) in results {
                    #expect(error.code == .conflict)
                }
                let stored = try #require(try await store.loadMap(.accounts))
                #expect(stored.map == a || stored.map == b) // one whole map, never a mix
                // An invalid map is refused before anything is written.
                let broken = Data(#"{"name":"accounts","key":"balance_cents","version":9,"ranges":[{"id":"a","lo":0,"node":"node1"}]}"#.utf8)
                let valid = try JSONDecoder().decode(RangeMap.self, from: broken)
                await #expect(throws: MetadataError.self) {
                    try await store.saveMap(valid, as: .accounts, expectedRevision: stored.modRevision, knownNodes: ["node2"])
                }
                #expect(try await store.loadMap(.accounts) == stored)
            }
        }
    }

    @Test("id allocator: 8 concurrent allocators drawing 10,000 ids each get no duplicate and no gap larger than a block")
    func allocator() async throws {
        try await withCluster(nodes: 0, etcd: 1) { cluster in
            try await withEtcd(cluster) { etcd in
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: "/ids/"))
                let blockSize: Int64 = 500
                let all = try await withThrowingTaskGroup(of: [Int64].self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            let allocator = IDAllocator(store: store, blockSize: blockSize)
                            var ids: [Int64] = []
                            ids.reserveCapacity(10_000)
                            for _ in 0..<10_000 { ids.append(try await allocator.nextID()) }
                            return ids
                        }
                    }
                    return try await group.reduce(into: [Int64]()) { $0 += $1 }
                }
                #expect(all.count == 80_000)
                #expect(Set(all).count == 80_000)
                let sorted = all.sorted()
                let largestGap = zip(sorted, sorted.dropFirst()).map { $1 - $0 - 1 }.max() ?? 0
                #expect(largestGap < blockSize)
                #expect(sorted.first == 1)
            }
        }
    }

    @Test("watch-fed caches: three watchers see every change; a cache rebuilds after a lost stream and a compaction")
    func cache() async throws {
        try await withCluster(nodes: 0, etcd: 3) { cluster in
            try await withEtcd(cluster) { etcd in
                let keys = MetadataKeys(prefix: "/cache/")
                let store = MetadataStore(etcd: etcd, keys: keys)
                _ = try await store.saveMap(SeedLayout.accountsMap(), as: .accounts, expectedRevision: 0)
                try await store.register(NodeInfo(id: "node1", host: "127.0.0.1", port: 1, database: "bank_db"))
                // The watches use a follower (hanging the leader would stall the writes below until a
                // new leader is elected, and their answers would be lost).
                let endpoints = cluster.description.etcd.endpoints
                var hung = 0
                for (i, endpoint) in endpoints.enumerated() {
                    let status = try await etcd.status(endpoint: endpoint)
                    if status.memberID != status.leader { hung = i; break }
                }
                let hungMember = cluster.description.etcd.members[hung].name
                let others = endpoints.enumerated().filter { $0.offset != hung }.map(\.element)
                // Each watcher has its own client, as separate processes would. Their hang checks run
                // every 3 s, so the compaction below (milliseconds after the hang) is always first.
                let clients = (0..<3).map { _ in
                    EtcdClient(configuration: EtcdConfiguration(endpoints: [endpoints[hung]] + others,
                                                                watchHealthInterval: .seconds(3)), logger: testLogger)
                }
                let caches = clients.map { MetadataCache(store: MetadataStore(etcd: $0, keys: keys), logger: testLogger) }
                defer { try? cluster.resume(hungMember) }
                var failure: (any Error)?
                do { try await withThrowingTaskGroup(of: Void.self) { group in
                    for cache in caches { group.addTask { try await cache.run() } }
                    for cache in caches { _ = try await cache.waitUntil(timeout: .seconds(5)) { $0.accounts?.map.version == 1 && $0.nodes["node1"] != nil } }

                    // Every watcher sees every change (how fast is for `bench`, not for a test).
                    let reloadsBefore = caches.map(\.snapshot.reloads)
                    for round in 0..<5 {
                        let current = try #require(try await store.loadMap(.accounts))
                        let next = try current.map.splitting("a3", at: 10_000_001 + Int64(round), newID: "x\(round)")
                            .merging("a3", "x\(round)")
                        _ = try await store.saveMap(next, as: .accounts, expectedRevision: current.modRevision)
                        for cache in caches {
                            let seen = try await cache.waitUntil(timeout: .seconds(15)) { $0.accounts?.map.version == next.version }
                            #expect(seen.accounts?.map == next)
                        }
                    }
                    #expect(caches.map(\.snapshot.reloads) == reloadsBefore, "the changes came through the watches, not reloads")

                    // Lost stream + compaction: hang the member every watch uses (SIGSTOP: its sockets stay
                    // open and silent), change things and compact through a client of the other members
                    // before the watches' hang checks notice; they must then resume by reloading.
                    let before = caches.map(\.snapshot.reloads)
                    try cluster.pause(hungMember)
                    try await EtcdClient.with(configuration: EtcdConfiguration(endpoints: others), logger: testLogger) { writer in
                        try await MetadataStore(etcd: writer, keys: keys)
                            .register(NodeInfo(id: "node2", host: "127.0.0.1", port: 2, database: "bank_db"))
                        try await writer.delete(.key(keys.nodeInfo("node1")))
                        let last = try await writer.put("/cache/filler", "x")
                        try await writer.compact(revision: last)
                    }
                    for cache in caches {
                        let s = try await cache.waitUntil(timeout: .seconds(15)) { $0.nodes["node2"] != nil && $0.nodes["node1"] == nil }
                        #expect(s.accounts?.map.version == 11)
                    }
                    #expect(caches.map(\.snapshot.reloads) == before.map { $0 + 1 })
                    try cluster.resume(hungMember)
                    group.cancelAll()
                } } catch { failure = error }
                for c in clients { try await c.shutdown() }
                if let failure { throw failure }
            }
        }
    }

    @Test("ctl init: seed layout, schema on every node, refuses a second init, writes nothing on a wrong password; --force replaces maps and fences, keeps ids")
    func bootstrap() async throws {
        try await withCluster(nodes: 3, etcd: 1) { cluster in
            let configuration = try await configurationFor(cluster)
            try await withEtcd(cluster) { etcd in
                // Wrong password on node3: nothing reaches etcd.
                var wrong = configuration
                wrong.mysql.credentials["node3"] = (user: "bank", password: "wrong-\(UUID())")
                await #expect(throws: (any Error).self) { try await Bootstrap(configuration: wrong).run(etcd: etcd, logger: testLogger, progress: { _ in }) }
                #expect(try await etcd.range(.prefix("/shardbank/")).kvs.isEmpty)

                try await Bootstrap(configuration: configuration).run(etcd: etcd, logger: testLogger, progress: { _ in })
                let status = try await ClusterStatus.load(store: MetadataStore(etcd: etcd, keys: MetadataKeys()))
                #expect(status.nodes.map(\.id) == ["node1", "node2", "node3"])
                #expect(status.accounts?.map == SeedLayout.accountsMap())
                let text = status.text()
                #expect(text.contains("a2     10000.01  50000.01  node2"))
                do {
                    try await Bootstrap(configuration: configuration).run(etcd: etcd, logger: testLogger, progress: { _ in })
                    Issue.record("second init accepted")
                } catch let error as AdminError {
                    #expect(error.message.contains("already initialised"))
                }
                // No password from the cluster anywhere in etcd.
                let everything = try await etcd.range(.prefix("/")).kvs.map(\.stringValue).joined()
                for node in cluster.description.nodes { #expect(!everything.contains(node.password)) }
                // Each node owns exactly its ranges in the fence table.
                let c = try await connect(cluster, "node2")
                let owned = try await c.query("SELECT map_name, range_id FROM range_ownership ORDER BY map_name, range_id").rows.map { "\(try $0.string("map_name"))/\(try $0.string("range_id"))" }
                #expect(owned == ["accounts/a2", "directory/d2"])
                #expect(try await c.query("SELECT MAX(version) AS v FROM schema_migrations").rows.first?.int64("v") == Int64(BankSchema.latestVersion))
                await c.close()
                // What --force is for: it discards the maps that are there (here a1 moved to node2) and
                // rewrites every node's fence table, but never hands out an id again that an allocator
                // already drew.
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys())
                let current = try #require(try await store.loadMap(.accounts))
                let moved = try current.map.reassigning("a1", to: "node2")
                _ = try await store.saveMap(moved, as: .accounts, expectedRevision: current.modRevision)
                #expect(try await store.loadMap(.accounts)?.map == moved)
                let fenced = try await connect(cluster, "node2")
                try await fenced.execute("INSERT INTO range_ownership (map_name, range_id, lower_bound, upper_bound, epoch, state) VALUES ('accounts', 'a1', 0, 1000001, 2, 'active')")
                let drawn = try await (0..<3).asyncMap { _ in try await IDAllocator(store: store, blockSize: 50).nextID() }
                try await Bootstrap(configuration: configuration, force: true).run(etcd: etcd, logger: testLogger, progress: { _ in })
                #expect(try await store.loadMap(.accounts)?.map == SeedLayout.accountsMap(), "--force put the given layout back")
                let refenced = try await fenced.query("SELECT map_name, range_id FROM range_ownership ORDER BY map_name, range_id").rows.map { "\(try $0.string("map_name"))/\(try $0.string("range_id"))" }
                #expect(refenced == ["accounts/a2", "directory/d2"], "node2's fence table rewritten from the new map")
                await fenced.close()
                let next = try await IDAllocator(store: store, blockSize: 50).nextID()
                #expect(next > drawn.max()!, "id \(next) after --force; already drawn: \(drawn)")
            }
        }
    }
}

/// A configuration for a test cluster, as `demo up` writes it.
func configurationFor(_ cluster: LocalCluster) async throws -> ShardBankConfiguration {
    let dir = cluster.dir + "/test-config"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var nodes: [String] = []
    for n in cluster.description.nodes where !n.spare {
        try n.password.write(toFile: "\(dir)/\(n.id)-password", atomically: true, encoding: .utf8)
        nodes.append(#""\#(n.id)": {"host": "\#(n.host)", "port": \#(n.port), "database": "\#(n.database)", "user": "\#(n.user)", "password_file": "\#(n.id)-password"}"#)
    }
    let json = """
        {"etcd": {"endpoints": [\(cluster.description.etcd.endpoints.map { "\"\($0)\"" }.joined(separator: ","))]},
         "cluster": {"nodes": [\(cluster.description.nodes.filter { !$0.spare }.map { "\"\($0.id)\"" }.joined(separator: ","))]},
         "nodes": {\(nodes.joined(separator: ","))}}
        """
    try json.write(toFile: dir + "/shardbank.json", atomically: true, encoding: .utf8)
    return try await ShardBankConfiguration.load(file: dir + "/shardbank.json", environment: [:])
}

extension Sequence {
    /// `map` with an async transform, one element after the other.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
