import CMariaDB

/// How the driver reads a column, chosen from its field type.
enum ColumnKind: Sendable {
    case signed, unsigned, floating, decimal, date, dateTime, text, binary, other

    init(_ field: MYSQL_FIELD) {
        let unsigned = field.flags & UInt32(UNSIGNED_FLAG) != 0
        switch field.type {
        case MYSQL_TYPE_TINY, MYSQL_TYPE_SHORT, MYSQL_TYPE_LONG, MYSQL_TYPE_INT24, MYSQL_TYPE_LONGLONG, MYSQL_TYPE_YEAR:
            self = unsigned ? .unsigned : .signed
        case MYSQL_TYPE_FLOAT, MYSQL_TYPE_DOUBLE:
            self = .floating
        case MYSQL_TYPE_DECIMAL, MYSQL_TYPE_NEWDECIMAL:
            self = .decimal
        case MYSQL_TYPE_DATE, MYSQL_TYPE_NEWDATE:
            self = .date
        case MYSQL_TYPE_DATETIME, MYSQL_TYPE_TIMESTAMP:
            self = .dateTime
        case MYSQL_TYPE_VARCHAR, MYSQL_TYPE_VAR_STRING, MYSQL_TYPE_STRING, MYSQL_TYPE_ENUM, MYSQL_TYPE_SET,
             MYSQL_TYPE_TINY_BLOB, MYSQL_TYPE_MEDIUM_BLOB, MYSQL_TYPE_LONG_BLOB, MYSQL_TYPE_BLOB, MYSQL_TYPE_JSON:
            // charset 63 is "binary": VARBINARY/BLOB columns.
            self = field.charsetnr == 63 ? .binary : .text
        default:
            self = .other
        }
    }

    /// Decodes the text protocol's form of a value.
    func decodeText(_ bytes: UnsafeRawBufferPointer) throws(MariaDBValueError) -> MariaDBValue {
        let text = String(decoding: bytes, as: UTF8.self)
        switch self {
        case .signed:
            guard let v = Int64(text) else { throw MariaDBValueError("\"\(text)\" is not an integer") }
            return .int(v)
        case .unsigned:
            guard let v = UInt64(text) else { throw MariaDBValueError("not an unsigned integer") }
            return Int64(exactly: v).map(MariaDBValue.int) ?? .uint(v)
        case .floating:
            guard let v = Double(text) else { throw MariaDBValueError("not a number") }
            return .double(v)
        case .decimal:
            guard let d = SQLDecimal(text) else { throw MariaDBValueError("not a decimal") }
            return .decimal(d)
        case .date:
            guard let d = parseDate(text) else { throw MariaDBValueError("not a date") }
            return .date(d)
        case .dateTime:
            guard let d = parseDateTime(text) else { throw MariaDBValueError("not a date-time") }
            return .dateTime(d)
        case .binary:
            return .bytes(Array(bytes))
        case .text, .other:
            return .string(text)
        }
    }
}

private func parseDate(_ text: String) -> SQLDate? {
    let parts = text.split(separator: "-")
    guard parts.count == 3, let y = Int(parts[0]), let m = Int(parts[1]), let d = Int(parts[2]) else { return nil }
    return SQLDate(year: y, month: m, day: d)
}

private func parseDateTime(_ text: String) -> SQLDateTime? {
    let halves = text.split(separator: " ")
    guard let date = halves.first.flatMap({ parseDate(String($0)) }) else { return nil }
    guard halves.count == 2 else { return SQLDateTime(date: date, hour: 0, minute: 0, second: 0) }
    let timeAndFraction = halves[1].split(separator: ".")
    let hms = timeAndFraction[0].split(separator: ":")
    guard hms.count == 3, let h = Int(hms[0]), let mi = Int(hms[1]), let s = Int(hms[2]) else { return nil }
    var micros = 0
    if timeAndFraction.count == 2 {
        let digits = String(timeAndFraction[1].prefix(6))
        guard let f = Int(digits) else { return nil }
        micros = f
        for _ in digits.count..<6 { micros *= 10 }
    }
    return SQLDateTime(date: date, hour: h, minute: mi, second: s, microsecond: micros)
}

/// Memory that parameter binds point into, freed after the statement ran.
struct BindStorage {
    private var allocations: [UnsafeMutableRawPointer] = []

    mutating func release() {
        for p in allocations { p.deallocate() }
        allocations.removeAll()
    }

    private mutating func allocate(_ size: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16)
        allocations.append(p)
        return p
    }

    private mutating func copy(_ bytes: some Collection<UInt8>, into bind: inout MYSQL_BIND, type: enum_field_types) {
        let p = allocate(bytes.count)
        p.copyMemory(from: Array(bytes), byteCount: bytes.count)
        bind.buffer_type = type
        bind.buffer = p
        bind.buffer_length = UInt(bytes.count)
        let length = allocate(MemoryLayout<UInt>.size).bindMemory(to: UInt.self, capacity: 1)
        length.pointee = UInt(bytes.count)
        bind.length = length
    }

    private mutating func time(_ t: MYSQL_TIME, into bind: inout MYSQL_BIND, type: enum_field_types) {
        let p = allocate(MemoryLayout<MYSQL_TIME>.size)
        p.storeBytes(of: t, as: MYSQL_TIME.self)
        bind.buffer_type = type
        bind.buffer = p
        bind.buffer_length = UInt(MemoryLayout<MYSQL_TIME>.size)
    }

    mutating func bindParameter(_ bind: inout MYSQL_BIND, _ value: MariaDBValue) throws(MariaDBValueError) {
        switch value {
        case .null:
            bind.buffer_type = MYSQL_TYPE_NULL
        case .int(let v):
            let p = allocate(8)
            p.storeBytes(of: v, as: Int64.self)
            bind.buffer_type = MYSQL_TYPE_LONGLONG
            bind.buffer = p
        case .uint(let v):
            let p = allocate(8)
            p.storeBytes(of: v, as: UInt64.self)
            bind.buffer_type = MYSQL_TYPE_LONGLONG
            bind.buffer = p
            bind.is_unsigned = 1
        case .bool(let b):
            let p = allocate(1)
            p.storeBytes(of: b ? 1 : 0, as: Int8.self)
            bind.buffer_type = MYSQL_TYPE_TINY
            bind.buffer = p
        case .double(let d):
            let p = allocate(8)
            p.storeBytes(of: d, as: Double.self)
            bind.buffer_type = MYSQL_TYPE_DOUBLE
            bind.buffer = p
        case .string(let s):
            copy(s.utf8, into: &bind, type: MYSQL_TYPE_STRING)
        case .bytes(let b):
            copy(b, into: &bind, type: MYSQL_TYPE_BLOB)
        case .decimal(let d):
            copy(d.description.utf8, into: &bind, type: MYSQL_TYPE_NEWDECIMAL)
        case .date(let d):
            var t = MYSQL_TIME()
            t.year = UInt32(d.year); t.month = UInt32(d.month); t.day = UInt32(d.day)
            t.time_type = MYSQL_TIMESTAMP_DATE
            time(t, into: &bind, type: MYSQL_TYPE_DATE)
        case .dateTime(let d):
            var t = MYSQL_TIME()
            t.year = UInt32(d.date.year); t.month = UInt32(d.date.month); t.day = UInt32(d.date.day)
            t.hour = UInt32(d.hour); t.minute = UInt32(d.minute); t.second = UInt32(d.second)
            t.second_part = UInt(d.microsecond)
            t.time_type = MYSQL_TIMESTAMP_DATETIME
            time(t, into: &bind, type: MYSQL_TYPE_DATETIME)
        }
    }
}
