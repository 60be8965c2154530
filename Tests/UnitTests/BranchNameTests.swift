import Ledger
import MariaDB
import Testing

@Suite("XA branch names")
struct BranchNameTests {
    @Test("round trip, and other applications' xids are ignored")
    func roundTrip() {
        let xid = BranchName.xid(transferID: "idem-key-1", participant: "node2", commitPoint: "node1")
        let parsed = BranchName.parse(xid)
        #expect(parsed?.transferID == "idem-key-1")
        #expect(parsed?.participant == "node2")
        #expect(parsed?.commitPoint == "node1")
        #expect(BranchName.parse(XID(gtrid: "idem-key-1", bqual: "node2|node1", formatID: 1)) == nil)
        #expect(BranchName.parse(XID(gtrid: "x", bqual: "node2", formatID: BranchName.formatID)) == nil)
        #expect(!BranchName.validate(transferID: String(repeating: "k", count: 65), nodes: ["node1"]))
        #expect(!BranchName.validate(transferID: "k", nodes: ["a|b"]))
        #expect(BranchName.validate(transferID: String(repeating: "k", count: 64), nodes: ["node1", "node2"]))
    }
}
