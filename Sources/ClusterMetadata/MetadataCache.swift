import Etcd
import Logging
import ServiceLifecycle
import Sharding
import Synchronization

/// What a process knows of the cluster at one etcd revision.
public struct MetadataSnapshot: Sendable {
    public var accounts: StoredMap?
    public var directory: StoredMap?
    public var nodes: [String: NodeInfo]
    /// Raw heartbeat values by node id (decoded by the health layer).
    public var heartbeats: [String: EtcdKeyValue]
    /// When this process received each node's current heartbeat (its age is judged by this, not by
    /// the writer's clock).
    public var heartbeatReceived: [String: ContinuousClock.Instant] = [:]
    /// The etcd revision this snapshot reflects.
    public var revision: Int64
    /// How many times the cache rebuilt itself from a full read (start-up counts as one).
    public var reloads: Int

    public static let empty = MetadataSnapshot(accounts: nil, directory: nil, nodes: [:], heartbeats: [:], revision: 0, reloads: 0)

    public func map(_ name: MetadataKeys.MapName) -> StoredMap? {
        switch name {
        case .accounts: accounts
        case .directory: directory
        }
    }
}

/// The cluster metadata kept current by an etcd watch: every process reads maps and nodes from here,
/// never from etcd on a request path.
///
/// Run it as a `Service`. It loads everything under the prefix, then applies the watch's events in
/// order. When the watch cannot resume (its revision was compacted) it reloads; a broken stream is
/// resumed by the etcd client without loss. Readers get consistent snapshots; ``waitUntil(_:timeout:)``
/// waits for a condition.
public final class MetadataCache: Service, Sendable {
    public let store: MetadataStore
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var snapshot = MetadataSnapshot.empty
        var waiters: [Int: (condition: @Sendable (MetadataSnapshot) -> Bool, continuation: CheckedContinuation<MetadataSnapshot, any Error>)] = [:]
        var nextWaiter = 0
        /// Waiters cancelled before they registered.
        var cancelled: Set<Int> = []
    }

    public init(store: MetadataStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// The current snapshot.
    public var snapshot: MetadataSnapshot { state.withLock { $0.snapshot } }

    public func run() async throws {
        // Graceful shutdown cancels the loop (and with it the watch).
        await cancelWhenGracefulShutdown {
            await self.runUntilCancelled()
        }
    }

    private func runUntilCancelled() async {
        var backoff: Duration = .milliseconds(100)
        while !Task.isCancelled {
            do {
                let revision = try await reload()
                backoff = .milliseconds(100)
                for try await batch in store.etcd.watch(.prefix(store.keys.prefix), startRevision: revision + 1) {
                    apply(batch)
                }
                if Task.isCancelled { break }
            } catch let error as EtcdError where error.code == .compacted {
                logger.info("metadata watch fell behind a compaction; reloading", metadata: ["compact_revision": "\(error.compactRevision ?? 0)"])
            } catch {
                if Task.isCancelled { break }
                logger.warning("metadata cache cannot reach etcd; serving the last known state", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
        let waiters = state.withLock { s in
            defer { s.waiters.removeAll() }
            return s.waiters.values.map(\.continuation)
        }
        waiters.forEach { $0.resume(throwing: CancellationError()) }
    }

    /// Reads everything under the prefix and replaces the snapshot; returns the read's revision.
    @discardableResult
    public func reload() async throws -> Int64 {
        let result = try await store.etcd.range(.prefix(store.keys.prefix))
        var snapshot = MetadataSnapshot.empty
        snapshot.revision = result.revision
        for kv in result.kvs { try? Self.applyPut(kv, to: &snapshot, keys: store.keys) }
        publish { current in
            snapshot.reloads = current.reloads + 1
            current = snapshot
        }
        return result.revision
    }

    /// Reads both shard maps from etcd now and keeps whichever of the read and the cached map is
    /// newer. A router told `wrong_shard` calls this instead of waiting for the watch, which may be
    /// behind (a hung member, a slow stream).
    public func refreshMaps() async throws {
        let accounts = try await store.loadMap(.accounts)
        let directory = try await store.loadMap(.directory)
        publish { snapshot in
            if let accounts, accounts.modRevision > snapshot.accounts?.modRevision ?? 0 { snapshot.accounts = accounts }
            if let directory, directory.modRevision > snapshot.directory?.modRevision ?? 0 { snapshot.directory = directory }
        }
    }

    private func apply(_ batch: EtcdWatchBatch) {
        publish { snapshot in
            for event in batch.events {
                switch event.kind {
                case .put:
                    do { try Self.applyPut(event.kv, to: &snapshot, keys: store.keys) } catch {
                        logger.error("ignoring unreadable metadata", metadata: ["key": "\(event.kv.key)", "error": "\(error)"])
                    }
                case .delete:
                    Self.applyDelete(event.kv.key, to: &snapshot, keys: store.keys)
                }
                snapshot.revision = max(snapshot.revision, event.kv.modRevision)
            }
            snapshot.revision = max(snapshot.revision, batch.revision)
        }
    }

    private func publish(_ change: (inout MetadataSnapshot) -> Void) {
        let ready = state.withLock { s -> [(CheckedContinuation<MetadataSnapshot, any Error>, MetadataSnapshot)] in
            change(&s.snapshot)
            var ready: [(CheckedContinuation<MetadataSnapshot, any Error>, MetadataSnapshot)] = []
            for (id, waiter) in s.waiters where waiter.condition(s.snapshot) {
                ready.append((waiter.continuation, s.snapshot))
                s.waiters[id] = nil
            }
            return ready
        }
        ready.forEach { $0.0.resume(returning: $0.1) }
    }

    static func applyPut(_ kv: EtcdKeyValue, to snapshot: inout MetadataSnapshot, keys: MetadataKeys) throws(MetadataError) {
        if kv.key == keys.shardMap(.accounts) {
            snapshot.accounts = try MetadataStore.decodeMap(kv)
        } else if kv.key == keys.shardMap(.directory) {
            snapshot.directory = try MetadataStore.decodeMap(kv)
        } else if let (id, leaf) = keys.parseNodeKey(kv.key) {
            if leaf == "info" { snapshot.nodes[id] = try MetadataStore.decodeNode(kv) }
            if leaf == "heartbeat" {
                snapshot.heartbeats[id] = kv
                snapshot.heartbeatReceived[id] = .now
            }
        }
    }

    static func applyDelete(_ key: String, to snapshot: inout MetadataSnapshot, keys: MetadataKeys) {
        if key == keys.shardMap(.accounts) { snapshot.accounts = nil }
        if key == keys.shardMap(.directory) { snapshot.directory = nil }
        if let (id, leaf) = keys.parseNodeKey(key) {
            if leaf == "info" { snapshot.nodes[id] = nil }
            if leaf == "heartbeat" {
                snapshot.heartbeats[id] = nil
                snapshot.heartbeatReceived[id] = nil
            }
        }
    }

    /// Waits until `condition` holds for the snapshot (checked now and after every change).
    public func waitUntil(timeout: Duration, _ condition: @escaping @Sendable (MetadataSnapshot) -> Bool) async throws -> MetadataSnapshot {
        try await withThrowingTaskGroup(of: MetadataSnapshot.self) { group in
            group.addTask { try await self.waitUntil(condition) }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw MetadataError(.etcd, "the metadata cache did not reach the expected state within \(timeout)")
            }
            let result = try await group.next()!
            group.cancelAll()
            return result
        }
    }

    /// Waits, with no deadline, until `condition` holds for the snapshot (checked now and after
    /// every change): how a service reacts to metadata changes without polling etcd. Throws
    /// `CancellationError` when the calling task is cancelled or the cache stops running.
    public func waitUntil(_ condition: @escaping @Sendable (MetadataSnapshot) -> Bool) async throws -> MetadataSnapshot {
        let id = state.withLock { s in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let now: Result<MetadataSnapshot, any Error>? = self.state.withLock { s in
                    if s.cancelled.remove(id) != nil { return .failure(CancellationError()) }
                    if condition(s.snapshot) { return .success(s.snapshot) }
                    s.waiters[id] = (condition, continuation)
                    return nil
                }
                if let now { continuation.resume(with: now) }
            }
        } onCancel: {
            let c = self.state.withLock { s in
                guard let c = s.waiters.removeValue(forKey: id)?.continuation else {
                    s.cancelled.insert(id)
                    return nil as CheckedContinuation<MetadataSnapshot, any Error>?
                }
                return c
            }
            c?.resume(throwing: CancellationError())
        }
    }
}
