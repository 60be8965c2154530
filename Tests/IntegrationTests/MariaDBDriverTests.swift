import Foundation
import LocalCluster
import MariaDB
import Testing

@Suite("MariaDB driver against a real mariadbd", .serialized)
struct MariaDBDriverTests {
    @Test("round trip of every supported type through prepared statements and the text protocol")
    func roundTripEveryType() async throws {
        try await withCluster { cluster in
            let c = try await connect(cluster)
            try await c.query("""
                CREATE TABLE types (id BIGINT PRIMARY KEY, i BIGINT, u BIGINT UNSIGNED, s VARCHAR(255), b BOOLEAN,
                  n VARCHAR(10) NULL, d DATE, dt DATETIME(6), m DECIMAL(19,2), bin VARBINARY(16), f DOUBLE) ENGINE=InnoDB
                """)
            let dt = SQLDateTime(date: SQLDate(year: 2026, month: 11, day: 25), hour: 23, minute: 59, second: 58, microsecond: 123_456)
            let name = "O'Brien \"; DROP TABLE types; -- 名前 ✓"
            try await c.execute("INSERT INTO types VALUES (?,?,?,?,?,?,?,?,?,?,?)", [
                .int(1), .int(Int64.min), .uint(UInt64.max), .string(name), .bool(true), .null,
                .date(SQLDate(year: 1999, month: 12, day: 31)), .dateTime(dt), .money(minorUnits: -12_345), .bytes([0, 1, 255]), .double(0.5),
            ])
            for result in [try await c.execute("SELECT * FROM types WHERE id = ?", [.int(1)]), try await c.query("SELECT * FROM types WHERE id = 1")] {
                let row = try #require(result.rows.first)
                #expect(try row.int64("i") == Int64.min)
                #expect(row["u"] == .uint(UInt64.max))
                #expect(try row.string("s") == name)
                #expect(try row.bool("b") == true)
                #expect(row["n"] == .null)
                #expect(try row.optionalString("n") == nil)
                #expect(try row.date("d") == SQLDate(year: 1999, month: 12, day: 31))
                #expect(try row.dateTime("dt") == dt)
                #expect(try row.minorUnits("m") == -12_345)
                #expect(row["bin"] == .bytes([0, 1, 255]))
                #expect(row["f"] == .double(0.5))
            }
            await c.close()
        }
    }

    @Test("DECIMAL(19,2) is exact at 0.01 and at 99,999,999,999,999,999.99")
    func decimalExactness() async throws {
        try await withCluster { cluster in
            let c = try await connect(cluster)
            try await c.query("CREATE TABLE money (id INT PRIMARY KEY, amount DECIMAL(19,2) NOT NULL)")
            let largest = try #require(SQLDecimal("99999999999999999.99"))
            try await c.execute("INSERT INTO money VALUES (1, ?), (2, ?), (3, ?)", [.money(minorUnits: 1), .decimal(largest), .decimal(SQLDecimal("-99999999999999999.99")!)])
            let rows = try await c.execute("SELECT id, amount, amount + 0.01 AS plus FROM money ORDER BY id").rows
            #expect(try rows[0].minorUnits("amount") == 1)
            #expect(try rows[0].decimal("amount").description == "0.01")
            #expect(try rows[0].minorUnits("plus") == 2)
            #expect(try rows[1].decimal("amount") == largest)
            #expect(try rows[1].decimal("amount").description == "99999999999999999.99")
            #expect(try rows[2].decimal("amount").description == "-99999999999999999.99")
            // Beyond Int64 minor units: the conversion fails loudly instead of wrapping.
            #expect(throws: MariaDBValueError.self) { try rows[1].minorUnits("amount") }
            // Sum of many cents is exact (no binary floating point anywhere).
            try await c.query("CREATE TABLE cents (v DECIMAL(19,2))")
            for _ in 0..<10 { try await c.execute("INSERT INTO cents VALUES (?)", [.money(minorUnits: 10)]) }
            let sum = try await c.query("SELECT SUM(v) AS s FROM cents").rows[0]
            #expect(try sum.minorUnits("s") == 100)
            // Arithmetic with a bound decimal parameter, in SQL.
            try await c.query("CREATE TABLE acct (id INT PRIMARY KEY, balance DECIMAL(19,2) NOT NULL)")
            try await c.execute("INSERT INTO acct VALUES (1, 5000.00)")
            for _ in 0..<3 { try await c.execute("UPDATE acct SET balance = balance - ? WHERE id = ?", [.money(minorUnits: 150), .int(1)]) }
            let after = try await c.query("SELECT balance FROM acct").rows[0].minorUnits("balance")
            #expect(after == 499_550, "balance after three debits of 1.50: \(after)")
            await c.close()
        }
    }

