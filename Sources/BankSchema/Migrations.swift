import Logging
import MariaDB

/// One step of a node's schema. Versions are applied in order, once each; never edit a released one.
public struct Migration: Sendable {
    public var version: Int
    public var name: String
    public var statements: [String]
}

/// The schema of `bank_db` on every storage node (`docs/ARCHITECTURE.md` describes the tables).
public enum BankSchema {
    /// Every migration, in order.
    public static let migrations: [Migration] = [
        Migration(version: 1, name: "ledger tables", statements: [
            // The seed's table: balance DECIMAL(19,2) (the seed's 10,2 caps at 99,999,999.99);
            // balance_range = id of the range holding the row; row_version for optimistic checks.
            """
            CREATE TABLE IF NOT EXISTS account_info (
              account_id BIGINT NOT NULL,
              customer_name VARCHAR(255) NOT NULL,
              balance DECIMAL(19,2) NOT NULL,
              balance_range VARCHAR(64) NOT NULL,
              row_version BIGINT NOT NULL DEFAULT 1,
              created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
              updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
              PRIMARY KEY (account_id),
              KEY by_range (balance_range, account_id),
              CONSTRAINT balance_not_negative CHECK (balance >= 0)
            ) ENGINE=InnoDB
            """,
            // Directory entry of an account: on the node owning hash(account_id) in the directory map.
            """
            CREATE TABLE IF NOT EXISTS account_directory (
              account_id BIGINT NOT NULL,
              directory_range VARCHAR(64) NOT NULL,
              data_node VARCHAR(64) NOT NULL,
              data_range VARCHAR(64) NOT NULL,
              previous_nodes VARCHAR(1024) NOT NULL DEFAULT '',
              updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
              PRIMARY KEY (account_id),
              KEY by_range (directory_range, account_id)
            ) ENGINE=InnoDB
            """,
            // One row per posting.
            """
            CREATE TABLE IF NOT EXISTS journal (
              entry_id BIGINT NOT NULL AUTO_INCREMENT,
              account_id BIGINT NOT NULL,
              transfer_id VARCHAR(64) NOT NULL,
              amount DECIMAL(19,2) NOT NULL,
              balance_after DECIMAL(19,2) NOT NULL,
              created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
              PRIMARY KEY (entry_id),
              UNIQUE KEY one_posting (transfer_id, account_id),
              KEY by_account (account_id, entry_id)
            ) ENGINE=InnoDB
            """,
            // Transfer id = idempotency key = 2PC decision record.
            """
            CREATE TABLE IF NOT EXISTS transfers (
              transfer_id VARCHAR(64) NOT NULL,
              kind VARCHAR(16) NOT NULL,
              state VARCHAR(16) NOT NULL,
              from_account BIGINT NULL,
              to_account BIGINT NULL,
              amount DECIMAL(19,2) NOT NULL,
              request_hash CHAR(64) NOT NULL,
              participants VARCHAR(255) NOT NULL DEFAULT '',
              created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
              PRIMARY KEY (transfer_id)
            ) ENGINE=InnoDB
            """,
            // The ownership fence: every write reads its range's row in share mode.
            """
            CREATE TABLE IF NOT EXISTS range_ownership (
              map_name VARCHAR(32) NOT NULL,
              range_id VARCHAR(64) NOT NULL,
              lower_bound BIGINT NOT NULL,
              upper_bound BIGINT NULL,
              epoch BIGINT NOT NULL,
              state VARCHAR(16) NOT NULL,
              updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
              PRIMARY KEY (map_name, range_id)
            ) ENGINE=InnoDB
            """,
        ]),
        // The nodes an account lived on travel with its row, so a retry checking its idempotency key
        // learns them from the row it locks (no directory read on the fast path).
        Migration(version: 2, name: "previous nodes on the account row", statements: [
            "ALTER TABLE account_info ADD COLUMN IF NOT EXISTS previous_nodes VARCHAR(1024) NOT NULL DEFAULT ''",
        ]),
        // Attempts own their branches. A decision row per attempt: `(transfer_id, attempt)` arbitrates
        // between an attempt's coordinator committing and a resolver presuming its abort, so an aborted
        // attempt no longer spends its key; `committed_id` (the transfer id of committed rows only) is
        // unique, so a node holds at most one committed attempt per transfer. Postings name their
        // attempt. Keys and ids compare byte for byte (utf8mb4_nopad_bin): the server's default
        // collation folds case and accents, which made "Key-A" and "key-a" one transfer, and a PAD
        // SPACE collation (utf8mb4_bin too) ignores trailing spaces, which made "k" and "k " one.
        Migration(version: 3, name: "attempts own their branches; binary keys", statements: [
            """
            ALTER TABLE transfers
              MODIFY transfer_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              ADD COLUMN IF NOT EXISTS attempt VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '' AFTER transfer_id,
              ADD COLUMN IF NOT EXISTS committed_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin
                AS (IF(state = 'committed', transfer_id, NULL)) PERSISTENT,
              DROP PRIMARY KEY, ADD PRIMARY KEY (transfer_id, attempt),
              ADD UNIQUE KEY IF NOT EXISTS one_commit (committed_id)
            """,
            """
            ALTER TABLE journal
              MODIFY transfer_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              ADD COLUMN IF NOT EXISTS attempt VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '' AFTER transfer_id
            """,
            """
            ALTER TABLE account_info
              MODIFY balance_range VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              MODIFY previous_nodes VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT ''
            """,
            """
            ALTER TABLE account_directory
              MODIFY directory_range VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              MODIFY data_node VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              MODIFY data_range VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              MODIFY previous_nodes VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT ''
            """,
            """
            ALTER TABLE range_ownership
              MODIFY map_name VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              MODIFY range_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL
            """,
        ]),
        // Prepares online range moves (the move itself is not here): the `capture` flag and the
        // `range_changes` log a mover's capture triggers write (``installCaptureTriggers(_:)``: not part
        // of the schema, because with capture off they still cost ~15 % of the throughput — a mover
        // installs them on its source for the time of the move). `transfers.home_account` finds the
        // decision rows a movement's home account carries along when its range moves; an opening's
        // decision belongs to its key's directory range, not to the account, so it has none.
        // Every statement is idempotent (IF NOT EXISTS), so a crash between two of them is repaired
        // by running the migration again.
        Migration(version: 4, name: "change log for range moves", statements: [
            "ALTER TABLE range_ownership ADD COLUMN IF NOT EXISTS capture TINYINT NOT NULL DEFAULT 0",
            """
            CREATE TABLE IF NOT EXISTS range_changes (
              seq BIGINT NOT NULL AUTO_INCREMENT,
              map_name VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              range_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              account_id BIGINT NOT NULL,
              changed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
              PRIMARY KEY (seq),
              KEY by_range (map_name, range_id, seq)
            ) ENGINE=InnoDB
            """,
            """
            ALTER TABLE transfers
              ADD COLUMN IF NOT EXISTS home_account BIGINT AS (IF(kind = 'open', NULL, COALESCE(from_account, to_account))) PERSISTENT,
              ADD KEY IF NOT EXISTS by_home (home_account)
            """,
        ]),
        // A move compares, while its range is frozen, the history made since the comparison before
        // the freeze: these indexes let it read only the last seconds' postings and decisions
        // instead of every posting of the range's accounts (which made the freeze grow with the
        // journal). Their cost on the hot path is in docs/BENCHMARKS.md ("Range moves under load").
        Migration(version: 5, name: "history by time, for a move's freeze", statements: [
            "ALTER TABLE journal ADD KEY IF NOT EXISTS by_time (created_at)",
            "ALTER TABLE transfers ADD KEY IF NOT EXISTS by_time (created_at)",
        ]),
        // A movement keeps its decision on its home account's node; the key itself is claimed on
        // the node owning the key's directory range (where an opening keeps its decision), so that
        // the same key with another request — another home account, on another node — is found and
        // refused. A claim is never changed once written; a directory range's move carries its
        // claims (`key_hash` = the key's directory hash: read by it, `by_hash`, then by time, `by_time`).
        Migration(version: 6, name: "idempotency key claims", statements: [
            """
            CREATE TABLE IF NOT EXISTS key_claims (
              transfer_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
              key_hash BIGINT NOT NULL,
              kind VARCHAR(16) NOT NULL,
              home_account BIGINT NULL,
              request_hash CHAR(64) NOT NULL,
              claimed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
              PRIMARY KEY (transfer_id),
              KEY by_hash (key_hash, transfer_id),
              KEY by_time (claimed_at)
            ) ENGINE=InnoDB
            """,
        ]),
    ]

