import Logging
import MetadataIndex
import PostgresNIO

/// A failed PostgreSQL call: the server's SQLSTATE and message when it answered, else what
/// the client saw, and the statement (abridged). Never the bind values.
public struct PostgresFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// SQLSTATE (`40P01` a deadlock, `57P01` an admin shutdown), nil when the server said nothing.
    public let sqlState: String?
    public let message: String
    public let statement: String

    init(_ error: PSQLError) {
        sqlState = error.serverInfo?[.sqlState]
        message = error.serverInfo?[.message] ?? error.code.description
        statement = String((error.query?.sql ?? "").prefix(120))
    }

    public var description: String {
        let state = sqlState.map { " (SQLSTATE \($0))" } ?? ""
        return statement.isEmpty ? "\(message)\(state)" : "\(message)\(state) in: \(statement)"
    }

    /// A conflict between concurrent transactions that a retry resolves.
    var isTransient: Bool { sqlState == "40P01" || sqlState == "40001" }
}

/// A row the index cannot read back (a digest that does not parse, a wrong column type).
struct RowDecodingFailure: Error, Sendable, CustomStringConvertible {
    let description: String
}

extension PostgresConnection {
    /// Runs `query` and maps every row.
    func rows<T>(_ query: PostgresQuery, logger: Logger, _ map: (PostgresRow) throws -> T) async throws -> [T] {
        var out: [T] = []
        for try await row in try await self.query(query, logger: logger) {
            do {
                out.append(try map(row))
            } catch {
                throw RowDecodingFailure(description: "\(error) in: \(query.sql.prefix(120))")
            }
        }
        return out
    }

    /// Runs a statement whose rows, if any, do not matter.
    func run(_ query: PostgresQuery, logger: Logger) async throws {
        for try await _ in try await self.query(query, logger: logger) {}
    }

    /// Runs `body` in a transaction: committed when it returns and `commit` is true, rolled
    /// back when it throws or `commit` is false (a dry run).
    func transaction<T>(commit: Bool = true, logger: Logger, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await run("BEGIN", logger: logger)
        let value: T
        do {
            value = try await body(self)
        } catch {
            // A broken connection fails this too; the pool then drops it.
            try? await run("ROLLBACK", logger: logger)
            throw error
        }
        try await run(commit ? "COMMIT" : "ROLLBACK", logger: logger)
        return value
    }
}
