import Sharding
import PropertyBased
import Testing

@Suite("Money: exact decimal text ↔ Int64 minor units")
struct MoneyTests {
    @Test("parses the accepted forms", arguments: [
        ("0", 0), ("0.01", 1), ("5000.00", 500_000), ("5000.5", 500_050), ("12", 1200), ("-0.07", -7),
        ("92233720368547758.07", Int64.max),
    ] as [(String, Int64)])
    func parses(text: String, cents: Int64) throws {
        #expect(try Money(parsing: text).minorUnits == cents)
    }

    @Test("refuses everything else with a reason", arguments: [
        ("", MoneyParseError.Reason.empty), ("1.234", .tooManyDecimals), ("1e5", .malformed), ("+1", .malformed), (" 1", .malformed),
        ("1,000.00", .malformed), ("1.", .malformed), (".5", .malformed), ("1.2.3", .malformed), ("--1", .malformed),
        ("92233720368547758.08", .outOfRange), ("99999999999999999999", .outOfRange), ("NaN", .malformed),
    ])
    func refuses(text: String, reason: MoneyParseError.Reason) {
        #expect(throws: MoneyParseError.self) { try Money(parsing: text) }
        do { _ = try Money(parsing: text) } catch { #expect(error.reason == reason) }
    }

    @Test("formats with exactly two decimals")
    func formats() {
        #expect(Money(minorUnits: 0).description == "0.00")
        #expect(Money(minorUnits: 5).description == "0.05")
        #expect(Money(minorUnits: -1234).description == "-12.34")
        #expect(Money(minorUnits: Int64.min).description == "-92233720368547758.08")
    }

    @Test("text round trip for any amount")
    func roundTrip() async {
        await propertyCheck(count: 2000, input: Gen.int64(in: (Int64.min + 1)...Int64.max)) { cents in
            #expect((try? Money(parsing: Money(minorUnits: cents).description))?.minorUnits == cents)
        }
    }
}
