import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A pool of connections to one server.
///
/// - at most `maxConnections` open at once; callers beyond that wait up to `acquireTimeout`, then get
///   `.poolTimeout` naming the server;
/// - an idle connection unused for longer than `validateAfter` is pinged before reuse; a dead one is
///   replaced;
/// - a connection that saw a connection-level error is closed on release, never reused.
public final class MariaDBPool: Sendable {
    public struct Options: Sendable {
        public var maxConnections: Int
        public var acquireTimeout: Duration
        public var validateAfter: Duration
        public init(maxConnections: Int = 16, acquireTimeout: Duration = .seconds(2), validateAfter: Duration = .seconds(2)) {
            self.maxConnections = maxConnections
            self.acquireTimeout = acquireTimeout
            self.validateAfter = validateAfter
        }
    }

    /// Counts at one instant.
    public struct Statistics: Sendable, Equatable {
        public var inUse: Int
        public var idle: Int
        public var opening: Int
        public var waiting: Int
        public init(inUse: Int, idle: Int, opening: Int, waiting: Int) {
            self.inUse = inUse
            self.idle = idle
            self.opening = opening
            self.waiting = waiting
        }
    }

    private enum Grant {
        case connection(MariaDBConnection)
        case openPermit
    }

    private struct State {
        var machine: PoolStateMachine<ObjectIdentifier>
        var connections: [ObjectIdentifier: MariaDBConnection] = [:]
        var waiters: [Int: (continuation: CheckedContinuation<Grant, any Error>, timeout: Scheduled<Void>?)] = [:]
        /// Grants (or failures) that arrived for a waiter before its continuation was registered.
        var early: [Int: Result<Grant, MariaDBError>] = [:]
        var nextWaiter = 0
    }

    public let configuration: MariaDBConfiguration
    public let options: Options
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let state: Mutex<State>

    public init(configuration: MariaDBConfiguration, options: Options = Options(),
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.options = options
        self.eventLoop = eventLoopGroup.next()
        self.logger = logger
        let validate = UInt64(options.validateAfter.components.seconds) * 1_000_000_000
            + UInt64(options.validateAfter.components.attoseconds / 1_000_000_000)
        self.state = Mutex(State(machine: PoolStateMachine(maxConnections: options.maxConnections, validateAfterNanoseconds: validate)))
    }

    public var statistics: Statistics {
        state.withLock { s in
            Statistics(inUse: s.machine.leased, idle: s.machine.idle.count, opening: s.machine.opening, waiting: s.machine.waiters.count)
        }
    }

    private static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// Leases a connection for the duration of `body`.
    public func withConnection<T: Sendable>(_ body: (MariaDBConnection) async throws -> T) async throws -> T {
        let connection = try await lease()
        do {
            let result = try await body(connection)
            release(connection)
            return result
        } catch {
            release(connection)
            throw error
        }
    }

    /// Leases a connection; pair with ``release(_:)``.
    public func lease() async throws(MariaDBError) -> MariaDBConnection {
        while true {
            let (action, waiter) = state.withLock { s -> (PoolStateMachine<ObjectIdentifier>.AcquireAction, Int) in
                let id = s.nextWaiter
                s.nextWaiter += 1
                return (s.machine.acquire(waiter: id, now: Self.now()), id)
            }
            switch action {
            case .failShutDown:
                throw MariaDBError(code: .poolClosed, server: configuration.endpointDescription, message: "the connection pool is shut down")
            case .open:
                return try await openLeased()
            case .lease(let id, let validate):
                let connection = state.withLock { $0.connections[id]! }
                if !validate { return connection }
                do {
                    try await connection.ping()
                    return connection
                } catch {
                    logger.debug("idle connection failed validation; replacing it", metadata: ["server": "\(configuration.endpointDescription)"])
                    release(connection) // broken now: closed, and a waiter may take the slot
                    continue
                }
            case .wait:
                let grant = try await wait(waiter)
                switch grant {
                case .connection(let c): return c
                case .openPermit: return try await openLeased()
                }
            }
        }
    }

    private func openLeased() async throws(MariaDBError) -> MariaDBConnection {
        do {
            let connection = try await MariaDBConnection.connect(configuration: configuration)
            state.withLock { s in
                s.machine.opened()
                s.connections[ObjectIdentifier(connection)] = connection
            }
            return connection
        } catch {
            let action = state.withLock { $0.machine.openFailed() }
            perform(action)
            throw error
        }
    }

