import Synchronization

/// One connection to a MariaDB server, with an async API.
///
/// Connector/C blocks; every call runs on the connection's own thread, never on Swift's cooperative
/// pool. A connection serves one caller at a time: a second concurrent call fails with `.misuse`
/// rather than corrupting the protocol. Use a ``MariaDBPool`` to share connections.
///
/// For the fewest thread switches, run a unit of work (a transaction) with the connection's
/// ``executor`` preferred: `try await withTaskExecutorPreference(connection.executor) { … }`.
public final class MariaDBConnection: Sendable {
    public let configuration: MariaDBConfiguration
    private let thread: ConnectionThread
    private let handle: ConnectionHandle
    private let state = Mutex(State())

    private struct State {
        var busy = false
        var broken = false
        var closed = false
    }

    private init(configuration: MariaDBConfiguration, thread: ConnectionThread, handle: ConnectionHandle) {
        self.configuration = configuration
        self.thread = thread
        self.handle = handle
    }

    deinit {
        let handle = self.handle
        thread.submit { handle.close() }
        thread.stop()
    }

    /// Opens a connection. Fails within the configured connect timeout when the server is unreachable.
    public static func connect(configuration: MariaDBConfiguration) async throws(MariaDBError) -> MariaDBConnection {
        let thread = ConnectionThread(name: "mariadb \(configuration.label)")
        let result: Result<ConnectionHandle, MariaDBError> = await withCheckedContinuation { continuation in
            thread.submit {
                do throws(MariaDBError) { continuation.resume(returning: .success(try ConnectionHandle.connect(configuration))) }
                catch { continuation.resume(returning: .failure(error)) }
            }
        }
        switch result {
        case .success(let handle):
            return MariaDBConnection(configuration: configuration, thread: thread, handle: handle)
        case .failure(let error):
            thread.stop()
            throw error
        }
    }

    /// The connection's thread as a task executor: work that prefers it runs driver calls inline.
    public var executor: any TaskExecutor { thread }

    /// Whether a connection-level error was seen; a broken connection must be discarded.
    public var isBroken: Bool { state.withLock { $0.broken || $0.closed } }

    /// Runs `body` with exclusive use of the handle on the thread pool: several statements, one hop.
    func run<T: Sendable>(_ body: @escaping @Sendable (ConnectionHandle) throws(MariaDBError) -> T) async throws(MariaDBError) -> T {
        let server = configuration.endpointDescription
        let usable: Bool = state.withLock { s in
            guard !s.busy, !s.closed else { return false }
            s.busy = true
            return true
        }
        guard usable else {
            throw MariaDBError(code: .misuse, server: server, message: "the connection is closed or already in use by another caller")
        }
        defer { state.withLock { $0.busy = false } }
        let result: Result<T, MariaDBError>
        if thread.isCurrent {
            // The caller prefers this connection's executor: run inline, no hop.
            do throws(MariaDBError) { result = .success(try body(handle)) } catch { result = .failure(error) }
        } else {
            let handle = self.handle
            result = await withCheckedContinuation { continuation in
                thread.submit {
                    do throws(MariaDBError) { continuation.resume(returning: .success(try body(handle))) }
                    catch { continuation.resume(returning: .failure(error)) }
                }
            }
        }
        switch result {
        case .success(let value):
            return value
        case .failure(let error):
            if error.isConnectionBroken { state.withLock { $0.broken = true } }
            throw error
        }
    }

    /// Runs `sql` with the text protocol (no parameters). For DDL, SET, XA verbs and one-off queries.
    @discardableResult
    public func query(_ sql: String) async throws(MariaDBError) -> MariaDBResult {
        try await run { h throws(MariaDBError) in try h.query(sql) }
    }

