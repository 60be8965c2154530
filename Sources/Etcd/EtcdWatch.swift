import AsyncHTTPClient
import Foundation
import NIOCore
import Synchronization

extension EtcdClient {
    /// Watches a key or a prefix from `startRevision` (0 = from now on).
    ///
    /// The sequence survives broken streams and dead or hung members: it reconnects (to another
    /// member if need be) from the last revision it delivered + 1, so no event is lost or repeated.
    /// It ends by throwing `.compacted` when the revision it needs was compacted: reload the state
    /// and watch again from the reload's revision + 1.
    public func watch(_ selector: EtcdKeySelector, startRevision: Int64 = 0) -> EtcdWatchSequence {
        EtcdWatchSequence(client: self, selector: selector, startRevision: startRevision)
    }

    /// Streams one watch from one member until the stream breaks; updates `cursor.next` as events
    /// are delivered.
    fileprivate func streamWatch(
        endpoint: String, selector: EtcdKeySelector, cursor: WatchCursor,
        continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation
    ) async throws {
        let next = cursor.next
        let create = WireWatchCreate(create_request: .init(
            key: base64(selector.key), range_end: selector.rangeEnd.map(base64),
            start_revision: next > 0 ? WireInt64(next) : nil))
        var request = HTTPClientRequest(url: endpoint + "/v3/watch")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if configuration.username != nil {
            // Reuse (or obtain) a token through a cheap authenticated read.
            _ = try await range(.key(selector.key), limit: 1, consistency: .serializable)
            if let token = currentToken() { request.headers.add(name: "Authorization", value: token) }
        }
        request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(create)))
        // Only the response head is bounded: the body of a healthy idle watch may be silent for hours.
        let response = try await http.execute(request, deadline: .now() + .nanoseconds(configuration.requestTimeout.nanoseconds), logger: logger)
        guard response.status == .ok else {
            let body = try await response.body.collect(upTo: 1 << 20)
            throw serverError(Data(body.readableBytesView), endpoint: endpoint)
        }
        var pending: [UInt8] = []
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                guard !line.allSatisfy({ $0 == 32 || $0 == 13 }) else { continue }
                try handleWatchLine(line, endpoint: endpoint, cursor: cursor, continuation: continuation)
            }
        }
        // The server ended the stream (member shutting down): the caller reconnects.
        throw EtcdError(code: .unavailable, message: "watch stream from \(endpoint) ended", endpoint: endpoint)
    }

    private func handleWatchLine(
        _ line: [UInt8], endpoint: String, cursor: WatchCursor,
        continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation
    ) throws {
        let message: WireWatchMessage = try decode(Data(line), endpoint: endpoint)
        if let error = message.error {
            throw EtcdError(code: .server, message: error.message ?? error.error ?? "watch error", endpoint: endpoint, grpcCode: error.code ?? error.grpc_code)
        }
        guard let result = message.result else { return }
        let revision = result.header?.revision?.value ?? 0
        if result.canceled == true {
            if let compact = result.compact_revision?.value, compact > 0 {
                throw EtcdError(code: .compacted, message: "watch start revision \(cursor.next) was compacted (compaction at \(compact)); reload and watch again",
                                endpoint: endpoint, compactRevision: compact)
            }
            throw EtcdError(code: .server, message: "etcd cancelled the watch: \(result.cancel_reason ?? "no reason given")", endpoint: endpoint)
        }
        if result.created == true {
            // Watching "from now": pin the revision so that a reconnect resumes exactly here.
            if cursor.next == 0 { cursor.next = revision + 1 }
            return
        }
        let events = (result.events ?? []).compactMap { e -> EtcdEvent? in
            guard let kv = e.kv?.model else { return nil }
            return EtcdEvent(kind: e.type == "DELETE" ? .delete : .put, kv: kv)
        }
        // Never deliver a revision twice (a resumed stream starts at cursor.next).
        let fresh = events.filter { $0.kv.modRevision >= cursor.next }
        guard !fresh.isEmpty else { return }
        cursor.next = (fresh.map(\.kv.modRevision).max() ?? revision) + 1
        continuation.yield(EtcdWatchBatch(revision: revision, events: fresh))
    }

    func currentToken() -> String? { tokenSnapshot() }
}

/// The next revision a watch needs; shared between its stream and its supervisor.
final class WatchCursor: Sendable {
    private let value: Mutex<Int64>
    init(_ start: Int64) { value = Mutex(start) }
    var next: Int64 {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

/// An endless sequence of watch batches; see ``EtcdClient/watch(_:startRevision:)``.
public struct EtcdWatchSequence: AsyncSequence, Sendable {
    public typealias Element = EtcdWatchBatch
    let client: EtcdClient
    let selector: EtcdKeySelector
    let startRevision: Int64

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<EtcdWatchBatch, any Error>.AsyncIterator
        public mutating func next() async throws -> EtcdWatchBatch? { try await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        let (stream, continuation) = AsyncThrowingStream<EtcdWatchBatch, any Error>.makeStream(bufferingPolicy: .unbounded)
        let client = self.client
        let selector = self.selector
        let cursor = WatchCursor(startRevision)
        // The driver task lives exactly as long as this iterator: dropping or cancelling the
        // consumer terminates the stream, whose termination handler cancels the task.
        let driver = Task {
            await client.superviseWatch(selector: selector, cursor: cursor, continuation: continuation)
        }
        continuation.onTermination = { _ in driver.cancel() }
        return AsyncIterator(base: stream.makeAsyncIterator())
    }
}

extension EtcdClient {
    /// Keeps one watch stream going: reconnects after breaks, and abandons a member that stops
    /// answering its status check even while its TCP connection stays open.
    fileprivate func superviseWatch(selector: EtcdKeySelector, cursor: WatchCursor,
                                    continuation: AsyncThrowingStream<EtcdWatchBatch, any Error>.Continuation) async {
        var backoff: Duration = .milliseconds(50)
        while !Task.isCancelled {
            let index = currentEndpointIndex()
            let endpoint = configuration.endpoints[index]
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await self.streamWatch(endpoint: endpoint, selector: selector, cursor: cursor, continuation: continuation)
                    }
                    group.addTask {
                        while true {
                            try await Task.sleep(for: self.configuration.watchHealthInterval)
                            _ = try await self.status(endpoint: endpoint, timeout: self.configuration.watchHealthInterval)
                        }
                    }
                    try await group.next()
                    group.cancelAll()
                }
            } catch let error as EtcdError where error.code == .compacted || error.code == .authenticationFailed {
                continuation.finish(throwing: error)
                return
            } catch {
                if Task.isCancelled { break }
                logger.debug("watch stream broke; resuming", metadata: ["endpoint": "\(endpoint)", "next_revision": "\(cursor.next)", "error": "\(error)"])
                endpointFailed(index)
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(1))
                continue
            }
            backoff = .milliseconds(50)
        }
        continuation.finish()
    }
}
