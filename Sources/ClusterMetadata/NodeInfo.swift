/// `node/{id}/info`: where a storage node is and what state it is in. Never holds credentials.
public struct NodeInfo: Codable, Sendable, Hashable {
    public enum State: String, Codable, Sendable, CaseIterable {
        /// Added by `ctl add-node` and migrated; waits for its agent's first healthy beat, takes no
        /// ranges yet (pools are opened for it).
        case joining
        /// Serves its ranges.
        case active
        /// Ranges are being moved away; takes no new ranges.
        case draining
        /// Holds no range; kept for history.
        case removed
    }

    public var id: String
    public var host: String
    public var port: Int
    public var database: String
    /// `disabled`, `required`, `verify_ca` or `verify_identity`.
    public var tlsMode: String
    public var state: State

    enum CodingKeys: String, CodingKey {
        case id, host, port, database, tlsMode = "tls_mode", state
    }

    public init(id: String, host: String, port: Int, database: String, tlsMode: String = "disabled", state: State = .active) {
        self.id = id
        self.host = host
        self.port = port
        self.database = database
        self.tlsMode = tlsMode
        self.state = state
    }
}
