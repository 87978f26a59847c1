/// Errors from parsing OCI values and documents.
///
/// A struct over a growable code, so that new cases do not break callers that switch on it.
public struct OCIError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of value was rejected.
    public struct Code: Hashable, Sendable {
        let raw: String
        public static let invalidDigest = Code(raw: "invalid digest")
        public static let invalidName = Code(raw: "invalid repository name")
        public static let invalidTag = Code(raw: "invalid tag")
        public static let invalidReference = Code(raw: "invalid reference")
        public static let invalidPattern = Code(raw: "invalid repository pattern")
        public static let invalidPlatform = Code(raw: "invalid platform")
        public static let invalidManifest = Code(raw: "invalid manifest")
        public static let digestMismatch = Code(raw: "digest mismatch")
        public static let sizeMismatch = Code(raw: "size mismatch")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.raw): \(message)" }
}
