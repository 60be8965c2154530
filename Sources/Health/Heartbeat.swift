import Foundation

/// What an agent writes to `node/{id}/heartbeat` every beat (JSON, under the agent's lease).
///
/// The key's presence says the agent is alive (its lease holds); `database.ok` says whether the
/// node's MariaDB answered this beat's check. Routers judge age by when *they* received a beat,
/// not by `timeMillis`, so clock skew between machines does not matter.
public struct Heartbeat: Codable, Sendable, Hashable {
    public struct Database: Codable, Sendable, Hashable {
        /// Whether `SELECT 1` answered within the check timeout.
        public var ok: Bool
        /// How long the check took (µs); the timeout when it failed.
        public var latencyMicros: Int64
        /// Why the check failed (an error code and sentence, never SQL parameters or passwords).
        public var error: String?

        public init(ok: Bool, latencyMicros: Int64, error: String? = nil) {
            self.ok = ok
            self.latencyMicros = latencyMicros
            self.error = error
        }

        enum CodingKeys: String, CodingKey {
            case ok
            case latencyMicros = "latency_us"
            case error
        }
    }

    /// A range the node holds, with its row count at the last count.
    public struct RangeRows: Codable, Sendable, Hashable {
        public var map: String
        public var range: String
        public var rows: Int64
        public init(map: String, range: String, rows: Int64) {
            self.map = map
            self.range = range
            self.rows = rows
        }
    }

    public var node: String
    /// The agent's wall clock, milliseconds since 1970 (for people; routers use receipt time).
    public var timeMillis: Int64
    /// Increases by one every beat of one agent process.
    public var sequence: Int64
    public var database: Database
    /// Ranges held by the node (its `range_ownership`, active ones) and their rows.
    public var ranges: [RangeRows]
    /// The agent's version.
    public var version: String
    /// The agent's beat interval (ms), so that routers judge lateness by the agent's own cadence.
    public var intervalMillis: Int64

    public init(node: String, timeMillis: Int64, sequence: Int64, database: Database, ranges: [RangeRows], version: String, intervalMillis: Int64) {
        self.node = node
        self.timeMillis = timeMillis
        self.sequence = sequence
        self.database = database
        self.ranges = ranges
        self.version = version
        self.intervalMillis = intervalMillis
    }

    enum CodingKeys: String, CodingKey {
        case node
        case timeMillis = "time_ms"
        case sequence = "seq"
        case database
        case ranges
        case version
        case intervalMillis = "interval_ms"
    }

    /// The JSON stored in etcd.
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain integers, strings and booleans cannot fail.
        return Array(try! encoder.encode(self))
    }

    /// Decodes a stored value; nil when it is not a heartbeat (a foreign or older writer).
    public static func decode(_ bytes: [UInt8]) -> Heartbeat? {
        try? JSONDecoder().decode(Heartbeat.self, from: Data(bytes))
    }
}
