/// Where an error was raised, and what it wrapped: every module's error carries one, so a
/// log line can say which call failed and why, not only what the client was told.
///
/// Modelled on swift-nio's `FileSystemError`, which keeps the system call, the source
/// location and the underlying error beside its code.
public struct ErrorOrigin: Sendable, CustomStringConvertible {
    /// The file and line that raised the error (`#fileID`, `#line`).
    public let file: String
    public let line: Int
    /// The error this one wraps: a transport failure, an SQLite code, an `errno`.
    public let cause: (any Error)?

    public init(cause: (any Error)? = nil, file: String = #fileID, line: Int = #line) {
        self.file = file
        self.line = line
        self.cause = cause
    }

    /// "at File.swift:12", then the cause chain, one "caused by" each.
    public var description: String {
        var text = "at \(file):\(line)"
        if let cause {
            // The cause's own chain when it has one (`debugDescription`).
            text += ", caused by \(String(reflecting: cause))"
        }
        return text
    }
}

/// An error with an `ErrorOrigin`: its `debugDescription` is the message, where it was
/// raised and the whole chain of causes, for logs (the wire gets only the message).
public protocol ErrorWithOrigin: Error, CustomStringConvertible, CustomDebugStringConvertible {
    var origin: ErrorOrigin { get }
}

extension ErrorWithOrigin {
    public var debugDescription: String { "\(description) (\(origin))" }
}
