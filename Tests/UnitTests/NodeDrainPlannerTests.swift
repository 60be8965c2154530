import Moves
import Sharding
import Testing

@Suite("Drain planner: which range leaves a draining node, and where to")
struct NodeDrainPlannerTests {
    let accounts = try! RangeMap(name: "accounts", keyKind: "balance_cents", ranges: [
        ShardRange(id: "a1", lowerBound: 0, upperBound: 100, node: "node1"),
        ShardRange(id: "a2", lowerBound: 100, upperBound: 200, node: "node2"),
        ShardRange(id: "a3", lowerBound: 200, upperBound: 300, node: "node3"),
        ShardRange(id: "a4", lowerBound: 300, upperBound: nil, node: "node1"),
    ])
    let directory = try! RangeMap(name: "directory", keyKind: "account_hash", ranges: [
        ShardRange(id: "d1", lowerBound: .min, upperBound: 0, node: "node1"),
        ShardRange(id: "d2", lowerBound: 0, upperBound: 10, node: "node2"),
        ShardRange(id: "d3", lowerBound: 10, upperBound: nil, node: "node2"),
    ])

    @Test("accounts ranges first, each to the receiver with the fewest rows (ties by id)")
    func accountsFirst() throws {
        let move = try NodeDrainPlanner().next(node: "node1", accounts: accounts, directory: directory,
                                               rows: ["a1": 10, "a2": 500, "a3": 20, "a4": 5], receivers: ["node1", "node2", "node3"])
        #expect(move == NodeDrainPlanner.Move(map: "accounts", range: "a1", to: "node3"))
        let tie = try NodeDrainPlanner().next(node: "node1", accounts: accounts, directory: directory, rows: [:], receivers: ["node3", "node2"])
        #expect(tie?.to == "node2")
    }

    @Test("then directory ranges, to the receiver with the fewest directory ranges; nothing left → nil")
    func directoryThenNothing() throws {
        let moved = try accounts.reassigning("a1", to: "node2").reassigning("a4", to: "node3")
        #expect(try NodeDrainPlanner().next(node: "node1", accounts: moved, directory: directory, rows: [:], receivers: ["node2", "node3"])
                == NodeDrainPlanner.Move(map: "directory", range: "d1", to: "node3"))
        let empty = try directory.reassigning("d1", to: "node3")
        #expect(try NodeDrainPlanner().next(node: "node1", accounts: moved, directory: empty, rows: [:], receivers: ["node2", "node3"]) == nil)
    }

    @Test("a range with no other active node to take it is refused, saying so")
    func noReceiver() {
        #expect { _ = try NodeDrainPlanner().next(node: "node1", accounts: accounts, directory: directory, rows: [:], receivers: ["node1"]) } throws: {
            "\($0)".contains("no other node is active")
        }
    }
}
