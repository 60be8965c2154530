import Sharding

/// The phases of `ctl drain NODE`, in order. Each is kept in the drain's job record; a runner that
/// died is resumed from the recorded phase (every phase's work can be done again).
public enum DrainPhase: String, Sendable, Hashable, Codable, CaseIterable {
    /// The node is marked `draining` in the registry: it takes no new ranges.
    case draining
    /// Its ranges of both maps move to other nodes, one move job at a time (children of the drain).
    case movingRanges = "moving_ranges"
    /// No branch prepared anywhere names the node as commit point any more: the decision rows it
    /// still holds are asked for by nobody, and may move.
    case waiting
    /// The history of accounts that left the node by a crossing (their postings there, and the
    /// decisions they are home of) moves to each account's node, one two-phase transaction per
    /// account, which also takes the node out of the account's `previous_nodes`.
    case rehoming
    /// The node is empty: marked `removed` (pools close everywhere, its agent exits).
    case done
    /// Stopped by an operator (`ctl jobs cancel`): the node stays `draining`, the ranges moved so far stay moved.
    case cancelled

    public var finished: Bool { self == .done || self == .cancelled }

    /// The phase after this one.
    public var next: DrainPhase {
        switch self {
        case .draining: return .movingRanges
        case .movingRanges: return .waiting
        case .waiting: return .rehoming
        case .rehoming, .done: return .done
        case .cancelled: return .cancelled
        }
    }
}

/// Where a draining node's ranges go: pure, so that the choice is tested without a cluster.
public struct NodeDrainPlanner: Sendable {
    /// One range to move off the node.
    public struct Move: Sendable, Hashable, CustomStringConvertible {
        public var map: String
        public var range: String
        public var to: String
        public init(map: String, range: String, to: String) {
            self.map = map
            self.range = range
            self.to = to
        }
        public var description: String { "\(map) range \(range) to \(to)" }
    }

    public init() {}

    /// The next range of `node` to move, accounts first (the bulk of the data), then directory;
    /// each to the receiver that holds the least of that map (accounts: rows from `rows`, per range;
    /// directory: ranges), ties by node id. Nil when the node holds no range of either map. Throws
    /// when a range must move but there is no receiver.
    public func next(node: String, accounts: RangeMap, directory: RangeMap, rows: [String: Int], receivers: [String]) throws(DrainRefusal) -> Move? {
        let others = receivers.filter { $0 != node }.sorted()
        if let range = accounts.ranges.first(where: { $0.node == node }) {
            guard !others.isEmpty else { throw DrainRefusal("\(node) holds accounts range \(range.id) and no other node is active to take it") }
            var load: [String: Int] = [:]
            for r in accounts.ranges { load[r.node, default: 0] += rows[r.id] ?? 0 }
            let to = others.min { (load[$0] ?? 0, $0) < (load[$1] ?? 0, $1) }!
            return Move(map: "accounts", range: range.id, to: to)
        }
        if let range = directory.ranges.first(where: { $0.node == node }) {
            guard !others.isEmpty else { throw DrainRefusal("\(node) holds directory range \(range.id) and no other node is active to take it") }
            var load: [String: Int] = [:]
            for r in directory.ranges { load[r.node, default: 0] += 1 }
            let to = others.min { (load[$0] ?? 0, $0) < (load[$1] ?? 0, $1) }!
            return Move(map: "directory", range: range.id, to: to)
        }
        return nil
    }
}

/// Why a drain cannot go on, in a sentence that says what to do.
public struct DrainRefusal: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
