import CMariaDB

/// `mysql_library_init` must run once, before any thread uses the library.
private let libraryInitResult: Int32 = shardbank_mysql_library_init()

/// The blocking half of a connection: a Connector/C handle and its prepared statements.
///
/// Every method blocks on network I/O and must run on the driver's thread pool. One handle is used by
/// one thread at a time: ``MariaDBConnection`` serialises access, which is what makes the handle's
/// `@unchecked Sendable` sound (Connector/C is thread-safe per connection, not within one).
final class ConnectionHandle: @unchecked Sendable {
    let mysql: UnsafeMutablePointer<MYSQL>
    let server: String
    private var statements: [String: PreparedStatement] = [:]
    private var closed = false

    private init(mysql: UnsafeMutablePointer<MYSQL>, server: String) {
        self.mysql = mysql
        self.server = server
    }

    deinit { close() }

    /// Opens a connection; blocks for up to the connect timeout.
    static func connect(_ config: MariaDBConfiguration) throws(MariaDBError) -> ConnectionHandle {
        let server = config.endpointDescription
        guard libraryInitResult == 0, let mysql = mysql_init(nil) else {
            throw MariaDBError(code: .connectionFailed, server: server, message: "Connector/C could not be initialised")
        }
        var connectTimeout = UInt32(max(1, config.connectTimeout))
        var readTimeout = UInt32(max(1, config.readTimeout))
        var writeTimeout = UInt32(max(1, config.writeTimeout))
        mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &connectTimeout)
        mysql_options(mysql, MYSQL_OPT_READ_TIMEOUT, &readTimeout)
        mysql_options(mysql, MYSQL_OPT_WRITE_TIMEOUT, &writeTimeout)
        mysql_options(mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4")
        if let isolation = config.sessionIsolation {
            mysql_options(mysql, MYSQL_INIT_COMMAND, "SET SESSION TRANSACTION ISOLATION LEVEL \(isolation.rawValue)")
        }
        var off: my_bool = 0
        var on: my_bool = 1
        mysql_options(mysql, MYSQL_OPT_RECONNECT, &off)
        switch config.tlsMode {
        case .disabled:
            break
        case .required, .verifyCA, .verifyIdentity:
            mysql_options(mysql, MYSQL_OPT_SSL_ENFORCE, &on)
            if let ca = config.tlsCAFile { mysql_options(mysql, MYSQL_OPT_SSL_CA, ca) }
            var verify: my_bool = config.tlsMode == .verifyIdentity ? 1 : 0
            mysql_options(mysql, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify)
        }
        let ok = mysql_real_connect(
            mysql, config.unixSocket == nil ? config.host : "localhost", config.user, config.password,
            config.database, UInt32(config.port), config.unixSocket, 0
        )
        if ok == nil {
            let errno = mysql_errno(mysql)
            let sqlState = String(cString: mysql_sqlstate(mysql))
            let text = String(cString: mysql_error(mysql))
            mysql_close(mysql)
            switch errno {
            case 1045, 1044, 1698:
                throw MariaDBError(code: .authenticationFailed, server: server, errorNumber: errno, sqlState: sqlState,
                                   message: "the server refused the credentials of user \(config.user); check the user name and password configured for \(config.label) (\(text))")
            case 1049:
                throw MariaDBError(code: .connectionFailed, server: server, errorNumber: errno, sqlState: sqlState,
                                   message: "database does not exist on \(config.label): create it or fix the configured database name")
            default:
                throw MariaDBError(code: .connectionFailed, server: server, errorNumber: errno, sqlState: sqlState,
                                   message: "cannot connect to \(server): \(text)")
            }
        }
        return ConnectionHandle(mysql: mysql, server: server)
    }

    func close() {
        guard !closed else { return }
        closed = true
        statements.removeAll() // closes each statement
        mysql_close(mysql)
    }

    // MARK: errors

    private func connectionError() -> MariaDBError {
        makeError(errno: mysql_errno(mysql), sqlState: mysql_sqlstate(mysql), text: mysql_error(mysql))
    }

    private func statementError(_ stmt: UnsafeMutablePointer<MYSQL_STMT>) -> MariaDBError {
        makeError(errno: mysql_stmt_errno(stmt), sqlState: mysql_stmt_sqlstate(stmt), text: mysql_stmt_error(stmt))
    }

    private func makeError(errno: UInt32, sqlState: UnsafePointer<CChar>?, text: UnsafePointer<CChar>?) -> MariaDBError {
        let state = sqlState.map { String(cString: $0) }
        let message = text.map { String(cString: $0) } ?? "unknown error"
        let code: MariaDBError.Code = MariaDBError.brokenConnectionNumbers.contains(errno) && errno >= 2000 ? .connectionLost : .server
        return MariaDBError(code: code, server: server, errorNumber: errno, sqlState: state, message: message)
    }

    // MARK: text protocol

