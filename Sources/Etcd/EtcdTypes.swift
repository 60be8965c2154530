/// A key and its value as etcd stores it.
public struct EtcdKeyValue: Sendable, Hashable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0, lease: Int64 = 0) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }

    public var stringValue: String { String(decoding: value, as: UTF8.self) }
}

/// The answer to a range read.
public struct EtcdRangeResult: Sendable {
    public var kvs: [EtcdKeyValue]
    /// The store's revision when the read was served.
    public var revision: Int64
    public var count: Int64
    public var more: Bool
}

/// Read consistency: linearizable goes through the leader; serializable answers from the member's own state.
public enum EtcdConsistency: Sendable { case linearizable, serializable }

/// What a key range selects.
public enum EtcdKeySelector: Sendable, Hashable {
    case key(String)
    case prefix(String)

    var key: String {
        switch self { case .key(let k), .prefix(let k): k }
    }

    /// etcd's `range_end` for a prefix: the prefix with its last byte plus one.
    var rangeEnd: [UInt8]? {
        guard case .prefix(let p) = self else { return nil }
        var bytes = Array(p.utf8)
        while let last = bytes.last {
            if last < 0xFF {
                bytes[bytes.count - 1] = last + 1
                return bytes
            }
            bytes.removeLast()
        }
        return [0] // every key
    }
}

/// A condition of a transaction.
public struct EtcdCompare: Sendable, Hashable {
    public enum Target: Sendable, Hashable {
        case value([UInt8]), version(Int64), createRevision(Int64), modRevision(Int64), lease(Int64)
    }
    public enum Result: String, Sendable, Hashable {
        case equal = "EQUAL", greater = "GREATER", less = "LESS", notEqual = "NOT_EQUAL"
    }
    public var key: String
    public var target: Target
    public var result: Result

    public init(key: String, _ target: Target, _ result: Result = .equal) {
        self.key = key
        self.target = target
        self.result = result
    }

    /// The key does not exist.
    public static func absent(_ key: String) -> EtcdCompare { EtcdCompare(key: key, .createRevision(0)) }
    /// The key was last modified at `revision` (0 = absent).
    public static func modRevision(_ key: String, is revision: Int64) -> EtcdCompare { EtcdCompare(key: key, .modRevision(revision)) }
}

/// One operation of a transaction.
public enum EtcdOperation: Sendable, Hashable {
    case get(EtcdKeySelector)
    case put(key: String, value: [UInt8], lease: Int64?)
    case delete(EtcdKeySelector)

    public static func put(_ key: String, _ value: String, lease: Int64? = nil) -> EtcdOperation {
        .put(key: key, value: Array(value.utf8), lease: lease)
    }
}

/// The answer to one operation of a transaction.
public enum EtcdOperationResult: Sendable {
    case get(EtcdRangeResult)
    case put
    case delete(deleted: Int64)
}

/// The answer to a transaction.
public struct EtcdTxnResult: Sendable {
    /// Whether every compare held (the success branch ran).
    public var succeeded: Bool
    public var revision: Int64
    public var results: [EtcdOperationResult]
}

/// A lease.
public struct EtcdLease: Sendable, Hashable {
    public var id: Int64
    /// Seconds, as granted.
    public var ttl: Int64
}

/// One change seen by a watch.
public struct EtcdEvent: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case put, delete }
    public var kind: Kind
    public var kv: EtcdKeyValue
}

/// What one watch response carried: the events of one or more revisions, in order.
public struct EtcdWatchBatch: Sendable {
    /// The store revision at the time of the response.
    public var revision: Int64
    public var events: [EtcdEvent]
}

/// One member's status.
public struct EtcdMemberStatus: Sendable {
    public var endpoint: String
    public var version: String
    public var dbSize: Int64
    public var leader: UInt64
    public var memberID: UInt64
    public var revision: Int64
}
