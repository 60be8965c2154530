/// One range of a ``RangeMap``: the half-open key interval `[lowerBound, upperBound)` held by `node`.
/// An `upperBound` of `nil` means the range is unbounded above (only the last range may be).
public struct ShardRange: Sendable, Hashable, Codable, CustomStringConvertible {
    /// Stable identifier, unique within its map (`"a1"`, `"d3"`); stored in rows as `balance_range`.
    public var id: String
    public var lowerBound: Int64
    public var upperBound: Int64?
    public var node: String

    public init(id: String, lowerBound: Int64, upperBound: Int64?, node: String) {
        self.id = id
        self.lowerBound = lowerBound
        self.upperBound = upperBound
        self.node = node
    }

    public func contains(_ key: Int64) -> Bool {
        key >= lowerBound && (upperBound.map { key < $0 } ?? true)
    }

    public var description: String {
        "\(id) [\(lowerBound), \(upperBound.map(String.init) ?? "∞")) → \(node)"
    }

    enum CodingKeys: String, CodingKey {
        case id, lowerBound = "lo", upperBound = "hi", node
    }
}

/// A versioned map of contiguous half-open ranges over an `Int64` key domain `[domainStart, ∞)`.
///
/// Invariants (checked by ``validate(knownNodes:)`` and kept by every mutation): at least one range;
/// ranges sorted by lower bound; the first starts at `domainStart`; each one ends where the next one
/// begins (no gap, no overlap); only the last is unbounded; ids are unique. Every mutation returns a
/// new map whose `version` is one higher.
///
/// JSON form (see `docs/SHARDING.md`):
/// `{"name":"accounts","version":1,"key":"balance_cents","ranges":[{"id":"a1","lo":0,"hi":1000001,"node":"node1"},…]}`
public struct RangeMap: Sendable, Hashable, Codable {
    /// The map's name, e.g. `accounts` or `directory`.
    public var name: String
    /// What the keys mean, e.g. `balance_cents` or `account_hash`.
    public var keyKind: String
    public var version: Int64
    public private(set) var ranges: [ShardRange]

    enum CodingKeys: String, CodingKey { case name, keyKind = "key", version, ranges }

    /// Creates a map and validates it.
    public init(name: String, keyKind: String, version: Int64 = 1, ranges: [ShardRange], knownNodes: Set<String>? = nil) throws(RangeMapError) {
        self.name = name
        self.keyKind = keyKind
        self.version = version
        self.ranges = ranges
        try validate(knownNodes: knownNodes)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.name = try c.decode(String.self, forKey: .name)
        self.keyKind = try c.decode(String.self, forKey: .keyKind)
        self.version = try c.decode(Int64.self, forKey: .version)
        self.ranges = try c.decode([ShardRange].self, forKey: .ranges)
        try validate(knownNodes: nil)
    }

    /// The lowest key of the domain.
    public var domainStart: Int64 { ranges[0].lowerBound }

    /// Every node that holds at least one range.
    public var nodes: Set<String> { Set(ranges.map(\.node)) }

    /// Checks every invariant; the error names the offending ranges.
    public func validate(knownNodes: Set<String>? = nil) throws(RangeMapError) {
        guard !ranges.isEmpty else { throw RangeMapError(.empty, "map \(name) has no ranges") }
        var seen: Set<String> = []
        for r in ranges {
            guard !r.id.isEmpty else { throw RangeMapError(.invalidID, "map \(name) has a range with an empty id", ranges: [r.id]) }
            guard seen.insert(r.id).inserted else {
                throw RangeMapError(.duplicateID, "range id \(r.id) appears more than once in map \(name)", ranges: [r.id])
            }
            if let hi = r.upperBound, hi <= r.lowerBound {
                throw RangeMapError(.emptyRange, "range \(r) is empty or inverted: its upper bound must be above its lower bound", ranges: [r.id])
            }
            if let knownNodes, !knownNodes.contains(r.node) {
                throw RangeMapError(.unknownNode, "range \(r.id) is assigned to unknown node \(r.node)", ranges: [r.id])
            }
        }
        for (a, b) in zip(ranges, ranges.dropFirst()) {
            guard let hi = a.upperBound else {
                throw RangeMapError(.unboundedNotLast, "range \(a.id) is unbounded above but range \(b.id) follows it", ranges: [a.id, b.id])
            }
            if b.lowerBound < a.lowerBound {
                throw RangeMapError(.unsorted, "ranges are not sorted: \(b.id) starts at \(b.lowerBound), before \(a.id) at \(a.lowerBound)", ranges: [a.id, b.id])
            }
            if hi < b.lowerBound {
                throw RangeMapError(.gap, "gap between range \(a.id) (ends at \(hi)) and range \(b.id) (starts at \(b.lowerBound)): keys [\(hi), \(b.lowerBound)) belong to no range", ranges: [a.id, b.id])
            }
            if hi > b.lowerBound {
                throw RangeMapError(.overlap, "range \(a.id) (ends at \(hi)) overlaps range \(b.id) (starts at \(b.lowerBound)): keys [\(b.lowerBound), \(hi)) belong to both", ranges: [a.id, b.id])
            }
        }
        if let last = ranges.last, last.upperBound != nil {
            throw RangeMapError(.bounded, "the last range \(last.id) must be unbounded above so that every key has a range", ranges: [last.id])
        }
    }

