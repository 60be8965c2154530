import ClusterMetadata
import Foundation

/// Runs a job's steps while holding its owner key (`jobs/{id}/owner`) under an etcd lease that is
/// kept alive meanwhile. A runner whose lease lapses (etcd unreachable for the TTL) is stopped, so
/// that another may take the job over; one that finds the key held waits up to `claimWait` for a
/// dead runner's lease to expire.
struct JobOwnership: Sendable {
    let store: MetadataStore
    let id: String
    let leaseTTL: Int64
    let claimWait: Duration

    /// Claims the job, runs `body` with the owner name, then lets the job go.
    func run<T: Sendable>(_ body: @escaping @Sendable (_ owner: String) async throws -> T) async throws -> T {
        let owner = "\(ProcessInfo.processInfo.hostName)/\(getpid())/\(UInt32.random(in: 0...UInt32.max))"
        let lease = try await claim(owner: owner)
        let store = self.store, id = self.id, ttl = leaseTTL
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: .milliseconds(ttl * 1000 / 3))
                    if try await store.etcd.keepAliveOnce(lease) == nil {
                        throw MoveError(.superseded, "job \(id): this runner's lease expired (etcd unreachable for \(ttl) s?); it stops, and `ctl jobs resume \(id)` goes on")
                    }
                }
                return nil
            }
            group.addTask {
                let result = try await body(owner)
                try? await store.releaseJob(id, owner: owner)
                try? await store.etcd.revokeLease(lease)
                return result
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            throw MoveError(.superseded, "job \(id) stopped")
        }
    }

    /// Takes the owner key, waiting up to `claimWait` for another runner's lease to expire.
    private func claim(owner: String) async throws -> Int64 {
        let lease = try await store.etcd.grantLease(ttl: leaseTTL)
        let deadline = ContinuousClock.now + claimWait
        while true {
            // Our own lease must outlive the wait for the other's to expire.
            _ = try await store.etcd.keepAliveOnce(lease.id)
            if try await store.claimJob(id, owner: owner, lease: lease.id) { return lease.id }
            guard ContinuousClock.now < deadline else {
                try? await store.etcd.revokeLease(lease.id)
                let holder = try await store.jobOwner(id) ?? "another runner"
                throw MoveError(.superseded, "job \(id) is being run by \(holder); wait for it, or stop that process and resume the job")
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}
