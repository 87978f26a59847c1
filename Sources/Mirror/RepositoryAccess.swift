import OCI

/// Which repositories of one upstream the mirror serves (`upstreams[].allow`, `deny`,
/// `deny_status`): an open mirror in front of Docker Hub would spend the operator's pull quota
/// on anyone's image.
///
/// A name is served when it matches no `deny` pattern and, if there is an `allow` list, one of
/// its patterns: deny wins. No allow list means everything not denied; an empty one, nothing.
/// `PullThroughRegistry` asks before anything else, so a refused request reads no cache and
/// asks no upstream, whether it came from a client, `seed` or the watch list.
public struct RepositoryAccess: Sendable, Equatable {
    /// What a refused request is told.
    public enum Refusal: Sendable, Equatable {
        /// 404 `NAME_UNKNOWN`: the repository looks absent (the default; reveals no policy).
        case nameUnknown
        /// 403 `DENIED`.
        case denied
    }

    /// Why a name is or is not served.
    public enum Verdict: Sendable, Equatable {
        case allowed
        /// It matches this `deny` pattern.
        case denied(by: RepositoryPattern)
        /// There is an allow list and it matches no pattern of it.
        case notAllowed
    }

    /// Nil: every repository not denied.
    public var allow: [RepositoryPattern]?
    public var deny: [RepositoryPattern]
    public var refusal: Refusal

    public init(allow: [RepositoryPattern]? = nil, deny: [RepositoryPattern] = [], refusal: Refusal = .nameUnknown) {
        self.allow = allow
        self.deny = deny
        self.refusal = refusal
    }

    /// Serves everything.
    public static let open = RepositoryAccess()

    public func verdict(for name: RepositoryName) -> Verdict {
        if let pattern = deny.first(where: { $0.matches(name) }) { return .denied(by: pattern) }
        if let allow, !allow.contains(where: { $0.matches(name) }) { return .notAllowed }
        return .allowed
    }

    /// For the operator (`seed`, the watch list at start): which rule refused `repository`, or
    /// nil when it is served.
    public func explain(_ repository: RepositoryKey) -> String? {
        switch verdict(for: repository.name) {
        case .allowed: return nil
        case .denied(let pattern): return "\(repository) is refused by upstreams[\(repository.upstream)].deny pattern \"\(pattern)\""
        case .notAllowed: return "\(repository) matches no pattern of upstreams[\(repository.upstream)].allow"
        }
    }

    /// The error for a refused request. It names no pattern: a client learns only that the
    /// repository is not served (with `.nameUnknown`, not even that).
    func refusalError(_ repository: RepositoryKey) -> MirrorError {
        switch refusal {
        case .nameUnknown: MirrorError(.nameUnknown, "repository \(repository.name) is not known to this mirror")
        case .denied: MirrorError(.accessDenied, "this mirror does not serve repository \(repository.name)")
        }
    }
}