    /// The index of the range holding `key` (binary search, O(log n)), or nil below the domain.
    public func index(of key: Int64) -> Int? {
        guard key >= domainStart else { return nil }
        var low = 0
        var high = ranges.count - 1
        // Invariant: ranges[low].lowerBound <= key; find the last range starting at or below key.
        while low < high {
            let mid = (low + high + 1) / 2
            if ranges[mid].lowerBound <= key { low = mid } else { high = mid - 1 }
        }
        return low
    }

    /// The range holding `key`.
    public func range(for key: Int64) throws(RangeMapError) -> ShardRange {
        guard let i = index(of: key) else {
            throw RangeMapError(.outOfDomain, "key \(key) is below the start \(domainStart) of map \(name)")
        }
        return ranges[i]
    }

    /// The range with `id`.
    public func range(id: String) -> ShardRange? { ranges.first { $0.id == id } }

    /// Splits range `id` at `key`: the range keeps `[lo, key)` and a new range `newID` gets `[key, hi)` on the same node.
    public func splitting(_ id: String, at key: Int64, newID: String) throws(RangeMapError) -> RangeMap {
        guard let i = ranges.firstIndex(where: { $0.id == id }) else { throw RangeMapError(.unknownRange, "no range \(id) in map \(name)", ranges: [id]) }
        let r = ranges[i]
        guard key > r.lowerBound, r.upperBound.map({ key < $0 }) ?? true else {
            throw RangeMapError(.invalidSplit, "split key \(key) is not strictly inside range \(r)", ranges: [id])
        }
        var copy = self
        copy.ranges[i].upperBound = key
        copy.ranges.insert(ShardRange(id: newID, lowerBound: key, upperBound: r.upperBound, node: r.node), at: i + 1)
        copy.version += 1
        try copy.validate()
        return copy
    }

    /// Merges range `leftID` with its right neighbour `rightID`; both must be on the same node. The left id survives.
    public func merging(_ leftID: String, _ rightID: String) throws(RangeMapError) -> RangeMap {
        guard let i = ranges.firstIndex(where: { $0.id == leftID }) else { throw RangeMapError(.unknownRange, "no range \(leftID) in map \(name)", ranges: [leftID]) }
        guard i + 1 < ranges.count, ranges[i + 1].id == rightID else {
            throw RangeMapError(.notAdjacent, "range \(rightID) is not the right neighbour of \(leftID)", ranges: [leftID, rightID])
        }
        guard ranges[i].node == ranges[i + 1].node else {
            throw RangeMapError(.differentNodes, "ranges \(leftID) and \(rightID) are on different nodes (\(ranges[i].node), \(ranges[i + 1].node)); move one first", ranges: [leftID, rightID])
        }
        var copy = self
        copy.ranges[i].upperBound = ranges[i + 1].upperBound
        copy.ranges.remove(at: i + 1)
        copy.version += 1
        return copy
    }

    /// Assigns range `id` to `node`.
    public func reassigning(_ id: String, to node: String) throws(RangeMapError) -> RangeMap {
        guard let i = ranges.firstIndex(where: { $0.id == id }) else { throw RangeMapError(.unknownRange, "no range \(id) in map \(name)", ranges: [id]) }
        var copy = self
        copy.ranges[i].node = node
        copy.version += 1
        return copy
    }
}

/// A range map that breaks an invariant, or an operation that would; `message` names the ranges.
public struct RangeMapError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Stable machine-readable codes.
    public enum Code: String, Sendable, Hashable {
        case empty, invalidID = "invalid_id", duplicateID = "duplicate_id", emptyRange = "empty_range"
        case unknownNode = "unknown_node", unboundedNotLast = "unbounded_not_last", unsorted, gap, overlap
        case bounded, outOfDomain = "out_of_domain", unknownRange = "unknown_range", invalidSplit = "invalid_split"
        case notAdjacent = "not_adjacent", differentNodes = "different_nodes"
    }
    public var code: Code
    public var message: String
    /// The ids of the ranges involved.
    public var ranges: [String]

    init(_ code: Code, _ message: String, ranges: [String] = []) {
        self.code = code
        self.message = message
        self.ranges = ranges
    }

    public var description: String { "invalid range map (\(code.rawValue)): \(message)" }
}