    /// Runs `sql` as a prepared statement (prepared once per connection) with positional `?` parameters.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [MariaDBValue] = []) async throws(MariaDBError) -> MariaDBResult {
        try await run { h throws(MariaDBError) in try h.execute(sql, parameters) }
    }

    /// A round trip that proves the connection works.
    public func ping() async throws(MariaDBError) {
        try await run { h throws(MariaDBError) in try h.ping() }
    }

    // MARK: transactions

    /// `START TRANSACTION`, optionally after setting the isolation level of that transaction.
    public func begin(isolation: IsolationLevel? = nil) async throws(MariaDBError) {
        try await run { h throws(MariaDBError) in
            if let isolation { _ = try h.query("SET TRANSACTION ISOLATION LEVEL \(isolation.rawValue)") }
            _ = try h.query("START TRANSACTION")
        }
    }

    public func commit() async throws(MariaDBError) { try await query("COMMIT") }
    public func rollback() async throws(MariaDBError) { try await query("ROLLBACK") }

    /// Runs `body` inside a transaction: committed when it returns, rolled back when it throws.
    public func transaction<T: Sendable>(
        isolation: IsolationLevel? = nil,
        _ body: (MariaDBConnection) async throws -> T
    ) async throws -> T {
        try await begin(isolation: isolation)
        let result: T
        do {
            result = try await body(self)
        } catch {
            if !isBroken { try? await rollback() }
            throw error
        }
        try await commit()
        return result
    }

    // MARK: XA

    public func xaStart(_ xid: XID) async throws(MariaDBError) { try await query("XA START \(xid.sqlLiteral)") }
    public func xaEnd(_ xid: XID) async throws(MariaDBError) { try await query("XA END \(xid.sqlLiteral)") }
    public func xaPrepare(_ xid: XID) async throws(MariaDBError) { try await query("XA PREPARE \(xid.sqlLiteral)") }
    /// `XA COMMIT`; `onePhase` commits an ended, unprepared branch directly.
    public func xaCommit(_ xid: XID, onePhase: Bool = false) async throws(MariaDBError) {
        try await query("XA COMMIT \(xid.sqlLiteral)\(onePhase ? " ONE PHASE" : "")")
    }
    public func xaRollback(_ xid: XID) async throws(MariaDBError) { try await query("XA ROLLBACK \(xid.sqlLiteral)") }

    /// The prepared XA transactions the server holds (`XA RECOVER`), from any client.
    public func xaRecover() async throws(MariaDBError) -> [XID] {
        let result = try await query("XA RECOVER")
        var xids: [XID] = []
        for row in result.rows {
            guard case .int(let format) = row["formatID"], case .int(let gl) = row["gtrid_length"],
                  case .int(let bl) = row["bqual_length"] else { continue }
            let data: [UInt8]
            switch row["data"] {
            case .bytes(let b): data = b
            case .string(let s): data = Array(s.utf8)
            default: continue
            }
            guard data.count >= Int(gl + bl) else { continue }
            let gtrid = String(decoding: data[0..<Int(gl)], as: UTF8.self)
            let bqual = String(decoding: data[Int(gl)..<Int(gl + bl)], as: UTF8.self)
            xids.append(XID(gtrid: gtrid, bqual: bqual, formatID: Int32(format)))
        }
        return xids
    }

    /// Closes without waiting: COM_QUIT is sent on the connection's thread.
    func closeInBackground() {
        let alreadyClosed = state.withLock { s -> Bool in
            defer { s.closed = true }
            return s.closed || s.busy
        }
        let handle = self.handle
        if !alreadyClosed { thread.submit { handle.close() } }
    }

    /// Closes the connection (sends COM_QUIT on the connection's thread).
    public func close() async {
        let alreadyClosed = state.withLock { s -> Bool in
            defer { s.closed = true }
            return s.closed || s.busy
        }
        guard !alreadyClosed else { return }
        let handle = self.handle
        if thread.isCurrent {
            handle.close()
            return
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            thread.submit {
                handle.close()
                continuation.resume()
            }
        }
    }
}