    @Test("transactions: commit keeps, rollback discards")
    func transactions() async throws {
        try await withCluster { cluster in
            let c = try await connect(cluster)
            try await c.query("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
            _ = try await c.transaction(isolation: .readCommitted) { c in try await c.execute("INSERT INTO t VALUES (1)") }
            struct Boom: Error {}
            await #expect(throws: Boom.self) {
                try await c.transaction { c in
                    try await c.execute("INSERT INTO t VALUES (2)")
                    throw Boom()
                }
            }
            #expect(try await c.query("SELECT id FROM t").rows.map { try $0.int64("id") } == [1])
            // The same on the connection's own executor: calls run inline on its thread.
            let ids = try await withTaskExecutorPreference(c.executor) {
                _ = try await c.transaction { c in try await c.execute("INSERT INTO t VALUES (3)") }
                return try await c.query("SELECT id FROM t ORDER BY id").rows.map { try $0.int64("id") }
            }
            #expect(ids == [1, 3])
            await c.close()
        }
    }

    @Test("a prepared XA transaction is still listed by XA RECOVER after kill -9 and restart of its mariadbd")
    func xaSurvivesKill() async throws {
        try await withCluster { cluster in
            let c = try await connect(cluster)
            try await c.query("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
            let xid = XID(gtrid: "transfer-42", bqual: "node1")
            try await c.xaStart(xid)
            try await c.execute("INSERT INTO t VALUES (?, ?)", [.int(1), .int(10)])
            try await c.xaEnd(xid)
            try await c.xaPrepare(xid)
            try cluster.kill("node1")
            // The old connection is dead: its next call reports a broken connection.
            await #expect(throws: MariaDBError.self) { try await c.query("SELECT 1") }
            #expect(c.isBroken)
            try await cluster.restart("node1")
            let d = try await connect(cluster)
            #expect(try await d.xaRecover().contains(xid))
            try await d.xaCommit(xid)
            #expect(try await d.xaRecover().isEmpty)
            #expect(try await d.query("SELECT v FROM t WHERE id = 1").rows.first?.int64("v") == 10)
            await d.close()
        }
    }

    @Test("errors: wrong password names the node and never the password; server errors carry errno and SQLSTATE")
    func errors() async throws {
        try await withCluster { cluster in
            var config = try cluster.bankConfiguration("node1")
            let wrong = "not-the-password-\(UUID().uuidString)"
            config.password = wrong
            do {
                _ = try await MariaDBConnection.connect(configuration: config)
                Issue.record("connect with a wrong password succeeded")
            } catch let error as MariaDBError {
                #expect(error.code == .authenticationFailed)
                #expect(error.description.contains("node1"))
                #expect(!error.description.contains(wrong))
                #expect(!error.isRetryable)
            }
            let c = try await connect(cluster)
            try await c.query("CREATE TABLE t (id INT PRIMARY KEY, secret VARCHAR(50))")
            try await c.execute("INSERT INTO t VALUES (1, ?)", [.string("s3cr3t-value")])
            do {
                try await c.execute("INSERT INTO t VALUES (1, ?)", [.string("s3cr3t-value")])
                Issue.record("duplicate key accepted")
            } catch let error as MariaDBError {
                #expect(error.errorNumber == 1062)
                #expect(error.sqlState == "23000")
                #expect(!error.description.contains("s3cr3t"))
                #expect(!error.isConnectionBroken)
            }
            // Unreachable server: a clear error within the connect timeout.
            let closedPort = try Processes.freePort()
            let start = ContinuousClock.now
            await #expect(throws: MariaDBError.self) {
                _ = try await MariaDBConnection.connect(configuration: MariaDBConfiguration(label: "nowhere", port: closedPort, user: "x", password: "y", connectTimeout: 1))
            }
            #expect(ContinuousClock.now - start < .seconds(3))
            await c.close()
        }
    }

