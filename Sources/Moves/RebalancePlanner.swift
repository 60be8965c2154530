import Sharding

/// What `ctl rebalance` should do, computed from the accounts map and the rows per range the
/// heartbeats report — without I/O. Balance-keyed ranges are skewed by nature (most accounts hold
/// small balances), so the plan splits as well as moves.
///
/// In order: every range of a draining node moves to the least-loaded receiver; a range over
/// `maxRangeRows` is split at its median; then, while a node is outside ±`tolerance` % of the mean,
/// the range of the most-loaded node that brings both ends closest to the mean moves to the
/// least-loaded node — split first when every range there is too big. A split's halves are counted
/// as half the rows each (the median splits by rows); the runner re-plans from fresh heartbeats after
/// each step, so the estimate never drives more than one step.
public struct RebalancePlanner: Sendable {
    public struct Input: Sendable {
        public var map: RangeMap
        /// Rows per range id (missing: 0).
        public var rows: [String: Int]
        /// Nodes that may hold ranges (active ones).
        public var receivers: [String]
        /// Nodes whose ranges must all leave.
        public var draining: Set<String>
        /// Allowed distance from the mean, in percent.
        public var tolerance: Int
        public var maxRangeRows: Int
        /// Ranges whose rows all hold one balance: a split cannot divide them.
        public var unsplittable: Set<String>

        public init(map: RangeMap, rows: [String: Int], receivers: [String], draining: Set<String> = [], tolerance: Int = 10,
                    maxRangeRows: Int = 50_000, unsplittable: Set<String> = []) {
            self.map = map
            self.rows = rows
            self.receivers = receivers
            self.draining = draining
            self.tolerance = tolerance
            self.maxRangeRows = maxRangeRows
            self.unsplittable = unsplittable
        }
    }

    public enum Step: Sendable, Hashable, CustomStringConvertible {
        /// Split `range` at its median (by rows); `upper` names the upper half in later steps of this plan.
        case split(range: String, rows: Int, upper: String)
        case move(range: String, from: String, to: String, rows: Int)

        public var description: String {
            switch self {
            case .split(let range, let rows, _): return "split \(Self.name(range)) (\(rows) rows) at its median"
            case .move(let range, let from, let to, let rows): return "move \(Self.name(range)) (\(rows) rows) \(from) → \(to)"
            }
        }

        /// A range a split earlier in the plan makes has no id yet (`a1+`): it is named by its origin.
        static func name(_ range: String) -> String {
            guard range.hasSuffix("+") else { return range }
            return "the upper half of \(name(String(range.dropLast())))"
        }
    }

    public struct Plan: Sendable, Hashable {
        public var steps: [Step]
        /// What the plan cannot do, said plainly (a range that cannot be split, no receiver).
        public var notes: [String]
        /// Rows per node once the plan has run (estimated).
        public var projected: [String: Int]
    }

    public init() {}

    public func plan(_ input: Input) -> Plan {
        var steps: [Step] = []
        var notes: [String] = []
        let receivers = input.receivers.filter { !input.draining.contains($0) }
        // Ranges as the plan goes: id → (node, rows).
        var ranges: [(id: String, node: String, rows: Int)] = input.map.ranges.map { ($0.id, $0.node, input.rows[$0.id] ?? 0) }
        var noted: Set<String> = []
        func load(_ node: String) -> Int { ranges.filter { $0.node == node }.reduce(0) { $0 + $1.rows } }
        func lightest() -> String? { receivers.min { (load($0), $0) < (load($1), $1) } }
        func split(_ i: Int) -> Bool {
            let r = ranges[i]
            guard r.rows >= 2, !input.unsplittable.contains(r.id) else {
                if noted.insert(r.id).inserted {
                    notes.append("range \(r.id) holds \(r.rows) rows of a single balance (or too few to divide): it cannot be split, so the nodes may stay outside the tolerance")
                }
                return false
            }
            let upper = r.id + "+"
            steps.append(.split(range: r.id, rows: r.rows, upper: upper))
            ranges[i].rows = r.rows - r.rows / 2
            ranges.insert((upper, r.node, r.rows / 2), at: i + 1)
            return true
        }

        guard !receivers.isEmpty else {
            return Plan(steps: [], notes: ["no active node can take ranges: add a node first"], projected: [:])
        }
        // 1. Draining nodes empty out.
        for i in ranges.indices where input.draining.contains(ranges[i].node) {
            let to = lightest()!
            steps.append(.move(range: ranges[i].id, from: ranges[i].node, to: to, rows: ranges[i].rows))
            ranges[i].node = to
        }
        // 2. Oversized ranges split (repeatedly, as halves may still be over).
        var i = 0
        while i < ranges.count {
            if ranges[i].rows > input.maxRangeRows, split(i) { continue }
            i += 1
        }
        // 3. Moves (and the splits they need) until every receiver is within the tolerance.
        // In whole rows: a node is within the tolerance when |load − mean| ≤ mean × tolerance / 100,
        // compared as load × n × 100 against total × (100 ± tolerance).
        let total = receivers.reduce(0) { $0 + load($1) }
        let n = receivers.count
        func over(_ node: String) -> Bool { load(node) * n * 100 > total * (100 + input.tolerance) }
        func under(_ node: String) -> Bool { load(node) * n * 100 < total * (100 - input.tolerance) }
        for _ in 0..<(4 * max(ranges.count, 8)) {
            guard let heavy = receivers.max(by: { (load($0), $1) < (load($1), $0) }), let light = lightest(), heavy != light,
                  over(heavy) || under(light) else { break }
            // The move that leaves the two nodes closest to each other; only one that narrows the gap.
            let gap = load(heavy) - load(light)
            let candidates = ranges.indices.filter { ranges[$0].node == heavy && ranges[$0].rows > 0 && ranges[$0].rows < gap }
            if let best = candidates.min(by: { abs(gap - 2 * ranges[$0].rows) < abs(gap - 2 * ranges[$1].rows) }) {
                steps.append(.move(range: ranges[best].id, from: heavy, to: light, rows: ranges[best].rows))
                ranges[best].node = light
                continue
            }
            // Every range of the heavy node is too big to move whole: split its largest.
            guard let largest = ranges.indices.filter({ ranges[$0].node == heavy }).max(by: { ranges[$0].rows < ranges[$1].rows }),
                  split(largest) else { break }
        }
        var projected: [String: Int] = [:]
        for node in Set(receivers).union(input.draining) { projected[node] = load(node) }
        for node in receivers where over(node) || under(node) {
            notes.append("\(node) stays at \(load(node)) rows, outside \(input.tolerance) % of the mean \(total / n)")
        }
        return Plan(steps: steps, notes: notes, projected: projected)
    }
}
