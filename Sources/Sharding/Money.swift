/// An amount of money in minor units (cents), exact. Money never passes through `Double`.
///
/// The text form is the one the API and the database use: an optional `-`, digits, and at most
/// two decimals (`"5000.00"`, `"0.5"`, `"12"`). Exponents, `+`, spaces and separators are refused.
public struct Money: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The amount in minor units (1/100 of the currency unit).
    public var minorUnits: Int64

    public init(minorUnits: Int64) { self.minorUnits = minorUnits }

    public static let zero = Money(minorUnits: 0)

    /// Parses the decimal text form exactly.
    public init(parsing text: String) throws(MoneyParseError) {
        var bytes = Substring(text).utf8[...]
        guard !bytes.isEmpty else { throw MoneyParseError(.empty, text) }
        var negative = false
        if bytes.first == UInt8(ascii: "-") { negative = true; bytes = bytes.dropFirst() }
        var whole: Int64 = 0
        var fraction: Int64 = 0
        var fractionDigits = 0
        var wholeDigits = 0
        var seenPoint = false
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let digit = Int64(byte - UInt8(ascii: "0"))
                if seenPoint {
                    fractionDigits += 1
                    guard fractionDigits <= 2 else { throw MoneyParseError(.tooManyDecimals, text) }
                    fraction = fraction * 10 + digit
                } else {
                    wholeDigits += 1
                    let (m, o1) = whole.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(digit)
                    guard !o1, !o2 else { throw MoneyParseError(.outOfRange, text) }
                    whole = s
                }
            case UInt8(ascii: "."):
                guard !seenPoint else { throw MoneyParseError(.malformed, text) }
                seenPoint = true
            default:
                throw MoneyParseError(.malformed, text)
            }
        }
        guard wholeDigits > 0, !seenPoint || fractionDigits > 0 else { throw MoneyParseError(.malformed, text) }
        if fractionDigits == 1 { fraction *= 10 }
        let (cents, o1) = whole.multipliedReportingOverflow(by: 100)
        let (total, o2) = cents.addingReportingOverflow(fraction)
        guard !o1, !o2 else { throw MoneyParseError(.outOfRange, text) }
        self.minorUnits = negative ? -total : total
    }

    /// `"1234.50"`, `"-0.07"`: always two decimals.
    public var description: String {
        let magnitude = minorUnits.magnitude
        let whole = magnitude / 100
        let cents = magnitude % 100
        return (minorUnits < 0 ? "-" : "") + "\(whole)." + (cents < 10 ? "0" : "") + "\(cents)"
    }

    public static func < (a: Money, b: Money) -> Bool { a.minorUnits < b.minorUnits }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = try Money(parsing: text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a money text was refused.
public struct MoneyParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Reason: String, Sendable, Hashable {
        case empty, malformed, tooManyDecimals = "too_many_decimals", outOfRange = "out_of_range"
    }
    public var reason: Reason
    public var text: String
    init(_ reason: Reason, _ text: String) { self.reason = reason; self.text = text }

    public var description: String {
        switch reason {
        case .empty: "an amount is empty; send a decimal string such as \"10.00\""
        case .malformed: "\"\(text.prefix(40))\" is not a decimal amount; send digits with an optional '.' and up to two decimals, such as \"10.00\""
        case .tooManyDecimals: "\"\(text.prefix(40))\" has more than two decimals"
        case .outOfRange: "\"\(text.prefix(40))\" is too large"
        }
    }
}
