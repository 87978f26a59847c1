import OCI

/// Chooses the upstream a request is for, and so its cache key.
///
/// In order: containerd's `?ns=<host>`; a leading path component equal to a configured
/// upstream name (`/v2/ghcr.io/org/app/...`); else the default upstream. Docker Hub's
/// `library/` is added to one-component names.
public struct UpstreamRouter: Sendable {
    public let names: Set<String>
    public let defaultUpstream: String

    public init(names: some Sequence<String>, defaultUpstream: String) {
        self.names = Set(names).union([defaultUpstream])
        self.defaultUpstream = defaultUpstream
    }

    /// Resolves the raw `<name>` of a `/v2/<name>/...` path.
    public func route(path name: Substring, namespace: String?) throws(MirrorError) -> RepositoryKey {
        var upstream = defaultUpstream
        var rest = name
        if let namespace {
            let host = ImageReference.normalizeHost(namespace)
            guard names.contains(host) else {
                throw MirrorError(.nameUnknown, "this mirror has no upstream named \(namespace.prefix(100))")
            }
            upstream = host
        } else if let slash = name.firstIndex(of: "/"), names.contains(String(name[..<slash])) {
            upstream = String(name[..<slash])
            rest = name[name.index(after: slash)...]
        }
        var repository: RepositoryName
        do {
            repository = try RepositoryName(parsing: rest)
        } catch {
            throw MirrorError(.nameInvalid, error.message, cause: error)
        }
        if upstream == ImageReference.dockerHub, !rest.contains("/") {
            do {
                repository = try RepositoryName(parsing: "library/" + rest)
            } catch {
                throw MirrorError(.nameInvalid, error.message, cause: error)
            }
        }
        return RepositoryKey(upstream: upstream, name: repository)
    }
}
