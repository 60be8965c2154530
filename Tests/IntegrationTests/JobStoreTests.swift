import ClusterMetadata
import Etcd
import Foundation
import Testing

/// Job records in a real etcd: what moves, splits and drains will stand on.
@Suite("Job records in etcd", .serialized)
struct JobStoreTests {
    @Test("a job is created once, updated only from the revision read, and a finished job releases its range")
    func createUpdateFinish() async throws {
        try await withCluster(nodes: 0) { cluster in
            try await withEtcd(cluster) { etcd in
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: "/jobs-test/"))
                var record = JobRecord(id: JobRecord.newID(), kind: .move, map: "accounts", range: "a1", from: "node1", to: "node4", epoch: 2, phase: "prepared")
                let created = try await store.createJob(record)
                // Another job on the same range is refused, naming the first.
                let second = JobRecord(id: JobRecord.newID(), kind: .split, map: "accounts", range: "a1", phase: "prepared")
                do {
                    _ = try await store.createJob(second)
                    Issue.record("a second job on a1 was created")
                } catch let error as MetadataError {
                    #expect(error.code == .conflict && error.message.contains(record.id), "\(error)")
                }
                // Compare-and-swap: the revision read wins once; a runner holding an older one is refused.
                record.phase = "capturing"
                record.rows = .init(total: 50_000, copied: 0, pendingChanges: 0)
                let revision = try await store.updateJob(record, expectedRevision: created.modRevision)
                record.phase = "copying"
                await #expect(throws: MetadataError.self) { _ = try await store.updateJob(record, expectedRevision: created.modRevision) }
                let stored = try #require(try await store.job(record.id))
                #expect(stored.record.phase == "capturing" && stored.record.rows.total == 50_000 && stored.modRevision == revision)
                // The same write again (its answer was lost, the runner retries from the old revision): no conflict.
                var landed = record
                landed.phase = "capturing"
                #expect(try await store.updateJob(landed, expectedRevision: created.modRevision) == revision)
                // Done: the range is free for the next job.
                record.phase = "done"
                _ = try await store.updateJob(record, expectedRevision: revision)
                _ = try await store.createJob(second)
                #expect(try await store.jobs().map(\.record.id) == [record.id, second.id])
                // The JSON a client sees: snake_case keys.
                let json = String(decoding: try #require(try await etcd.get(store.keys.job(record.id))).value, as: UTF8.self)
                #expect(json.contains("\"pending_changes\"") && json.contains("\"started_at\"") && json.contains("\"phase\":\"done\""))
            }
        }
    }

    @Test("a job has one owner at a time; when the owner's lease ends another runner takes it over")
    func ownership() async throws {
        try await withCluster(nodes: 0) { cluster in
            try await withEtcd(cluster) { etcd in
                let store = MetadataStore(etcd: etcd, keys: MetadataKeys(prefix: "/jobs-test/"))
                let job = try await store.createJob(JobRecord(id: JobRecord.newID(), kind: .drain, phase: "moving"))
                let first = try await etcd.grantLease(ttl: 2)
                let second = try await etcd.grantLease(ttl: 2)
                #expect(try await store.claimJob(job.record.id, owner: "serve-1", lease: first.id))
                #expect(try await !store.claimJob(job.record.id, owner: "serve-2", lease: second.id))
                #expect(try await store.jobOwner(job.record.id) == "serve-1")
                // serve-1 dies: its lease is not kept alive (revoked here, as expiry would).
                try await etcd.revokeLease(first.id)
                #expect(try await store.jobOwner(job.record.id) == nil)
                #expect(try await store.claimJob(job.record.id, owner: "serve-2", lease: second.id))
                #expect(try await store.jobs().count == 1, "the owner key is not listed as a job")
            }
        }
    }
}
