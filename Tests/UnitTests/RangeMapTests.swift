import Foundation
import PropertyBased
import Sharding
import Testing

@Suite("Range map: validation, lookup, split, merge, reassign")
struct RangeMapTests {
    func map(_ ranges: [ShardRange]) throws(RangeMapError) -> RangeMap {
        try RangeMap(name: "m", keyKind: "k", ranges: ranges)
    }

    @Test("the seed layout: 10000.00 on node1, 10000.01 on node2, 50000.01 and beyond 100000 on node3")
    func seedLayout() throws {
        let accounts = SeedLayout.accountsMap()
        #expect(try accounts.range(for: 0).node == "node1")
        #expect(try accounts.range(for: 1_000_000).node == "node1")   // 10000.00
        #expect(try accounts.range(for: 1_000_050).node == "node2")   // 10000.50: in no seed range
        #expect(try accounts.range(for: 5_000_000).node == "node2")   // 50000.00
        #expect(try accounts.range(for: 5_000_001).node == "node3")   // 50000.01
        #expect(try accounts.range(for: 10_000_000_000).node == "node3") // far above 100000: the seed threw
        #expect(throws: RangeMapError.self) { try accounts.range(for: -1) }
        let directory = SeedLayout.directoryMap()
        #expect(directory.ranges.count == 3)
        #expect(directory.domainStart == Int64.min)
        #expect(try directory.range(for: Int64.max).id == "d3")
    }

    @Test("a gap is refused and named")
    func gap() {
        do {
            _ = try map([ShardRange(id: "a", lowerBound: 0, upperBound: 10, node: "n"), ShardRange(id: "b", lowerBound: 11, upperBound: nil, node: "n")])
            Issue.record("gap accepted")
        } catch {
            #expect(error.code == .gap)
            #expect(error.ranges == ["a", "b"])
            #expect(error.message.contains("[10, 11)"))
        }
    }

    @Test("an overlap is refused and named")
    func overlap() {
        do {
            _ = try map([ShardRange(id: "a", lowerBound: 0, upperBound: 12, node: "n"), ShardRange(id: "b", lowerBound: 11, upperBound: nil, node: "n")])
            Issue.record("overlap accepted")
        } catch {
            #expect(error.code == .overlap)
            #expect(error.ranges == ["a", "b"])
        }
    }

    @Test("other invalid maps", arguments: [
        ([] as [ShardRange], RangeMapError.Code.empty),
        ([ShardRange(id: "a", lowerBound: 0, upperBound: 5, node: "n")], .bounded),
        ([ShardRange(id: "a", lowerBound: 0, upperBound: nil, node: "n"), ShardRange(id: "b", lowerBound: 5, upperBound: nil, node: "n")], .unboundedNotLast),
        ([ShardRange(id: "a", lowerBound: 0, upperBound: 5, node: "n"), ShardRange(id: "a", lowerBound: 5, upperBound: nil, node: "n")], .duplicateID),
        ([ShardRange(id: "a", lowerBound: 5, upperBound: 5, node: "n"), ShardRange(id: "b", lowerBound: 5, upperBound: nil, node: "n")], .emptyRange),
        ([ShardRange(id: "a", lowerBound: 5, upperBound: 10, node: "n"), ShardRange(id: "b", lowerBound: 0, upperBound: nil, node: "n")], .unsorted),
    ])
    func invalid(ranges: [ShardRange], code: RangeMapError.Code) {
        do { _ = try map(ranges); Issue.record("accepted") } catch { #expect(error.code == code) }
    }

    @Test("unknown nodes are refused")
    func unknownNode() {
        #expect(throws: RangeMapError.self) {
            try RangeMap(name: "m", keyKind: "k", ranges: [ShardRange(id: "a", lowerBound: 0, upperBound: nil, node: "ghost")], knownNodes: ["node1"])
        }
    }

    @Test("split, merge and reassign bump the version and keep the invariants")
    func mutations() throws {
        let m = SeedLayout.accountsMap()
        let split = try m.splitting("a3", at: 10_000_001, newID: "a4")
        #expect(split.version == m.version + 1)
        #expect(try split.range(for: 10_000_001).id == "a4")
        #expect(try split.range(for: 10_000_000).id == "a3")
        #expect(throws: RangeMapError.self) { try m.splitting("a1", at: 0, newID: "x") }
        #expect(throws: RangeMapError.self) { try m.splitting("a1", at: 1_000_001, newID: "x") }
        let moved = try split.reassigning("a4", to: "node4")
        #expect(try moved.range(for: 20_000_000).node == "node4")
        #expect(throws: RangeMapError.self) { try moved.merging("a3", "a4") } // different nodes
        let merged = try split.merging("a3", "a4")
        #expect(merged.ranges == m.ranges)
        #expect(merged.version == m.version + 2)
        #expect(throws: RangeMapError.self) { try m.merging("a1", "a3") } // not adjacent
    }

