/// `DIR/cluster.json`: what a local cluster is made of. Field names are an interface that scripts read.
public struct ClusterDescription: Codable, Sendable {
    public struct EtcdMember: Codable, Sendable {
        public var name: String
        public var clientURL: String
        public var peerURL: String
        public var pid: Int32
        public var dataDir: String
        public var logFile: String

        enum CodingKeys: String, CodingKey {
            case name, clientURL = "client_url", peerURL = "peer_url", pid, dataDir = "data_dir", logFile = "log_file"
        }
    }

    public struct Etcd: Codable, Sendable {
        public var endpoints: [String]
        public var members: [EtcdMember]
        /// `name=peerURL,…`, needed to restart a member.
        public var initialCluster: String
        public var clusterToken: String
        /// Extra etcd flags every member starts with (tests: e.g. a short `--auth-token-ttl`).
        public var extraArguments: [String]?

        enum CodingKeys: String, CodingKey {
            case endpoints, members, initialCluster = "initial_cluster", clusterToken = "cluster_token", extraArguments = "extra_arguments"
        }
    }

    public struct Node: Codable, Sendable {
        public var id: String
        public var host: String
        public var port: Int
        public var database: String
        public var user: String
        public var password: String
        public var pid: Int32
        /// Running but not in the shard map (for adding nodes later).
        public var spare: Bool
        public var dataDir: String
        public var socket: String
        public var configFile: String
        public var logFile: String
        /// The `shardbank agent` beside this node, when `demo up` started one.
        public var agentPID: Int32?

        enum CodingKeys: String, CodingKey {
            case id, host, port, database, user, password, pid, spare
            case dataDir = "data_dir", socket, configFile = "config_file", logFile = "log_file", agentPID = "agent_pid"
        }
    }

    /// The `shardbank serve` process `demo up` started.
    public struct API: Codable, Sendable {
        public var url: String
        public var pid: Int32
        public init(url: String, pid: Int32) {
            self.url = url
            self.pid = pid
        }
    }

    /// The cluster's directory (absolute).
    public var dir: String
    public var etcd: Etcd
    public var nodes: [Node]
    public var api: API?

    public init(dir: String, etcd: Etcd, nodes: [Node]) {
        self.dir = dir
        self.etcd = etcd
        self.nodes = nodes
    }

    /// Every pid this cluster started, with a name.
    public var processes: [(name: String, pid: Int32)] {
        (api.map { [("api", $0.pid)] } ?? []) + nodes.compactMap { n in n.agentPID.map { ("agent-\(n.id)", $0) } }
            + nodes.map { ($0.id, $0.pid) } + etcd.members.map { ($0.name, $0.pid) }
    }
}
