import PropertyBased
import Sharding
import Testing

@Suite("Balance ceiling and checked arithmetic")
struct BalanceLimitTests {
    @Test("edges: zero, the ceiling, one cent past it, Int64 overflow both ways")
    func edges() {
        let limit = BalanceLimit(ceiling: Money(minorUnits: 1_000))
        #expect(limit.apply(0, to: 0) == .balance(0))
        #expect(limit.apply(1_000, to: 0) == .balance(1_000))
        #expect(limit.apply(1, to: 1_000) == .aboveCeiling)
        #expect(limit.apply(-1, to: 0) == .belowZero)
        #expect(limit.apply(Int64.max, to: 1) == .aboveCeiling)          // would overflow
        #expect(limit.apply(Int64.min, to: -1) == .belowZero)            // would overflow
        #expect(limit.apply(-1, to: Int64.max) == .aboveCeiling)         // a balance stored above the ceiling stays refused
        let widest = BalanceLimit(ceiling: BalanceLimit.maximumCeiling)
        #expect(widest.apply(1, to: Int64.max) == .aboveCeiling)
        #expect(BalanceLimit().ceiling == Money(minorUnits: 100_000_000_000_000))
    }

    @Test("property: random operations near the ceiling never trap, never pass it, and are exact")
    func nearTheCeiling() async {
        let ceilings = Gen.int64(in: 1...BalanceLimit.maximumCeiling.minorUnits)
        let offsets = Gen.int64(in: -1_000...1_000)
        let deltas = Gen.int64(in: Int64.min...Int64.max)
        await propertyCheck(count: 3000, input: ceilings, offsets, offsets, deltas) { ceiling, start, nearDelta, anyDelta in
            let limit = BalanceLimit(ceiling: Money(minorUnits: ceiling))
            var balance = min(max(ceiling + start, 0), ceiling) // a valid balance within 10.00 of the ceiling
            for delta in [nearDelta, anyDelta, -nearDelta, ceiling - balance, 1] {
                let exact = Int128(balance) + Int128(delta)
                switch limit.apply(delta, to: balance) {
                case .balance(let after):
                    #expect(Int128(after) == exact)
                    #expect(after >= 0 && after <= ceiling)
                    balance = after
                case .belowZero:
                    #expect(exact < 0)
                case .aboveCeiling:
                    #expect(exact > Int128(ceiling))
                }
            }
        }
    }
}