    /// Runs `sql` with the text protocol.
    func query(_ sql: String) throws(MariaDBError) -> MariaDBResult {
        let rc = sql.withCString { mysql_real_query(mysql, $0, UInt(sql.utf8.count)) }
        guard rc == 0 else { throw connectionError() }
        guard let res = mysql_store_result(mysql) else {
            if mysql_field_count(mysql) != 0 { throw connectionError() }
            return MariaDBResult(affectedRows: mysql_affected_rows(mysql), lastInsertID: mysql_insert_id(mysql))
        }
        defer { mysql_free_result(res) }
        let count = Int(mysql_num_fields(res))
        let fields = mysql_fetch_fields(res)!
        var names: [String] = []
        var kinds: [ColumnKind] = []
        for i in 0..<count {
            names.append(String(cString: fields[i].name))
            kinds.append(ColumnKind(fields[i]))
        }
        var rows: [MariaDBRow] = []
        while let row = mysql_fetch_row(res) {
            let lengths = mysql_fetch_lengths(res)!
            var values: [MariaDBValue] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                guard let cell = row[i] else { values.append(.null); continue }
                let bytes = UnsafeRawBufferPointer(start: cell, count: Int(lengths[i]))
                values.append(try decodeText(bytes, kind: kinds[i], column: names[i]))
            }
            rows.append(MariaDBRow(columns: names, values: values))
        }
        return MariaDBResult(columns: names, rows: rows, affectedRows: 0, lastInsertID: 0)
    }

    func ping() throws(MariaDBError) {
        guard mysql_ping(mysql) == 0 else { throw connectionError() }
    }

    // MARK: prepared statements

    private func statement(for sql: String) throws(MariaDBError) -> PreparedStatement {
        if let statement = statements[sql] { return statement }
        guard let stmt = mysql_stmt_init(mysql) else { throw connectionError() }
        let rc = sql.withCString { mysql_stmt_prepare(stmt, $0, UInt(sql.utf8.count)) }
        guard rc == 0 else {
            let error = statementError(stmt)
            mysql_stmt_close(stmt)
            throw error
        }
        let statement = PreparedStatement(stmt: stmt)
        statements[sql] = statement
        return statement
    }

    /// Prepares (once per connection) and executes `sql` with `parameters` bound by position.
    func execute(_ sql: String, _ parameters: [MariaDBValue]) throws(MariaDBError) -> MariaDBResult {
        let statement = try statement(for: sql)
        let stmt = statement.stmt
        guard statement.parameterCount == parameters.count else {
            throw MariaDBError(code: .encoding, server: server, message: "the statement takes \(statement.parameterCount) parameters but \(parameters.count) were given")
        }
        var storage = BindStorage()
        defer { storage.release() }
        if statement.parameterCount > 0 {
            for (i, value) in parameters.enumerated() {
                statement.parameters[i] = MYSQL_BIND()
                do { try storage.bindParameter(&statement.parameters[i], value) } catch {
                    throw MariaDBError(code: .encoding, server: server, message: "parameter \(i + 1): \(error.message)")
                }
            }
            // mysql_stmt_bind_param copies the binds; the buffers they point to live in `storage`.
            let rc = statement.parameters.withUnsafeMutableBufferPointer { mysql_stmt_bind_param(stmt, $0.baseAddress) }
            guard rc == 0 else { throw statementError(stmt) }
        }
        guard mysql_stmt_execute(stmt) == 0 else { throw statementError(stmt) }
        guard mysql_stmt_field_count(stmt) > 0 else {
            return MariaDBResult(affectedRows: mysql_stmt_affected_rows(stmt), lastInsertID: mysql_stmt_insert_id(stmt))
        }
        guard mysql_stmt_store_result(stmt) == 0 else { throw statementError(stmt) }
        defer { mysql_stmt_free_result(stmt) }
        guard statement.bindResults() else { throw statementError(stmt) }
        let columns = statement.columns
        let count = columns.count
        var rows: [MariaDBRow] = []
        rows.reserveCapacity(Int(mysql_stmt_num_rows(stmt)))
        while true {
            let status = mysql_stmt_fetch(stmt)
            if status == MYSQL_NO_DATA { break }
            if status == 1 { throw statementError(stmt) }
            if status == MYSQL_DATA_TRUNCATED {
                throw MariaDBError(code: .decoding, server: server, message: "a column value was truncated while fetching")
            }
            var values: [MariaDBValue] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                do { values.append(try statement.value(i)) } catch {
                    throw MariaDBError(code: .decoding, server: server, message: "column \(columns[i]): \(error.message)")
                }
            }
            rows.append(MariaDBRow(columns: columns, values: values))
        }
        return MariaDBResult(columns: columns, rows: rows, affectedRows: mysql_stmt_affected_rows(stmt), lastInsertID: 0)
    }

    private func decodeText(_ bytes: UnsafeRawBufferPointer, kind: ColumnKind, column: String) throws(MariaDBError) -> MariaDBValue {
        do { return try kind.decodeText(bytes) } catch {
            throw MariaDBError(code: .decoding, server: server, message: "column \(column): \(error.message)")
        }
    }
}