    @Test("pool: bounded size, acquire timeout, broken connections replaced by new ones")
    func pool() async throws {
        try await withCluster { cluster in
            let pool = MariaDBPool(configuration: try cluster.bankConfiguration("node1"),
                                   options: .init(maxConnections: 2, acquireTimeout: .milliseconds(300), validateAfter: .milliseconds(1)), logger: testLogger)
            let a = try await pool.lease()
            let b = try await pool.lease()
            #expect(pool.statistics == .init(inUse: 2, idle: 0, opening: 0, waiting: 0))
            do {
                _ = try await pool.lease()
                Issue.record("a third lease succeeded on a pool of two")
            } catch let error as MariaDBError {
                #expect(error.code == .poolTimeout)
                #expect(error.description.contains("node1"))
            }
            pool.release(a)
            pool.release(b)
            #expect(pool.statistics.idle == 2)
            // 16 concurrent users share two connections.
            try await withThrowingTaskGroup(of: Int64.self) { group in
                for i in 0..<16 {
                    group.addTask { try await pool.withConnection { try await $0.execute("SELECT ? AS v", [.int(Int64(i))]).rows[0].int64("v") } }
                }
                var sum: Int64 = 0
                for try await v in group { sum += v }
                #expect(sum == 120)
            }
            // Kill the connections server-side: validation notices and the pool replaces them with
            // new ones (a new server connection id), never hands out a dead one.
            let admin = try await connect(cluster)
            let adminID = try await admin.query("SELECT CONNECTION_ID() AS id").rows[0].int64("id")
            let pooled = try await admin.query("SELECT id FROM information_schema.processlist WHERE user = 'bank' AND id <> \(adminID)").rows.map { try $0.int64("id") }
            #expect(pooled.count == 2, "the pool's two idle connections: \(pooled)")
            for id in pooled { try await admin.query("KILL \(id)") }
            try await eventually("the killed connections are gone from the server", within: .seconds(10)) {
                try await admin.query("SELECT COUNT(*) AS n FROM information_schema.processlist WHERE user = 'bank' AND id <> \(adminID)").rows[0].int64("n") == 0
            }
            let (v, id) = try await pool.withConnection { c in
                let row = try await c.query("SELECT 7 AS v, CONNECTION_ID() AS id").rows[0]
                return (try row.int64("v"), try row.int64("id"))
            }
            #expect(v == 7)
            #expect(!pooled.contains(id), "connection \(id) is one of the killed \(pooled): not replaced")
            await admin.close()
            await pool.shutdown()
        }
    }
}

@Suite("MariaDB driver over TLS against a real mariadbd", .serialized)
struct MariaDBTLSTests {
    @Test("TLS modes: required and verify_ca/verify_identity with the right CA encrypt; a foreign CA is refused; verify_identity refuses a certificate for another host name; disabled stays plain")
    func tlsModes() async throws {
        let dir = FileManager.default.temporaryDirectory.path + "/shardbank-tls-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let files = try makeCertificates(in: dir)
        try await withCluster(mariadbOptions: ["ssl_ca=\(files.ca)", "ssl_cert=\(files.cert)", "ssl_key=\(files.key)"]) { cluster in
            let plain = try cluster.bankConfiguration("node1")
            func cipher(_ mode: MariaDBConfiguration.TLSMode, ca: String?) async throws -> String {
                var config = plain
                config.tlsMode = mode
                config.tlsCAFile = ca
                let c = try await MariaDBConnection.connect(configuration: config)
                let row = try await c.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'").rows.first
                await c.close()
                return try row?.string("Value") ?? ""
            }
            #expect(try await cipher(.disabled, ca: nil).isEmpty, "disabled must not negotiate TLS")
            #expect(try await !cipher(.required, ca: nil).isEmpty)
            #expect(try await !cipher(.verifyCA, ca: files.ca).isEmpty)
            #expect(try await !cipher(.verifyIdentity, ca: files.ca).isEmpty)
            for mode in [MariaDBConfiguration.TLSMode.verifyCA, .verifyIdentity] {
                do {
                    _ = try await cipher(mode, ca: files.otherCA)
                    Issue.record("\(mode) connected to a server whose certificate the configured CA did not sign")
                } catch let error as MariaDBError {
                    #expect(error.code == .connectionFailed, "\(error)")
                    #expect(error.description.contains("node1"), "\(error)")
                }
            }
        }
        // A certificate from the right CA for another host name: verify_ca accepts it (the chain is
        // good), verify_identity refuses it (127.0.0.1 is not the name it was issued for).
        try await withCluster(mariadbOptions: ["ssl_ca=\(files.ca)", "ssl_cert=\(files.otherNameCert)", "ssl_key=\(files.otherNameKey)"]) { cluster in
            var config = try cluster.bankConfiguration("node1")
            config.tlsCAFile = files.ca
            config.tlsMode = .verifyCA
            let c = try await MariaDBConnection.connect(configuration: config)
            #expect(try await !(c.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'").rows.first?.string("Value") ?? "").isEmpty)
            await c.close()
            config.tlsMode = .verifyIdentity
            do {
                let c = try await MariaDBConnection.connect(configuration: config)
                await c.close()
                Issue.record("verify_identity connected to 127.0.0.1 presenting a certificate for not-this-host.invalid")
            } catch let error as MariaDBError {
                #expect(error.code == .connectionFailed, "\(error)")
                #expect(error.description.contains("node1"), "\(error)")
            }
        }
    }
}

