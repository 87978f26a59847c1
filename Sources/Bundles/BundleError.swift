/// An import or export failure, with a message that names the bad part.
public struct BundleError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
