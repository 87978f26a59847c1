import CSQLite
import Foundation

/// A value bound to or read from a SQLite statement.
public enum SQLValue: Sendable, Equatable {
    case integer(Int64)
    case text(String)
    case null
}

/// One SQLite connection, serialized by a lock, with a prepared-statement cache.
///
/// SQLite calls take microseconds, so callers use it directly from async code; the lock makes
/// the connection safe to share. WAL mode lets a `seed` or `import` process write while a
/// server reads the same file.
final class SQLiteConnection: @unchecked Sendable {
    private let handle: OpaquePointer
    private let lock = NSLock()
    private var statements: [String: OpaquePointer] = [:]
    private static let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

    init(path: String) throws(IndexError) {
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        guard sqlite3_open_v2(path, &db, flags, nil) == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let db { sqlite3_close(db) }
            throw IndexError(.io, "open \(path): \(message)")
        }
        handle = db
        sqlite3_busy_timeout(db, 10_000)
        try execute("PRAGMA journal_mode=WAL")
        try execute("PRAGMA synchronous=NORMAL")
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    /// Runs one or more statements with no parameters and no results.
    func execute(_ sql: String) throws(IndexError) {
        lock.lock()
        defer { lock.unlock() }
        try executeLocked(sql)
    }

    private func executeLocked(_ sql: String) throws(IndexError) {
        var error: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(handle, sql, nil, nil, &error) == SQLITE_OK else {
            let message = error.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(error)
            throw IndexError(.io, "\(message) in: \(sql.prefix(120))")
        }
    }

    /// Runs a statement, calling `row` for each result row.
    func query(_ sql: String, _ bindings: [SQLValue] = [], row: (Row) throws -> Void = { _ in }) throws(IndexError) {
        lock.lock()
        defer { lock.unlock() }
        try queryLocked(sql, bindings, row: row)
    }

    private func queryLocked(_ sql: String, _ bindings: [SQLValue], row: (Row) throws -> Void) throws(IndexError) {
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
            guard rc == SQLITE_ROW else {
                throw IndexError(.io, "\(String(cString: sqlite3_errmsg(handle))) in: \(sql.prefix(120))")
            }
            do {
                try row(Row(statement: statement))
            } catch let error as IndexError {
                throw error
            } catch {
                throw IndexError(.io, "\(error)")
            }
        }
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`, rolling back if it throws. With
    /// `commit: false` it always rolls back: a dry run that sees its own writes.
    func transaction<T>(commit: Bool = true, _ body: (Transaction) throws -> T) throws(IndexError) -> T {
        lock.lock()
        defer { lock.unlock() }
        try executeLocked("BEGIN IMMEDIATE")
        do {
            let result = try body(Transaction(connection: self))
            try executeLocked(commit ? "COMMIT" : "ROLLBACK")
            return result
        } catch {
            try? executeLocked("ROLLBACK")
            if let error = error as? IndexError { throw error }
            throw IndexError(.io, "\(error)")
        }
    }

    /// Statement access while the connection's lock is already held by a transaction.
    struct Transaction {
        let connection: SQLiteConnection
        func run(_ sql: String, _ bindings: [SQLValue] = [], row: (Row) throws -> Void = { _ in }) throws {
            try connection.queryLocked(sql, bindings, row: row)
        }
        func execute(_ sql: String) throws { try connection.executeLocked(sql) }
        var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(connection.handle) }
    }

    private func prepared(_ sql: String) throws(IndexError) -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
            let statement
        else {
            throw IndexError(.io, "\(String(cString: sqlite3_errmsg(handle))) in: \(sql.prefix(120))")
        }
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
