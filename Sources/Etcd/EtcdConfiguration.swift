/// How to reach an etcd cluster.
public struct EtcdConfiguration: Sendable {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`. Tried in order; a failed one is
    /// skipped for `quarantine`.
    public var endpoints: [String]
    /// With etcd auth enabled: the user and password (never logged).
    public var username: String?
    public var password: String?
    /// Time to open a TCP connection to one member.
    public var connectTimeout: Duration
    /// Time for one unary call on one member, including the connect.
    public var requestTimeout: Duration
    /// How long a failed member is skipped before it is tried again.
    public var quarantine: Duration
    /// How often a watch checks that its member still answers (a SIGSTOPped member keeps its TCP
    /// connection open and silent).
    public var watchHealthInterval: Duration
    /// How long a call keeps trying while live members report no leader, or while reads time out
    /// (an election after the leader died takes one to a few election timeouts).
    public var leaderElectionWait: Duration
    /// For `https://` endpoints: a PEM file of the CA certificates the members' certificates must
    /// chain to (a private CA, as etcd clusters usually have). Nil: the system's trust store.
    public var tlsCAFile: String?

    public init(endpoints: [String], username: String? = nil, password: String? = nil,
                connectTimeout: Duration = .seconds(1), requestTimeout: Duration = .seconds(2),
                quarantine: Duration = .seconds(3), watchHealthInterval: Duration = .seconds(1),
                leaderElectionWait: Duration = .seconds(5), tlsCAFile: String? = nil) {
        self.endpoints = endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.username = username
        self.password = password
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.quarantine = quarantine
        self.watchHealthInterval = watchHealthInterval
        self.leaderElectionWait = leaderElectionWait
        self.tlsCAFile = tlsCAFile
    }
}

/// Which member to use next: the first healthy one in order, skipping members that failed recently.
/// Pure bookkeeping; ``EtcdClient`` feeds it events.
public struct EndpointSelector: Sendable {
    public let endpoints: [String]
    private var failedUntil: [UInt64]
    private var preferred = 0

    public init(endpoints: [String]) {
        precondition(!endpoints.isEmpty, "at least one etcd endpoint is required")
        self.endpoints = endpoints
        self.failedUntil = Array(repeating: 0, count: endpoints.count)
    }

    /// The member to try now: the preferred one unless quarantined, else the next healthy one, else
    /// the one whose quarantine ends first.
    public func current(now: UInt64) -> Int {
        for step in 0..<endpoints.count {
            let i = (preferred + step) % endpoints.count
            if failedUntil[i] <= now { return i }
        }
        return failedUntil.indices.min { failedUntil[$0] < failedUntil[$1] }!
    }

    /// The member failed: skip it until `now + quarantine`, and prefer the next one.
    public mutating func failed(_ index: Int, now: UInt64, quarantineNanoseconds: UInt64) {
        failedUntil[index] = now + quarantineNanoseconds
        if index == preferred { preferred = (index + 1) % endpoints.count }
    }

    /// The member answered: it stays preferred.
    public mutating func succeeded(_ index: Int) {
        failedUntil[index] = 0
        preferred = index
    }
}
