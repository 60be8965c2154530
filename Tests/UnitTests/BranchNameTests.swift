import Ledger
import MariaDB
import Testing

@Suite("XA branch names")
struct BranchNameTests {
    @Test("round trip with the attempt; other applications' xids are ignored; names fit 64 bytes")
    func roundTrip() throws {
        let attempt = AttemptID.random()
        #expect(attempt.rawValue.utf8.count == 12)
        let xid = BranchName.xid(transferID: "idem-key-1", attempt: attempt, participant: "node2", commitPoint: "node1")
        let parsed = try #require(BranchName.parse(xid))
        #expect(parsed.transferID == "idem-key-1" && parsed.attempt == attempt && parsed.participant == "node2" && parsed.commitPoint == "node1")
        #expect(BranchName.parse(XID(gtrid: "idem-key-1", bqual: "\(attempt.rawValue)|node2|node1", formatID: 1)) == nil)
        #expect(BranchName.parse(XID(gtrid: "x", bqual: "node2", formatID: BranchName.formatID)) == nil)
        #expect(BranchName.parse(XID(gtrid: "x", bqual: "NOT-HEX-ATTEMPT|node2|node1", formatID: BranchName.formatID)) == nil)
        #expect(!BranchName.validate(transferID: String(repeating: "k", count: 65), nodes: ["node1"]))
        #expect(!BranchName.validate(transferID: "k", nodes: ["a|b"]))
        let longest = String(repeating: "n", count: BranchName.maxNodeIDLength)
        #expect(BranchName.validate(transferID: String(repeating: "k", count: 64), nodes: [longest, longest + "x"].dropLast()))
        #expect(!BranchName.validate(transferID: "k", nodes: [longest + "x"]))
        #expect(BranchName.xid(transferID: "k", attempt: attempt, participant: longest, commitPoint: longest).bqual.utf8.count <= 64)
    }

    @Test("branches named before attempts parse with the unnamed attempt (schema v2 rows match them)")
    func legacyNames() throws {
        let parsed = try #require(BranchName.parse(XID(gtrid: "old", bqual: "node2|node1", formatID: BranchName.formatID)))
        #expect(parsed.attempt.rawValue == "" && parsed.participant == "node2" && parsed.commitPoint == "node1")
    }

    @Test("every attempt gets its own id")
    func attemptsDiffer() {
        #expect(Set((0..<1000).map { _ in AttemptID.random() }).count == 1000)
    }
}
