/// How to reach one MariaDB/MySQL server.
public struct MariaDBConfiguration: Sendable, Hashable {
    /// TLS requirements, in the vocabulary of MySQL's `--ssl-mode`.
    public enum TLSMode: String, Sendable, Hashable, CaseIterable, Codable {
        /// Plain TCP.
        case disabled
        /// TLS required; the certificate is not checked.
        case required
        /// TLS required and the server certificate must chain to `caFile`.
        case verifyCA = "verify_ca"
        /// As `verifyCA`, and the certificate must name the host.
        case verifyIdentity = "verify_identity"
    }

    /// A name for this server in errors and logs (e.g. the node id). Never a secret.
    public var label: String
    public var host: String
    public var port: Int
    /// A Unix socket path; when set it is used instead of TCP.
    public var unixSocket: String?
    public var user: String
    public var password: String
    public var database: String?
    /// Seconds to wait for the TCP connection and handshake.
    public var connectTimeout: Int
    /// Seconds a read from the server may take (Connector/C retries a read up to three times, so the
    /// effective bound is up to 3× this).
    public var readTimeout: Int
    public var writeTimeout: Int
    public var tlsMode: TLSMode
    public var tlsCAFile: String?
    /// The isolation level every session starts with, whatever the server's default
    /// (`transaction_isolation`): the ledger's fences are locking reads inside writes, which take
    /// no locks under READ COMMITTED. nil: the server's default.
    public var sessionIsolation: IsolationLevel? = .repeatableRead

    public init(
        label: String, host: String = "127.0.0.1", port: Int = 3306, unixSocket: String? = nil,
        user: String, password: String, database: String? = nil,
        connectTimeout: Int = 3, readTimeout: Int = 30, writeTimeout: Int = 30,
        tlsMode: TLSMode = .disabled, tlsCAFile: String? = nil
    ) {
        self.label = label
        self.host = host
        self.port = port
        self.unixSocket = unixSocket
        self.user = user
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
        self.tlsMode = tlsMode
        self.tlsCAFile = tlsCAFile
    }

    /// `label (host:port)`: what errors name. Contains no credentials.
    public var endpointDescription: String {
        if let unixSocket { return "\(label) (\(unixSocket))" }
        return "\(label) (\(host):\(port))"
    }
}

extension MariaDBConfiguration: CustomStringConvertible, CustomDebugStringConvertible {
    /// Everything but the password, so that a configuration in a log line or an error leaks nothing.
    public var description: String {
        "MariaDBConfiguration(\(endpointDescription), user: \(user), password: <redacted>, database: \(database ?? "none"), tls_mode: \(tlsMode.rawValue))"
    }

    public var debugDescription: String { description }
}