    /// The capture triggers on `account_info` and `account_directory`, installed by a mover on its
    /// source for the time of a move (``removeCaptureTriggers(_:)`` after). Creating a trigger waits
    /// for the transactions that use the table (prepared XA branches too) and holds new ones back
    /// meanwhile: a pause of the node's writes as long as its longest transaction. With a binary log
    /// the user needs SUPER or the server `log_bin_trust_function_creators=ON` (the error says so).
    public static func installCaptureTriggers(_ connection: MariaDBConnection) async throws {
        for statement in captureTriggers(table: "account_info", map: "accounts", rangeColumn: "balance_range")
            + captureTriggers(table: "account_directory", map: "directory", rangeColumn: "directory_range") {
            do { try await connection.query(statement) } catch { throw triggerPrivilegeError(error) }
        }
    }

    /// Drops the capture triggers (a node no move reads from).
    public static func removeCaptureTriggers(_ connection: MariaDBConnection) async throws {
        for table in ["account_info", "account_directory"] {
            for event in ["insert", "update", "delete"] { try await connection.query("DROP TRIGGER IF EXISTS \(table)_capture_\(event)") }
        }
    }

    /// The capture triggers on `table`: after an insert, update or delete, one `range_changes`
    /// row (`map`, the range, the account) per range the row was or is in whose `range_ownership`
    /// row has `capture = 1` — an update logs its old and its new range (once when they are the
    /// same). The ownership row is read `LOCK IN SHARE MODE` whatever its `capture`, and only by
    /// primary key, so the lock is held to the end of the transaction under any isolation level.
    /// A range this node does not hold (no ownership row) logs nothing; the fence refuses such
    /// writes anyway.
    static func captureTriggers(table: String, map: String, rangeColumn range: String) -> [String] {
        let old = CaptureRow(map: map, range: range, row: "OLD")
        let new = CaptureRow(map: map, range: range, row: "NEW")
        return [
            trigger(table, "INSERT", """
                  \(new.readCapture(into: "c"))
                  IF c = 1 THEN \(new.log) END IF;
                """),
            trigger(table, "UPDATE", """
                  \(old.readCapture(into: "c"))
                  IF c = 1 THEN \(old.log) END IF;
                  IF NEW.\(range) <> OLD.\(range) THEN
                    \(new.readCapture(into: "c_new"))
                    IF c_new = 1 THEN \(new.log) END IF;
                  ELSEIF c = 1 AND NEW.account_id <> OLD.account_id THEN
                    \(new.log)
                  END IF;
                """),
            trigger(table, "DELETE", """
                  \(old.readCapture(into: "c"))
                  IF c = 1 THEN \(old.log) END IF;
                """),
        ]
    }

