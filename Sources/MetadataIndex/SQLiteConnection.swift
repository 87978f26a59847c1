import CSQLite

/// A value bound to or read from a SQLite statement.
public enum SQLValue: Sendable, Equatable {
    case integer(Int64)
    case text(String)
    case null
}

/// One SQLite connection with a prepared-statement cache. It has no lock: it belongs to one
/// `ConnectionThread`, which runs the jobs given to it one at a time.
final class SQLiteConnection {
    private let handle: OpaquePointer
    private var statements: [String: OpaquePointer] = [:]
    private static let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

    /// Opens `path`. A `readOnly` connection refuses writes (`query_only`); the file and its
    /// WAL must exist already, which the writer's migrations ensure.
    init(path: String, readOnly: Bool = false) throws(IndexError) {
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let db { sqlite3_close(db) }
            throw IndexError(.io, "cannot open the index at \(path)",
                             cause: SQLiteFailure(code: rc, message: message, statement: "open"))
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        // Another process (a `seed`, `import` or `gc` beside a server) may hold the write lock.
        sqlite3_busy_timeout(db, 10_000)
        if readOnly {
            try execute("PRAGMA query_only=1")
        } else {
            try execute("PRAGMA journal_mode=WAL")
            try execute("PRAGMA synchronous=NORMAL")
        }
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    private func failure(_ rc: Int32, _ sql: String, function: String = #function) -> IndexError {
        IndexError(.io, "an index statement failed",
                   cause: SQLiteFailure(code: rc, message: String(cString: sqlite3_errmsg(handle)), statement: sql),
                   function: function)
    }

    /// Runs one or more statements with no parameters and no results.
    func execute(_ sql: String) throws(IndexError) {
        var error: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &error)
        guard rc == SQLITE_OK else {
            let message = error.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(error)
            throw IndexError(.io, "an index statement failed", cause: SQLiteFailure(code: rc, message: message, statement: sql))
        }
    }

    /// Runs a statement, calling `row` for each result row.
    func query(_ sql: String, _ bindings: [SQLValue] = [], row: (Row) throws -> Void = { _ in }) throws(IndexError) {
        let statement = try prepared(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (i, value) in bindings.enumerated() {
            let index = Int32(i + 1)
            switch value {
            case .integer(let v): sqlite3_bind_int64(statement, index, v)
            case .text(let v): sqlite3_bind_text(statement, index, v, -1, Self.transient)
            case .null: sqlite3_bind_null(statement, index)
            }
        }
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw failure(rc, sql) }
            do {
                try row(Row(statement: statement))
            } catch let error as IndexError {
                throw error
            } catch {
                throw IndexError(.io, "reading a row failed", cause: error as? any Error & Sendable)
            }
        }
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`, rolling back if it throws. With
    /// `commit: false` it always rolls back: a dry run that sees its own writes.
    func transaction<T>(commit: Bool = true, _ body: (Transaction) throws -> T) throws(IndexError) -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body(Transaction(connection: self))
            try execute(commit ? "COMMIT" : "ROLLBACK")
            return result
        } catch {
            try? execute("ROLLBACK")
            if let error = error as? IndexError { throw error }
            throw IndexError(.io, "an index transaction failed", cause: error as? any Error & Sendable)
        }
    }

    /// Statement access inside a transaction.
    struct Transaction {
        let connection: SQLiteConnection
        func run(_ sql: String, _ bindings: [SQLValue] = [], row: (Row) throws -> Void = { _ in }) throws {
            try connection.query(sql, bindings, row: row)
        }
        func execute(_ sql: String) throws { try connection.execute(sql) }
        var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(connection.handle) }
        /// Rows the last INSERT, UPDATE or DELETE changed.
        var changes: Int { Int(sqlite3_changes(connection.handle)) }
    }

    private func prepared(_ sql: String) throws(IndexError) -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard rc == SQLITE_OK, let statement else { throw failure(rc, sql) }
        statements[sql] = statement
        return statement
    }

    /// A result row; valid only inside the `row` callback.
    struct Row {
        let statement: OpaquePointer
        func int(_ i: Int32) -> Int64 { sqlite3_column_int64(statement, i) }
        func optionalInt(_ i: Int32) -> Int64? {
            sqlite3_column_type(statement, i) == SQLITE_NULL ? nil : sqlite3_column_int64(statement, i)
        }
        func text(_ i: Int32) -> String {
            sqlite3_column_text(statement, i).map { String(cString: $0) } ?? ""
        }
        func optionalText(_ i: Int32) -> String? {
            sqlite3_column_text(statement, i).map { String(cString: $0) }
        }
    }
}