    @Test("JSON form round-trips and is validated on decode")
    func json() throws {
        let m = SeedLayout.accountsMap()
        let data = try JSONEncoder().encode(m)
        #expect(try JSONDecoder().decode(RangeMap.self, from: data) == m)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"lo\":1000001"))
        let broken = Data(#"{"name":"m","key":"k","version":1,"ranges":[{"id":"a","lo":0,"hi":5,"node":"n"},{"id":"b","lo":6,"node":"n"}]}"#.utf8)
        #expect(throws: RangeMapError.self) { try JSONDecoder().decode(RangeMap.self, from: broken) }
    }

    /// Random valid maps: sorted distinct boundaries over the whole Int64 line.
    static let maps = Gen.int64(in: Int64.min...Int64.max).array(of: 0...20).map { raw -> RangeMap in
        let bounds = Array(Set(raw.filter { $0 != Int64.min })).sorted()
        var ranges: [ShardRange] = []
        var lo = Int64.min
        for (i, b) in bounds.enumerated() {
            ranges.append(ShardRange(id: "r\(i)", lowerBound: lo, upperBound: b, node: "n\(i % 3)"))
            lo = b
        }
        ranges.append(ShardRange(id: "r\(bounds.count)", lowerBound: lo, upperBound: nil, node: "n0"))
        return try! RangeMap(name: "p", keyKind: "k", ranges: ranges)
    }

    @Test("property: every key falls in exactly one range, and lookup finds it")
    func lookupProperty() async {
        await propertyCheck(count: 300, input: Self.maps, Gen.int64(in: Int64.min...Int64.max)) { m, key in
            let holders = m.ranges.filter { $0.contains(key) }
            #expect(holders.count == 1)
            #expect((try? m.range(for: key)) == holders.first)
        }
    }

    @Test("property: splitting at any interior key keeps a valid map with the same owners")
    func splitProperty() async {
        await propertyCheck(count: 300, input: Self.maps, Gen.int64(in: Int64.min...Int64.max), Gen.int64(in: Int64.min...Int64.max)) { m, at, probe in
            do {
                let r = try m.range(for: at)
                guard at > r.lowerBound else { return }
                let s = try m.splitting(r.id, at: at, newID: "new")
                try s.validate()
                #expect(try s.range(for: probe).node == m.range(for: probe).node)
                #expect(try s.merging(r.id, "new").ranges == m.ranges)
            } catch {
                Issue.record("split at \(at) failed: \(error)")
            }
        }
    }
}

@Suite("Directory hash")
struct DirectoryHashTests {
    @Test("SplitMix64 reference outputs (seed 0: the generator's first three values)")
    func referenceVectors() {
        #expect(DirectoryHash.mix64(0) == 0xE220_A839_7B1D_CDAF)
        #expect(DirectoryHash.mix64(0x9E37_79B9_7F4A_7C15) == 0x6E78_9E6A_A1B9_65F4)
        #expect(DirectoryHash.mix64(0x9E37_79B9_7F4A_7C15 &* 2) == 0x06C4_5D18_8009_454F)
    }

    @Test("idempotency keys: FNV-1a 64 over the UTF-8 bytes, then the finalizer (values from an independent Python implementation); byte for byte, so NFC and NFD differ")
    func idempotencyKeys() {
        #expect(DirectoryHash.key(forIdempotencyKey: "a") == 6_857_225_946_766_476_583)
        #expect(DirectoryHash.key(forIdempotencyKey: "open-K") == -5_572_698_568_124_330_906)
        #expect(DirectoryHash.key(forIdempotencyKey: "caf\u{E9}") == 8_708_593_886_905_372_729)
        #expect(DirectoryHash.key(forIdempotencyKey: "cafe\u{301}") == -4_835_767_638_014_289_238)
    }

    @Test("pinned account keys: changing these misplaces every directory entry")
    func pinned() {
        let pinned: [Int64: Int64] = Dictionary(uniqueKeysWithValues: [1, 2, 42, 1_000_000].map { ($0, DirectoryHash.key(forAccount: $0)) })
        #expect(pinned == Self.expected)
    }

    /// Computed once with an independent implementation (Python) of the same finalizer.
    static let expected: [Int64: Int64] = [
        1: -7_995_527_694_508_729_151,
        2: -7_541_218_347_953_203_506,
        42: -4_767_286_540_954_276_203,
        1_000_000: 7_497_680_628_364_559_847,
    ]

    @Test("sequential ids spread over the three seed directory ranges")
    func spread() throws {
        let directory = SeedLayout.directoryMap()
        var counts: [String: Int] = [:]
        for id in Int64(1)...30_000 { counts[try directory.range(for: DirectoryHash.key(forAccount: id)).node, default: 0] += 1 }
        for node in SeedLayout.nodes { #expect((9_000...11_000).contains(counts[node] ?? 0)) }
    }
}
