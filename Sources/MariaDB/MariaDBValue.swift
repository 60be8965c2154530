/// An exact decimal number as MariaDB's DECIMAL holds it: an unscaled integer and a scale.
///
/// DECIMAL(19,2)'s extremes (±99,999,999,999,999,999.99) exceed `Int64` cents, so the driver keeps
/// the unscaled value in `Int128` and converts to `Int64` minor units only where asked, failing loudly
/// on overflow. Never touches floating point.
public struct SQLDecimal: Sendable, Hashable, CustomStringConvertible {
    public var unscaled: Int128
    public var scale: Int

    public init(unscaled: Int128, scale: Int) {
        self.unscaled = unscaled
        self.scale = scale
    }

    /// Money in minor units, as a scale-2 decimal.
    public init(minorUnits: Int64) { self.init(unscaled: Int128(minorUnits), scale: 2) }

    /// Parses the server's text form (`-123.4500`); returns nil for anything else.
    public init?(_ text: some StringProtocol) {
        var unscaled: Int128 = 0
        var scale = 0
        var seenPoint = false
        var negative = false
        var digits = 0
        for (i, byte) in text.utf8.enumerated() {
            switch byte {
            case UInt8(ascii: "-") where i == 0: negative = true
            case UInt8(ascii: "+") where i == 0: break
            case UInt8(ascii: "."):
                if seenPoint { return nil }
                seenPoint = true
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                digits += 1
                guard digits <= 38 else { return nil }
                unscaled = unscaled * 10 + Int128(byte - UInt8(ascii: "0"))
                if seenPoint { scale += 1 }
            default: return nil
            }
        }
        guard digits > 0 else { return nil }
        self.init(unscaled: negative ? -unscaled : unscaled, scale: scale)
    }

    /// The exact text form, with `scale` decimals.
    public var description: String {
        let magnitude = unscaled.magnitude
        var digits = String(magnitude)
        if scale > 0 {
            if digits.count <= scale { digits = String(repeating: "0", count: scale - digits.count + 1) + digits }
            digits.insert(".", at: digits.index(digits.endIndex, offsetBy: -scale))
        }
        return (unscaled < 0 ? "-" : "") + digits
    }

    /// The value in minor units (scale 2), exactly; throws if it has finer digits or does not fit `Int64`.
    public func minorUnits() throws(MariaDBValueError) -> Int64 {
        var value = unscaled
        var s = scale
        while s > 2 {
            guard value % 10 == 0 else { throw MariaDBValueError("decimal \(self) has more than two decimals") }
            value /= 10
            s -= 1
        }
        while s < 2 {
            value *= 10
            s += 1
        }
        guard let result = Int64(exactly: value) else { throw MariaDBValueError("decimal \(self) does not fit in Int64 minor units") }
        return result
    }
}

/// A calendar date (DATE).
public struct SQLDate: Sendable, Hashable, CustomStringConvertible {
    public var year: Int, month: Int, day: Int
    public init(year: Int, month: Int, day: Int) { self.year = year; self.month = month; self.day = day }
    public var description: String { pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2) }
}

/// A date and time with microseconds (DATETIME(6) / TIMESTAMP(6)); no time zone, like the column.
public struct SQLDateTime: Sendable, Hashable, CustomStringConvertible {
    public var date: SQLDate
    public var hour: Int, minute: Int, second: Int, microsecond: Int
    public init(date: SQLDate, hour: Int, minute: Int, second: Int, microsecond: Int = 0) {
        self.date = date; self.hour = hour; self.minute = minute; self.second = second; self.microsecond = microsecond
    }

    /// From seconds and microseconds since the Unix epoch, in UTC.
    public init(unixMicroseconds: Int64) {
        let (secs, micros) = unixMicroseconds.quotientAndRemainder(dividingBy: 1_000_000)
        var s = secs
        var us = micros
        if us < 0 { us += 1_000_000; s -= 1 }
        let (days, rem) = s.quotientAndRemainder(dividingBy: 86_400)
        var d = days
        var r = rem
        if r < 0 { r += 86_400; d -= 1 }
        // Howard Hinnant's civil_from_days.
        let z = d + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        self.init(date: SQLDate(year: Int(year), month: Int(month), day: Int(day)),
                  hour: Int(r / 3600), minute: Int(r % 3600 / 60), second: Int(r % 60), microsecond: Int(us))
    }

