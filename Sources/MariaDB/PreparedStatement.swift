import CMariaDB

/// A server-side prepared statement and the client memory reused by its executions: result binds,
/// their buffers (grown when a longer value arrives) and the column metadata. Lives on its
/// connection's thread only.
final class PreparedStatement {
    let stmt: UnsafeMutablePointer<MYSQL_STMT>
    let parameterCount: Int
    private(set) var columns: [String] = []
    private(set) var kinds: [ColumnKind] = []
    private var results: [MYSQL_BIND] = []
    private var buffers: [UnsafeMutableRawPointer] = []
    private var capacities: [Int] = []
    private var lengths: UnsafeMutablePointer<UInt>?
    private var nulls: UnsafeMutablePointer<my_bool>?
    var parameters: [MYSQL_BIND]

    init(stmt: UnsafeMutablePointer<MYSQL_STMT>) {
        self.stmt = stmt
        self.parameterCount = Int(mysql_stmt_param_count(stmt))
        self.parameters = [MYSQL_BIND](repeating: MYSQL_BIND(), count: parameterCount)
        // Lets store_result report each column's longest value, so buffers fit without truncation.
        var on: my_bool = 1
        mysql_stmt_attr_set(stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &on)
    }

    deinit {
        freeResultMemory()
        mysql_stmt_close(stmt)
    }

    private func freeResultMemory() {
        buffers.forEach { $0.deallocate() }
        buffers.removeAll()
        capacities.removeAll()
        lengths?.deallocate()
        nulls?.deallocate()
        lengths = nil
        nulls = nil
    }

    /// After `mysql_stmt_store_result`: binds a buffer large enough for every column's values.
    func bindResults() -> Bool {
        let count = Int(stmt.pointee.field_count)
        guard let fields = stmt.pointee.fields else { return false }
        if count != columns.count {
            freeResultMemory()
            columns = (0..<count).map { String(cString: fields[$0].name) }
            kinds = Array(repeating: .other, count: count)
            results = [MYSQL_BIND](repeating: MYSQL_BIND(), count: count)
            lengths = .allocate(capacity: max(count, 1))
            nulls = .allocate(capacity: max(count, 1))
            capacities = Array(repeating: 0, count: count)
            buffers = (0..<count).map { _ in UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16) }
            capacities = Array(repeating: 16, count: count)
        }
        for i in 0..<count {
            let field = fields[i]
            let kind = ColumnKind(field)
            kinds[i] = kind
            var bind = MYSQL_BIND()
            let needed: Int
            switch kind {
            case .signed, .unsigned:
                needed = 8
                bind.buffer_type = MYSQL_TYPE_LONGLONG
                bind.is_unsigned = kind == .unsigned ? 1 : 0
            case .floating:
                needed = 8
                bind.buffer_type = MYSQL_TYPE_DOUBLE
            case .date, .dateTime:
                needed = MemoryLayout<MYSQL_TIME>.size
                bind.buffer_type = field.type
            case .decimal, .text, .other:
                needed = Int(field.max_length) + 1
                bind.buffer_type = MYSQL_TYPE_STRING
            case .binary:
                needed = Int(field.max_length) + 1
                bind.buffer_type = MYSQL_TYPE_BLOB
            }
            if capacities[i] < needed {
                buffers[i].deallocate()
                let capacity = max(needed, capacities[i] * 2)
                buffers[i] = .allocate(byteCount: capacity, alignment: 16)
                capacities[i] = capacity
            }
            bind.buffer = buffers[i]
            bind.buffer_length = UInt(capacities[i])
            bind.length = lengths! + i
            bind.is_null = nulls! + i
            results[i] = bind
        }
        return results.withUnsafeMutableBufferPointer { mysql_stmt_bind_result(stmt, $0.baseAddress) } == 0
    }

    /// The value of column `index` of the fetched row.
    func value(_ index: Int) throws(MariaDBValueError) -> MariaDBValue {
        if nulls![index] != 0 { return .null }
        let buffer = buffers[index]
        switch kinds[index] {
        case .signed:
            return .int(buffer.load(as: Int64.self))
        case .unsigned:
            let v = buffer.load(as: UInt64.self)
            return Int64(exactly: v).map(MariaDBValue.int) ?? .uint(v)
        case .floating:
            return .double(buffer.load(as: Double.self))
        case .date:
            let t = buffer.load(as: MYSQL_TIME.self)
            return .date(SQLDate(year: Int(t.year), month: Int(t.month), day: Int(t.day)))
        case .dateTime:
            let t = buffer.load(as: MYSQL_TIME.self)
            return .dateTime(SQLDateTime(date: SQLDate(year: Int(t.year), month: Int(t.month), day: Int(t.day)),
                                         hour: Int(t.hour), minute: Int(t.minute), second: Int(t.second), microsecond: Int(t.second_part)))
        case .decimal, .text, .binary, .other:
            return try kinds[index].decodeText(UnsafeRawBufferPointer(start: buffer, count: Int(lengths![index])))
        }
    }
}
