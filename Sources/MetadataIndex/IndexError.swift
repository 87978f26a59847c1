import OCI

/// Errors from the metadata index.
///
/// Like swift-nio's `FileSystemError`: a growable code, a message that says what failed, the
/// error it wraps (`cause`, e.g. a `SQLiteFailure` with SQLite's code, message and the
/// statement) and where in this module it was thrown (`location`).
public struct IndexError: ErrorWithOrigin, Sendable {
    /// A struct over a private enum, so codes can be added without breaking a `switch`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable { case io, schema, notFound, closed, unavailable }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// The database failed (I/O, corruption, locked past the busy timeout).
        public static let io = Code(.io)
        /// The schema is newer than this program, or a migration failed.
        public static let schema = Code(.schema)
        /// A row the call needs is not there (pinning an uncached digest, say).
        public static let notFound = Code(.notFound)
        /// The store was shut down.
        public static let closed = Code(.closed)
        /// The database cannot be reached now (a server index that is down or out of
        /// connections); a later call may succeed.
        public static let unavailable = Code(.unavailable)

        public var description: String {
            switch base {
            case .io: "index error"
            case .schema: "schema error"
            case .notFound: "not found"
            case .closed: "index closed"
            case .unavailable: "index unavailable"
            }
        }
    }

    /// Where in the source an error was thrown.
    public struct Location: Sendable, Hashable, CustomStringConvertible {
        public var function: String
        public var file: String
        public var line: Int
        public init(function: String, file: String, line: Int) {
            self.function = function
            self.file = file
            self.line = line
        }
        public var description: String { "\(function) (\(file):\(line))" }
    }

    public var code: Code
    /// What went wrong, for people.
    public var message: String
    /// The error this one wraps, if any.
    public var cause: (any Error & Sendable)?
    public var location: Location

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil,
                function: String = #function, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.cause = cause
        self.location = Location(function: function, file: file, line: line)
    }

    /// One line: the code, the message, and the cause's own text.
    public var description: String {
        guard let cause else { return "\(code): \(message)" }
        return "\(code): \(message): \(cause)"
    }

    /// Where it was raised; the cause is already in `description`.
    public var origin: ErrorOrigin { ErrorOrigin(file: location.file, line: location.line) }
}

/// A failed SQLite call: the result code, SQLite's message, and the statement (abridged).
public struct SQLiteFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// The extended result code (`SQLITE_BUSY` is 5, `SQLITE_FULL` 13, `SQLITE_CORRUPT` 11).
    public let code: Int32
    public let message: String
    /// The statement or operation that failed, at most 120 characters of it.
    public let statement: String

    public init(code: Int32, message: String, statement: String) {
        self.code = code
        self.message = message
        self.statement = String(statement.prefix(120))
    }

    public var description: String { "\(message) (SQLite code \(code)) in: \(statement)" }
}
