import OCI
import Synchronization
import Upstream

// The client's own credentials, forwarded (`upstreams[].forward_client_credentials`, distribution
// issue 1899). The upstream is the authority on who may read what: every request to such an
// upstream goes through the client's view of it (`UpstreamClient.forwarding(_:)`), and cached
// content is served to a client only after the upstream said, lately, that this client may read
// that repository. Downloads stay shared: a client joins a running fill only after its own
// check passed.

/// Whose request is being served, for upstreams that forward client credentials.
public enum RequestClient {
    /// Set by the HTTP front around each request to such an upstream. Work with no client
    /// (`seed`, the watch list) runs anonymous.
    @TaskLocal public static var credentials: ClientCredentials = .anonymous
}

/// Which (client, repository) pairs the upstream lately allowed: a value type with the time
/// passed in, held under a lock by `PullThroughRegistry`.
///
/// Only successes are remembered, each for the upstream's `access_memo`; a refusal is asked
/// again next time. At most `capacity` entries: past it, expired ones go, and if none had,
/// all of them (the cost is one HEAD per client and repository).
public struct AccessMemo: Sendable {
    public struct Key: Hashable, Sendable {
        /// `ClientCredentials.key`: a salted hash, never the credentials.
        public let client: String
        public let repository: RepositoryKey

        public init(client: String, repository: RepositoryKey) {
            self.client = client
            self.repository = repository
        }
    }

    public let capacity: Int
    /// Until when (Unix milliseconds) each pair is known to be allowed.
    private var until: [Key: Int64] = [:]

    public init(capacity: Int = 65_536) { self.capacity = capacity }

    public var count: Int { until.count }

    public func allows(_ key: Key, nowMs: Int64) -> Bool {
        guard let end = until[key] else { return false }
        return nowMs < end
    }

    public mutating func record(_ key: Key, for memo: Duration, nowMs: Int64) {
        guard memo > .zero else { return }
        if until.count >= capacity, until[key] == nil {
            until = until.filter { $0.value > nowMs }
            if until.count >= capacity { until.removeAll() }
        }
        let (seconds, attoseconds) = memo.components
        until[key] = nowMs + seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// What the upstream is asked to prove a client's access: a HEAD of the manifest or of the blob.
enum AccessProbe: CustomStringConvertible {
    case manifest(ManifestReference)
    case blob(Digest)

    var description: String {
        switch self {
        case .manifest(let reference): return "\(reference)"
        case .blob(let digest): return "\(digest)"
        }
    }
}

extension PullThroughRegistry {
    /// The client of this request may read `repository`: the upstream said so within its
    /// `access_memo`, or says so now (a HEAD of `probe` with the client's credentials).
    /// Nothing to check for an upstream that does not forward client credentials.
    ///
    /// Throws what the upstream answered: `.unauthorized` (401; the client can answer the
    /// challenge), `.upstreamDenied` (403), `.manifestUnknown`/`.blobUnknown` (404). An upstream
    /// that cannot answer is a 503: cached content is never served on an unchecked client's word.
    func checkAccess(_ repository: RepositoryKey, _ probe: AccessProbe, upstream: any UpstreamClient) async throws(MirrorError) {
        guard upstream.forwardsClientCredentials else { return }
        let key = AccessMemo.Key(client: (upstream.forwardedClient ?? .anonymous).key, repository: repository)
        if accessMemo.withLock({ $0.allows(key, nowMs: clock.unixMilliseconds) }) { return }
        do throws(UpstreamError) {
            switch probe {
            case .manifest(let reference):
                _ = try await upstream.manifest(repository.name, reference, head: true)
            case .blob(let digest):
                guard try await upstream.blobSize(repository.name, digest) != nil else {
                    throw UpstreamError(.notFound, "\(upstream.name) has no blob \(digest) in \(repository)")
                }
            }
        } catch {
            logger.debug("the upstream refused this client", metadata: ["oci.repository": "\(repository)", "error": "\(error.message)"])
            if case .blob = probe { throw Self.map(error, upstream: upstream, what: "\(repository)@\(probe)", unknown: .blobUnknown) }
            throw Self.map(error, upstream: upstream, what: "\(repository):\(probe)", unknown: .manifestUnknown)
        }
        rememberAccess(key, upstream: upstream)
    }

    /// Whether the client of `upstream` (a client's view) was allowed `repository` lately.
    func accessRemembered(_ repository: RepositoryKey, upstream: any UpstreamClient) -> Bool {
        guard upstream.forwardsClientCredentials else { return true }
        let key = AccessMemo.Key(client: (upstream.forwardedClient ?? .anonymous).key, repository: repository)
        return accessMemo.withLock { $0.allows(key, nowMs: clock.unixMilliseconds) }
    }

    /// Notes that the upstream just let the client of `upstream` read the repository of `key`.
    func rememberAccess(_ key: AccessMemo.Key, upstream: any UpstreamClient) {
        let memo = policies[upstream.name]?.accessMemo ?? UpstreamPolicy().accessMemo
        accessMemo.withLock { $0.record(key, for: memo, nowMs: clock.unixMilliseconds) }
    }

    /// A login (`GET /v2/` with credentials, `docker login`): `upstream`, if it forwards client
    /// credentials, accepts the request's client. Else there is nothing to check.
    public func verifyClient(of upstream: String) async throws(MirrorError) {
        guard !offline, let registry = upstreams[upstream], registry.forwardsClientCredentials else { return }
        let view = registry.forwarding(RequestClient.credentials)
        do {
            try await view.verifyCredentials()
        } catch {
            throw Self.map(error, upstream: view, what: "a login", unknown: .nameUnknown)
        }
    }

    /// Offline, nobody can vouch for a client of an upstream that forwards client
    /// credentials, so its cached content is not served at all.
    func refuseUncheckable(_ repository: RepositoryKey) throws(MirrorError) {
        guard offline, upstreams[repository.upstream]?.forwardsClientCredentials == true else { return }
        throw MirrorError(.upstreamUnavailable, "\(repository) is cached from \(repository.upstream), which decides who may read it, and this mirror is offline")
    }
}
