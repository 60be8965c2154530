/// An error from the etcd client. Descriptions never contain passwords, tokens or values.
public struct EtcdError: Error, Sendable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// No endpoint answered within its timeouts; nothing was applied.
        public static let unavailable = Code("etcd_unavailable")
        /// A mutation was sent but its answer was lost: it may or may not have been applied.
        /// Never retried blindly; the caller must read and decide.
        public static let outcomeUnknown = Code("etcd_outcome_unknown")
        /// Wrong user name or password, or auth is required and no credentials were configured.
        public static let authenticationFailed = Code("etcd_authentication_failed")
        /// The watch's start revision was compacted away: reload, then watch from the reload's revision.
        public static let compacted = Code("etcd_compacted")
        /// etcd refused the request (gRPC status in `grpcCode`).
        public static let server = Code("etcd_server_error")
        /// The answer could not be decoded.
        public static let protocolError = Code("etcd_protocol_error")
        /// The client is shut down.
        public static let shutDown = Code("etcd_client_shut_down")
    }

    public var code: Code
    public var message: String
    /// The endpoint that answered or failed.
    public var endpoint: String?
    /// gRPC status code in etcd's answer (3 invalid argument, 5 not found, 9 failed precondition, 14 unavailable, 16 unauthenticated).
    public var grpcCode: Int?
    /// With `.compacted`: the compaction revision.
    public var compactRevision: Int64?
    public var underlying: (any Error)?

    public init(code: Code, message: String, endpoint: String? = nil, grpcCode: Int? = nil, compactRevision: Int64? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.grpcCode = grpcCode
        self.compactRevision = compactRevision
        self.underlying = underlying
    }

    public var description: String {
        var s = "EtcdError(\(code))"
        if let endpoint { s += " at \(endpoint)" }
        if let grpcCode { s += " [grpc \(grpcCode)]" }
        return s + ": " + message
    }
}