    /// One side (`OLD` or `NEW`) of a row in a capture trigger.
    private struct CaptureRow {
        var map: String
        var range: String
        var row: String

        func readCapture(into variable: String) -> String {
            "SELECT capture INTO \(variable) FROM range_ownership WHERE map_name = '\(map)' AND range_id = \(row).\(range) LOCK IN SHARE MODE;"
        }

        var log: String {
            "INSERT INTO range_changes (map_name, range_id, account_id) VALUES ('\(map)', \(row).\(range), \(row).account_id);"
        }
    }

    private static func trigger(_ table: String, _ event: String, _ body: String) -> String {
        """
        CREATE OR REPLACE TRIGGER \(table)_capture_\(event.lowercased()) AFTER \(event) ON \(table) FOR EACH ROW
        BEGIN
          DECLARE c TINYINT DEFAULT 0;
          DECLARE c_new TINYINT DEFAULT 0;
          DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
        \(body)
        END
        """
    }

    /// The newest version this build knows.
    public static var latestVersion: Int { migrations.last?.version ?? 0 }

    /// Brings the connected database to the latest version. Safe to run from several processes at
    /// once (serialised by a named lock) and again on an up-to-date database (does nothing).
    /// Returns the versions it applied.
    @discardableResult
    public static func migrate(_ connection: MariaDBConnection, logger: Logger) async throws -> [Int] {
        try await connection.query("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
              version INT NOT NULL PRIMARY KEY,
              name VARCHAR(255) NOT NULL,
              applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
            ) ENGINE=InnoDB
            """)
        let locked = try await connection.query("SELECT GET_LOCK('shardbank_schema_migration', 60) AS l").rows.first?.int64("l")
        guard locked == 1 else {
            throw MariaDBError(code: .server, server: connection.configuration.endpointDescription,
                               message: "another process holds the schema migration lock for over 60 s")
        }
        do {
            let applied = Set(try await connection.query("SELECT version FROM schema_migrations").rows.map { try $0.int64("version") })
            if let newest = applied.max(), newest > latestVersion {
                throw MariaDBError(code: .server, server: connection.configuration.endpointDescription,
                                   message: "the database is at schema version \(newest), newer than this build's \(latestVersion); upgrade ShardBank")
            }
            var done: [Int] = []
            for migration in migrations where !applied.contains(Int64(migration.version)) {
                // MariaDB commits DDL implicitly; every statement is idempotent (IF NOT EXISTS), so a
                // crash between a statement and the version row is repaired by running again.
                for statement in migration.statements { try await connection.query(statement) }
                try await connection.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [.int(Int64(migration.version)), .string(migration.name)])
                logger.info("applied schema migration", metadata: ["node": "\(connection.configuration.label)", "version": "\(migration.version)"])
                done.append(migration.version)
            }
            _ = try await connection.query("SELECT RELEASE_LOCK('shardbank_schema_migration')")
            return done
        } catch {
            _ = try? await connection.query("SELECT RELEASE_LOCK('shardbank_schema_migration')")
            throw error
        }
    }

    /// A trigger the server refused to create, said with what it needs (docs/LEDGER.md, "Schema v4").
    static func triggerPrivilegeError(_ error: any Error) -> any Error {
        guard var error = error as? MariaDBError else { return error }
        switch error.errorNumber {
        case 1419: // ER_BINLOG_CREATE_ROUTINE_NEED_SUPER
            error.message = "a range move creates capture triggers, and this server writes a binary log: the migrating user needs SUPER, "
                + "or the server log_bin_trust_function_creators=ON (safe with binlog_format=ROW); server said: " + error.message
        case 1142, 1227: // ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR
            error.message = "a range move creates capture triggers: the user needs the TRIGGER privilege on the bank database; server said: " + error.message
        default:
            break
        }
        return error
    }

    /// The database's current version (0 when never migrated).
    public static func currentVersion(_ connection: MariaDBConnection) async throws -> Int {
        let exists = try await connection.query("SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'")
        guard try exists.rows.first?.int64("n") == 1 else { return 0 }
        return Int(try await connection.query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").rows.first?.int64("v") ?? 0)
    }
}
