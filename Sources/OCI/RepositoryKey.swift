/// A repository on a particular upstream: the unit every cache key is scoped by.
///
/// The same name on two upstreams (`docker.io/library/alpine` and `ghcr.io/library/alpine`)
/// are two repositories and never share tags or access rights.
public struct RepositoryKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The upstream's name, e.g. `docker.io` or `ghcr.io`.
    public let upstream: String
    public let name: RepositoryName

    public init(upstream: String, name: RepositoryName) {
        self.upstream = upstream
        self.name = name
    }

    public var description: String { "\(upstream)/\(name.value)" }

    public static func < (lhs: RepositoryKey, rhs: RepositoryKey) -> Bool {
        (lhs.upstream, lhs.name.value) < (rhs.upstream, rhs.name.value)
    }
}
