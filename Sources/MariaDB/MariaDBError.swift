/// An error from the MariaDB driver.
///
/// The description names the server (by label and address) and carries the server's error number,
/// SQLSTATE and message with every quoted literal replaced by `'…'`, so row values the server echoes
/// (duplicate keys, bad values) and user names never reach logs. SQL parameters and passwords are
/// never part of it.
public struct MariaDBError: Error, Sendable, CustomStringConvertible {
    /// Stable, extensible error codes.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The TCP connection or handshake failed (server down, refused, timed out).
        public static let connectionFailed = Code("connection_failed")
        /// The server refused the credentials.
        public static let authenticationFailed = Code("authentication_failed")
        /// The server answered a statement with an error.
        public static let server = Code("server_error")
        /// The connection broke during a call; whether a write took effect is unknown.
        public static let connectionLost = Code("connection_lost")
        /// A result value could not be decoded as the type asked for.
        public static let decoding = Code("decoding_error")
        /// A parameter value cannot be sent (e.g. a decimal with too many digits).
        public static let encoding = Code("encoding_error")
        /// No connection became free within the pool's acquire timeout.
        public static let poolTimeout = Code("pool_timeout")
        /// The pool is shut down.
        public static let poolClosed = Code("pool_closed")
        /// The connection was used by two callers at once, or after close.
        public static let misuse = Code("misuse")
    }

    public var code: Code
    /// Which server: `label (host:port)`.
    public var server: String
    /// The server's (or client library's) error number, e.g. 1213.
    public var errorNumber: UInt32?
    public var sqlState: String?
    /// The server's message with quoted literals redacted, or the driver's own sentence.
    public var message: String
    public var underlying: (any Error)?

    public init(code: Code, server: String, errorNumber: UInt32? = nil, sqlState: String? = nil, message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.server = server
        self.errorNumber = errorNumber
        self.sqlState = sqlState
        self.message = MariaDBError.redact(message)
        self.underlying = underlying
    }

    /// Error numbers that say "try the whole transaction again": deadlock, lock wait timeout, and the
    /// connection-level failures (server gone, lost, refused, too many connections, killed, shutdown).
    public static let retryableErrorNumbers: Set<UInt32> = [1205, 1213, 1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031]
    /// Error numbers after which the connection must not be reused.
    public static let brokenConnectionNumbers: Set<UInt32> = [1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031]

    /// Whether retrying the whole transaction may succeed.
    public var isRetryable: Bool {
        if code == .poolTimeout || code == .connectionFailed || code == .connectionLost { return true }
        guard let errorNumber else { return false }
        return Self.retryableErrorNumbers.contains(errorNumber)
    }

    /// Whether the connection that produced this error is unusable.
    public var isConnectionBroken: Bool {
        if code == .connectionLost || code == .connectionFailed { return true }
        guard let errorNumber else { return false }
        return Self.brokenConnectionNumbers.contains(errorNumber)
    }

    public var description: String {
        var parts = ["MariaDBError(\(code.rawValue)) on \(server)"]
        if let errorNumber { parts.append("errno \(errorNumber)") }
        if let sqlState { parts.append("SQLSTATE \(sqlState)") }
        return parts.joined(separator: ", ") + ": " + message
    }

    /// Replaces every single-quoted literal with `'…'`.
    static func redact(_ message: String) -> String {
        var out = ""
        var inQuote = false
        for ch in message {
            if ch == "'" {
                if inQuote { out += "…'" }
                else { out.append("'") }
                inQuote.toggle()
            } else if !inQuote {
                out.append(ch)
            }
        }
        if inQuote { out += "…" }
        return out
    }
}
