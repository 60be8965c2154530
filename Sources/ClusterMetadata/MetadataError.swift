import Etcd

/// An error of the metadata layer, with a stable code and a sentence for an operator.
public struct MetadataError: Error, Sendable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }
        /// A compare-and-swap lost: someone else changed the value first. Reload and retry.
        public static let conflict = Code("metadata_conflict")
        /// A stored value is not what this version of ShardBank can read.
        public static let corrupt = Code("metadata_corrupt")
        /// The value does not pass validation (e.g. an invalid range map).
        public static let invalid = Code("metadata_invalid")
        /// The cluster is not initialised (`ctl init` has not run).
        public static let notInitialized = Code("not_initialized")
        /// The cluster already is initialised.
        public static let alreadyInitialized = Code("already_initialized")
        /// etcd failed; see `underlying`.
        public static let etcd = Code("etcd_error")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    init(_ error: EtcdError, while doing: String) {
        self.init(.etcd, "\(doing): \(error)", underlying: error)
    }

    public var description: String { "\(code): \(message)" }
}