    /// Microseconds since the Unix epoch, reading the value as UTC.
    public var unixMicroseconds: Int64 {
        let y = Int64(date.month <= 2 ? date.year - 1 : date.year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let m = Int64(date.month)
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + Int64(date.day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let seconds = days * 86_400 + Int64(hour) * 3600 + Int64(minute) * 60 + Int64(second)
        return seconds * 1_000_000 + Int64(microsecond)
    }

    public var description: String {
        "\(date) " + pad(hour, 2) + ":" + pad(minute, 2) + ":" + pad(second, 2) + "." + pad(microsecond, 6)
    }
}

private func pad(_ value: Int, _ width: Int) -> String {
    let s = String(value)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}

/// A value sent to or read from the server.
public enum MariaDBValue: Sendable, Hashable {
    case null
    case int(Int64)
    case uint(UInt64)
    case bool(Bool)
    case string(String)
    case bytes([UInt8])
    case decimal(SQLDecimal)
    case date(SQLDate)
    case dateTime(SQLDateTime)
    /// FLOAT/DOUBLE columns. Never used for money.
    case double(Double)

    /// Money in minor units, sent as an exact DECIMAL with two decimals.
    public static func money(minorUnits: Int64) -> MariaDBValue { .decimal(SQLDecimal(minorUnits: minorUnits)) }
}

/// A value that cannot be decoded as asked.
public struct MariaDBValueError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One result row. Columns are looked up by position or by name.
public struct MariaDBRow: Sendable {
    public let columns: [String]
    public let values: [MariaDBValue]

    public init(columns: [String], values: [MariaDBValue]) {
        self.columns = columns
        self.values = values
    }

    public subscript(_ index: Int) -> MariaDBValue { values[index] }

    public subscript(_ name: String) -> MariaDBValue {
        guard let i = columns.firstIndex(of: name) else { return .null }
        return values[i]
    }

    private func value(_ column: String) throws(MariaDBValueError) -> MariaDBValue {
        guard let i = columns.firstIndex(of: column) else { throw MariaDBValueError("no column \(column) in the result") }
        return values[i]
    }

    public func int64(_ column: String) throws(MariaDBValueError) -> Int64 {
        switch try value(column) {
        case .int(let v): return v
        case .uint(let v):
            guard let r = Int64(exactly: v) else { throw MariaDBValueError("column \(column) does not fit Int64") }
            return r
        case .bool(let b): return b ? 1 : 0
        case .decimal(let d) where d.scale == 0:
            guard let r = Int64(exactly: d.unscaled) else { throw MariaDBValueError("column \(column) does not fit Int64") }
            return r
        case .string(let s):
            guard let r = Int64(s) else { throw MariaDBValueError("column \(column) is not an integer") }
            return r
        default: throw MariaDBValueError("column \(column) is not an integer")
        }
    }

    public func optionalInt64(_ column: String) throws(MariaDBValueError) -> Int64? {
        if case .null = try value(column) { return nil }
        return try int64(column)
    }

    public func string(_ column: String) throws(MariaDBValueError) -> String {
        switch try value(column) {
        case .string(let s): return s
        case .bytes(let b): return String(decoding: b, as: UTF8.self)
        case .int(let v): return String(v)
        case .decimal(let d): return d.description
        default: throw MariaDBValueError("column \(column) is not text")
        }
    }

    public func optionalString(_ column: String) throws(MariaDBValueError) -> String? {
        if case .null = try value(column) { return nil }
        return try string(column)
    }

    public func bool(_ column: String) throws(MariaDBValueError) -> Bool {
        switch try value(column) {
        case .bool(let b): return b
        case .int(let v): return v != 0
        case .uint(let v): return v != 0
        default: throw MariaDBValueError("column \(column) is not a boolean")
        }
    }

    public func decimal(_ column: String) throws(MariaDBValueError) -> SQLDecimal {
        switch try value(column) {
        case .decimal(let d): return d
        case .int(let v): return SQLDecimal(unscaled: Int128(v), scale: 0)
        case .string(let s):
            guard let d = SQLDecimal(s) else { throw MariaDBValueError("column \(column) is not a decimal") }
            return d
        default: throw MariaDBValueError("column \(column) is not a decimal")
        }
    }

    /// A DECIMAL column as money in minor units, exactly.
    public func minorUnits(_ column: String) throws(MariaDBValueError) -> Int64 {
        try decimal(column).minorUnits()
    }

    public func dateTime(_ column: String) throws(MariaDBValueError) -> SQLDateTime {
        switch try value(column) {
        case .dateTime(let d): return d
        case .date(let d): return SQLDateTime(date: d, hour: 0, minute: 0, second: 0)
        default: throw MariaDBValueError("column \(column) is not a date-time")
        }
    }

    public func date(_ column: String) throws(MariaDBValueError) -> SQLDate {
        switch try value(column) {
        case .date(let d): return d
        case .dateTime(let d): return d.date
        default: throw MariaDBValueError("column \(column) is not a date")
        }
    }
}

/// What a statement returned.
public struct MariaDBResult: Sendable {
    public var columns: [String]
    public var rows: [MariaDBRow]
    public var affectedRows: UInt64
    public var lastInsertID: UInt64

    public init(columns: [String] = [], rows: [MariaDBRow] = [], affectedRows: UInt64 = 0, lastInsertID: UInt64 = 0) {
        self.columns = columns
        self.rows = rows
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
    }
}

/// An XA transaction id: global id, branch qualifier and format id. Both ids are sent as hex literals,
/// so any bytes are safe.
public struct XID: Sendable, Hashable, CustomStringConvertible {
    public var gtrid: String
    public var bqual: String
    public var formatID: Int32

    public init(gtrid: String, bqual: String = "", formatID: Int32 = 1) {
        self.gtrid = gtrid
        self.bqual = bqual
        self.formatID = formatID
    }

    /// `X'…',X'…',n` as the XA verbs take it.
    var sqlLiteral: String {
        "X'\(hex(gtrid))',X'\(hex(bqual))',\(formatID)"
    }

    public var description: String { "xid(\(gtrid), \(bqual), \(formatID))" }

    private func hex(_ s: String) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in s.utf8 { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Transaction isolation levels.
public enum IsolationLevel: String, Sendable, Hashable {
    case readUncommitted = "READ UNCOMMITTED"
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}
