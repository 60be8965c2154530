import Foundation
import Health
import Testing

@Suite("Health: heartbeat format, node judgement, agent decisions")
struct HealthTests {
    let beat = Heartbeat(node: "node1", timeMillis: 1_795_000_000_000, sequence: 7,
                         database: .init(ok: true, latencyMicros: 350), ranges: [.init(map: "accounts", range: "a1", rows: 12)],
                         version: "0.5.0", intervalMillis: 1000)

    @Test("the stored JSON has the documented field names and round-trips")
    func json() throws {
        let text = String(decoding: beat.encoded(), as: UTF8.self)
        #expect(text == #"{"database":{"latency_us":350,"ok":true},"interval_ms":1000,"node":"node1","ranges":[{"map":"accounts","range":"a1","rows":12}],"seq":7,"time_ms":1795000000000,"version":"0.5.0"}"#)
        #expect(Heartbeat.decode(beat.encoded()) == beat)
        #expect(Heartbeat.decode(Array("not json".utf8)) == nil)
    }

    @Test("judgement: no key or a failing database → down; late beat or pool errors since the beat → suspect")
    func judge() {
        #expect(NodeHealth.judge(node: "n", beat: nil, age: nil, poolErrorAge: nil).state == .down)
        var failing = beat
        failing.database = .init(ok: false, latencyMicros: 1_000_000, error: "connection refused")
        let down = NodeHealth.judge(node: "n", beat: failing, age: .milliseconds(100), poolErrorAge: nil)
        #expect(down.state == .down && down.reason?.contains("connection refused") == true)
        #expect(NodeHealth.judge(node: "n", beat: beat, age: .milliseconds(1999), poolErrorAge: nil).state == .healthy)
        #expect(NodeHealth.judge(node: "n", beat: beat, age: .milliseconds(2001), poolErrorAge: nil).state == .suspect)
        #expect(NodeHealth.judge(node: "n", beat: beat, age: .milliseconds(500), poolErrorAge: .milliseconds(100)).state == .suspect)
        #expect(NodeHealth.judge(node: "n", beat: beat, age: .milliseconds(100), poolErrorAge: .milliseconds(500)).state == .healthy,
                "an error before the last good beat is history")
    }

    @Test("agent: registers when the database answers, reports the first failure, revokes after N, registers again")
    func agent() {
        var m = AgentStateMachine(failuresBeforeRevoke: 2)
        #expect(m.beat(databaseOK: false) == .none) // never registered while the database fails
        #expect(m.beat(databaseOK: true) == .register)
        m.registeredWithLease()
        #expect(m.beat(databaseOK: true) == .beat(databaseOK: true))
        #expect(m.beat(databaseOK: false) == .beat(databaseOK: false))
        #expect(m.beat(databaseOK: true) == .beat(databaseOK: true)) // one failure forgiven
        #expect(m.beat(databaseOK: false) == .beat(databaseOK: false))
        #expect(m.beat(databaseOK: false) == .revoke)
        m.revoked()
        #expect(m.beat(databaseOK: false) == .none)
        #expect(m.beat(databaseOK: true) == .register)
        m.registeredWithLease()
        m.leaseLost() // expired during an etcd outage
        #expect(m.beat(databaseOK: true) == .register)
    }
}