@Suite("Session isolation and XA locks on a real mariadbd", .serialized)
struct MariaDBIsolationTests {
    @Test("sessions run REPEATABLE READ even on a server whose default is READ COMMITTED (the fences' locking reads rely on it)")
    func isolationPinned() async throws {
        try await withCluster(mariadbOptions: ["transaction_isolation=READ-COMMITTED"]) { cluster in
            var configuration = try cluster.bankConfiguration("node1")
            let pinned = try await MariaDBConnection.connect(configuration: configuration)
            #expect(try await pinned.query("SELECT @@tx_isolation AS i").rows.first?.string("i") == "REPEATABLE-READ")
            await pinned.close()
            configuration.sessionIsolation = nil
            let serverDefault = try await MariaDBConnection.connect(configuration: configuration)
            #expect(try await serverDefault.query("SELECT @@tx_isolation AS i").rows.first?.string("i") == "READ-COMMITTED")
            await serverDefault.close()
        }
    }

    /// A platform fact a range move must respect: MariaDB 10.11 releases an XA branch's shared
    /// locks at XA PREPARE (its exclusive row locks stay) unless the branch is SERIALIZABLE. A
    /// prepared participant therefore does not hold its fence: a move that freezes a range must
    /// then wait for the branches prepared before the freeze to end. If this test fails, the
    /// server keeps the locks and that wait is merely redundant.
    @Test("XA PREPARE releases a branch's shared locks (not under SERIALIZABLE): a freeze does not wait for a prepared branch")
    func prepareReleasesSharedLocks() async throws {
        try await withCluster { cluster in
            let setup = try await connect(cluster)
            try await setup.query("CREATE TABLE ownership (id INT PRIMARY KEY, state VARCHAR(16)) ENGINE=InnoDB")
            try await setup.query("INSERT INTO ownership VALUES (1, 'active')")
            try await setup.query("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT) ENGINE=InnoDB")
            try await setup.query("INSERT INTO accounts VALUES (1, 0)")
            for (isolation, freezeWaits) in [("REPEATABLE READ", false), ("SERIALIZABLE", true)] {
                let branch = try await connect(cluster)
                let xid = XID(gtrid: "prepare-\(freezeWaits)")
                try await branch.query("SET TRANSACTION ISOLATION LEVEL \(isolation)")
                try await branch.xaStart(xid)
                // A participant's work: the fence read, then its write.
                _ = try await branch.query("SELECT state FROM ownership WHERE id = 1 LOCK IN SHARE MODE")
                try await branch.query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
                try await branch.xaEnd(xid)
                try await branch.xaPrepare(xid)
                let mover = try await connect(cluster)
                try await mover.query("SET SESSION innodb_lock_wait_timeout = 1")
                do {
                    try await mover.query("UPDATE ownership SET state = 'frozen' WHERE id = 1")
                    #expect(!freezeWaits, "the freeze went through a \(isolation) prepared branch's shared lock")
                    try await mover.query("UPDATE ownership SET state = 'active' WHERE id = 1")
                } catch let error as MariaDBError {
                    #expect(freezeWaits && error.errorNumber == 1205, "\(isolation): \(error)")
                }
                try await branch.xaRollback(xid)
                await branch.close()
                await mover.close()
            }
            await setup.close()
        }
    }
}