    private func wait(_ waiter: Int) async throws(MariaDBError) -> Grant {
        let server = configuration.endpointDescription
        let timeout = options.acquireTimeout
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Grant, any Error>) in
                    let scheduled = eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)) { [self] in
                        self.abandon(waiter, error: MariaDBError(code: .poolTimeout, server: server,
                            message: "no connection to \(server) became free within \(timeout); the pool's \(options.maxConnections) connections are all in use"))
                    }
                    // A grant or a failure may have come between `acquire` and this registration.
                    let early: Result<Grant, MariaDBError>? = state.withLock { s in
                        if let early = s.early.removeValue(forKey: waiter) { return early }
                        s.waiters[waiter] = (continuation, scheduled)
                        return nil
                    }
                    if let early {
                        scheduled.cancel()
                        continuation.resume(with: early.mapError { $0 as any Error })
                    }
                }
            } onCancel: {
                self.abandon(waiter, error: MariaDBError(code: .poolTimeout, server: server, message: "waiting for a connection was cancelled"))
            }
        } catch let error as MariaDBError {
            throw error
        } catch {
            throw MariaDBError(code: .poolTimeout, server: server, message: "waiting for a connection failed", underlying: error)
        }
    }

    private func abandon(_ waiter: Int, error: MariaDBError) {
        let continuation = state.withLock { s -> CheckedContinuation<Grant, any Error>? in
            guard s.machine.abandon(waiter: waiter) else { return nil }
            guard let entry = s.waiters.removeValue(forKey: waiter) else {
                s.early[waiter] = .failure(error)
                return nil
            }
            return entry.continuation
        }
        continuation?.resume(throwing: error)
    }

    private func perform(_ action: PoolStateMachine<ObjectIdentifier>.SlotAction) {
        guard case .permitOpen(let w) = action else { return }
        resume(w, with: .openPermit)
    }

    private func resume(_ waiter: Int, with grant: Grant) {
        let entry = state.withLock { s in
            guard let entry = s.waiters.removeValue(forKey: waiter) else {
                s.early[waiter] = .success(grant)
                return nil as (continuation: CheckedContinuation<Grant, any Error>, timeout: Scheduled<Void>?)?
            }
            return entry
        }
        entry?.timeout?.cancel()
        entry?.continuation.resume(returning: grant)
    }

    /// Returns a leased connection.
    public func release(_ connection: MariaDBConnection) {
        let id = ObjectIdentifier(connection)
        let broken = connection.isBroken
        let action = state.withLock { s in
            let a = s.machine.release(id, broken: broken, now: Self.now())
            if case .close = a { s.connections[id] = nil }
            return a
        }
        switch action {
        case .keep:
            break
        case .handOver(let w):
            resume(w, with: .connection(connection))
        case .close(let permit):
            closeInBackground(connection)
            if let permit { resume(permit, with: .openPermit) }
        }
    }

    private func closeInBackground(_ connection: MariaDBConnection) {
        // Closing sends COM_QUIT, which may block on a dead socket: the connection's thread does it.
        connection.closeInBackground()
    }

    /// Closes every idle connection (after a connection error to the server: they are presumed dead,
    /// and the next caller opens a fresh one instead of finding out on a dead socket).
    public func dropIdle() {
        let toClose = state.withLock { s in s.machine.dropIdle().compactMap { s.connections.removeValue(forKey: $0) } }
        toClose.forEach(closeInBackground)
    }

    /// Closes idle connections, fails waiters; leased connections close when they are released.
    public func shutdown() async {
        let (ids, waiters) = state.withLock { s in s.machine.shutDown() }
        let toClose = state.withLock { s in ids.compactMap { s.connections.removeValue(forKey: $0) } }
        let closed = MariaDBError(code: .poolClosed, server: configuration.endpointDescription, message: "the connection pool is shut down")
        for w in waiters {
            let entry = state.withLock { s in
                guard let entry = s.waiters.removeValue(forKey: w) else {
                    s.early[w] = .failure(closed)
                    return nil as (continuation: CheckedContinuation<Grant, any Error>, timeout: Scheduled<Void>?)?
                }
                return entry
            }
            entry?.timeout?.cancel()
            entry?.continuation.resume(throwing: closed)
        }
        for c in toClose { await c.close() }
    }
}
