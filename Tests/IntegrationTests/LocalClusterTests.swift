import Foundation
import Glibc
import LocalCluster
import MariaDB
import Testing

/// A socket listening on a loopback port: while it is open, nobody else can bind the port.
private final class HeldPort {
    let port: Int
    private let fd: Int32

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard fd >= 0, ok else {
            close(fd)
            throw LocalClusterError("cannot hold a loopback port for the test")
        }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    deinit { close(fd) }
}

@Suite("Local cluster launcher", .serialized)
struct LocalClusterTests {
    @Test("a port taken between choosing it and binding it: mariadbd and etcd start again on other ports")
    func portClashRetried() async throws {
        let held = try HeldPort()
        // Calls: etcd1's client port, etcd1's peer port, node1's port, then the retries. The first and
        // the third get the held port, as if another process had bound them in between.
        var calls = 0
        let dir = FileManager.default.temporaryDirectory.path + "/shardbank-test-" + UUID().uuidString.prefix(8)
        let cluster = try await LocalCluster.start(dir: dir, nodes: 1, etcdMembers: 1, logger: testLogger, freePort: {
            calls += 1
            return calls == 1 || calls == 3 ? held.port : try Processes.freePort()
        })
        defer { cluster.destroy() }
        let node = try cluster.node("node1")
        #expect(node.port != held.port)
        #expect(cluster.description.etcd.endpoints != ["http://127.0.0.1:\(held.port)"])
        #expect(calls > 3, "no port was chosen again")
        let c = try await connect(cluster)
        #expect(try await c.query("SELECT 1 AS one").rows.first?.int64("one") == 1)
        await c.close()
        try await withEtcd(cluster) { etcd in
            try await etcd.put("/port-retry", "ok")
            #expect(try await etcd.get("/port-retry")?.stringValue == "ok")
        }
        // The retries are in the saved description too (what demo commands and `down` read).
        let saved = try LocalCluster.load(dir: dir, logger: testLogger)
        #expect(try saved.node("node1").port == node.port)
        #expect(saved.description.etcd.endpoints == cluster.description.etcd.endpoints)
    }
}
