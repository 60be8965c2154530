import Etcd
import MariaDB
import Testing

@Suite("Connection pool state machine")
struct PoolStateMachineTests {
    @Test("opens up to the limit, then parks waiters and hands released connections over in order")
    func limitAndHandOver() {
        var m = PoolStateMachine<Int>(maxConnections: 2, validateAfterNanoseconds: 1_000)
        let r1 = m.acquire(waiter: 1, now: 0)
        #expect(r1 == .open)
        m.opened()
        let r2 = m.acquire(waiter: 2, now: 0)
        #expect(r2 == .open)
        m.opened()
        let r3 = m.acquire(waiter: 3, now: 0)
        #expect(r3 == .wait)
        let r4 = m.acquire(waiter: 4, now: 0)
        #expect(r4 == .wait)
        let r5 = m.release(10, broken: false, now: 5)
        #expect(r5 == .handOver(waiter: 3))
        #expect(m.leased == 2)
        let abandoned = m.abandon(waiter: 4)
        let again = m.abandon(waiter: 4)
        #expect(abandoned)
        #expect(!again)
        let r6 = m.release(10, broken: false, now: 5)
        #expect(r6 == .keep)
        let r7 = m.acquire(waiter: 5, now: 10)
        #expect(r7 == .lease(10, validate: false))
        let r8 = m.release(10, broken: false, now: 10)
        #expect(r8 == .keep)
        let r9 = m.acquire(waiter: 6, now: 5_000)
        #expect(r9 == .lease(10, validate: true)) // idle too long: ping first
    }

    @Test("a broken connection is closed and its slot goes to a waiter as a permit to open")
    func brokenReplaced() {
        var m = PoolStateMachine<Int>(maxConnections: 1, validateAfterNanoseconds: 1_000)
        let r10 = m.acquire(waiter: 1, now: 0)
        #expect(r10 == .open)
        m.opened()
        let r11 = m.acquire(waiter: 2, now: 0)
        #expect(r11 == .wait)
        let r12 = m.release(7, broken: true, now: 1)
        #expect(r12 == .close(permitOpenFor: 2))
        #expect(m.opening == 1)
        let r13 = m.openFailed()
        #expect(r13 == .none)
        #expect(m.leased + m.opening + m.idle.count == 0)
    }

    @Test("a failed open frees its slot for the next waiter")
    func failedOpen() {
        var m = PoolStateMachine<Int>(maxConnections: 1, validateAfterNanoseconds: 1_000)
        let r14 = m.acquire(waiter: 1, now: 0)
        #expect(r14 == .open)
        let r15 = m.acquire(waiter: 2, now: 0)
        #expect(r15 == .wait)
        let r16 = m.openFailed()
        #expect(r16 == .permitOpen(waiter: 2))
    }

    @Test("shutdown fails waiters, closes idle and leased connections")
    func shutdown() {
        var m = PoolStateMachine<Int>(maxConnections: 2, validateAfterNanoseconds: 1_000)
        _ = m.acquire(waiter: 1, now: 0); m.opened()
        _ = m.acquire(waiter: 2, now: 0); m.opened()
        _ = m.release(20, broken: false, now: 0)
        let r17 = m.acquire(waiter: 3, now: 0)
        #expect(r17 == .lease(20, validate: false))
        let r18 = m.acquire(waiter: 4, now: 0)
        #expect(r18 == .wait)
        let (close, fail) = m.shutDown()
        #expect(close.isEmpty)
        #expect(fail == [4])
        let r19 = m.release(20, broken: false, now: 0)
        #expect(r19 == .close(permitOpenFor: nil))
        let r20 = m.acquire(waiter: 5, now: 0)
        #expect(r20 == .failShutDown)
    }
}

@Suite("etcd endpoint selection")
struct EndpointSelectorTests {
    @Test("a failed member is skipped until its quarantine ends; success keeps a member preferred")
    func failover() {
        var s = EndpointSelector(endpoints: ["a", "b", "c"])
        #expect(s.current(now: 0) == 0)
        s.failed(0, now: 0, quarantineNanoseconds: 100)
        #expect(s.current(now: 1) == 1)
        s.failed(1, now: 1, quarantineNanoseconds: 100)
        #expect(s.current(now: 2) == 2)
        s.succeeded(2)
        #expect(s.current(now: 200) == 2) // stays on the member that works
        s.failed(2, now: 201, quarantineNanoseconds: 100)
        #expect(s.current(now: 202) == 0) // a's quarantine is over
    }

    @Test("when every member failed, the one whose quarantine ends first is tried")
    func allFailed() {
        var s = EndpointSelector(endpoints: ["a", "b"])
        s.failed(0, now: 0, quarantineNanoseconds: 100)
        s.failed(1, now: 10, quarantineNanoseconds: 100)
        #expect(s.current(now: 20) == 0)
    }
}

@Suite("MariaDB values and errors (no server)")
struct MariaDBValueTests {
    @Test("decimal text round trip, including DECIMAL(19,2)'s extremes")
    func decimal() throws {
        for text in ["0.01", "-0.01", "99999999999999999.99", "-99999999999999999.99", "0.00", "123", "0.000001"] {
            #expect(SQLDecimal(text)?.description == text)
        }
        #expect(try SQLDecimal("12.30")!.minorUnits() == 1230)
        #expect(try SQLDecimal("12.3000")!.minorUnits() == 1230)
        #expect(throws: MariaDBValueError.self) { try SQLDecimal("12.301")!.minorUnits() }
        #expect(throws: MariaDBValueError.self) { try SQLDecimal("99999999999999999.99")!.minorUnits() }
        #expect(SQLDecimal("1e5") == nil)
        #expect(SQLDecimal("") == nil)
    }

    @Test("date-time ↔ Unix microseconds")
    func dateTime() {
        let t = SQLDateTime(unixMicroseconds: 1_764_115_200_123_456) // 2025-11-26 00:00:00.123456 UTC
        #expect(t.description == "2025-11-26 00:00:00.123456")
        #expect(t.unixMicroseconds == 1_764_115_200_123_456)
        #expect(SQLDateTime(unixMicroseconds: -1).description == "1969-12-31 23:59:59.999999")
    }

    @Test("error descriptions redact quoted literals; retryable and broken judgements")
    func errors() {
        let e = MariaDBError(code: .server, server: "node1 (h:1)", errorNumber: 1062, sqlState: "23000",
                             message: "Duplicate entry 'alice-secret' for key 'PRIMARY'")
        #expect(!e.description.contains("alice-secret"))
        #expect(e.description.contains("1062"))
        #expect(!e.isRetryable)
        #expect(MariaDBError(code: .server, server: "n", errorNumber: 1213, message: "Deadlock").isRetryable)
        #expect(MariaDBError(code: .server, server: "n", errorNumber: 1205, message: "Lock wait").isRetryable)
        #expect(!MariaDBError(code: .server, server: "n", errorNumber: 1213, message: "").isConnectionBroken)
        #expect(MariaDBError(code: .connectionLost, server: "n", errorNumber: 2013, message: "").isConnectionBroken)
        #expect(XID(gtrid: "t-1", bqual: "node1").description == "xid(t-1, node1, 1)")
    }
}
