import OCI

/// What the mirror core (`PullThroughRegistry`) asks of an upstream, and no more.
/// `UpstreamRegistry` is the libcurl implementation; tests use an in-process fake.
public protocol UpstreamClient: AnyObject, Sendable {
    /// The name requests route by and cache keys carry: `docker.io`, `ghcr.io`.
    var name: String { get }
    /// The pulls the upstream last said are left in its window, if it said.
    var rateLimitRemaining: Int? { get }
    /// Set once the upstream answered a ranged GET with the whole blob.
    var ignoresRanges: Bool { get }
    /// HEAD or GET of a manifest by tag or digest.
    func manifest(_ repository: RepositoryName, _ reference: ManifestReference, head: Bool) async throws(UpstreamError) -> UpstreamManifest
    /// Size of a blob if the repository holds it upstream (-1: no length sent); nil for 404.
    func blobSize(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> Int64?
    /// Streams a blob into `sink` from `offset`; `sink.head` sees the final 2xx head first.
    func fetchBlob(_ repository: RepositoryName, _ digest: Digest, sink: any TransferSink, from offset: Int64) async throws(UpstreamError) -> ResponseHead
    /// Streams the answer to a ranged GET (`range` is a `Range` header value) into `sink`.
    func fetchBlobRange(_ repository: RepositoryName, _ digest: Digest, range: String, sink: any TransferSink) async throws(UpstreamError) -> ResponseHead
    /// Every tag, following pagination for at most `maxPages` pages.
    func tags(_ repository: RepositoryName, maxPages: Int) async throws(UpstreamError) -> [String]
    /// The referrers index bytes, or nil when the upstream has no referrers API.
    func referrers(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> [UInt8]?
    /// Set for an upstream configured with `forward_client_credentials`: its requests must
    /// carry the requesting client's own credentials, so the core serves each request through
    /// `forwarding(_:)` and checks the client's access before it serves cached content.
    var forwardsClientCredentials: Bool { get }
    /// The client whose credentials this view forwards; nil for the upstream itself.
    var forwardedClient: ClientCredentials? { get }
    /// The upstream as `client` sees it: the same name (so downloads are still shared),
    /// requests with `client`'s credentials, tokens cached per client.
    func forwarding(_ client: ClientCredentials) -> any UpstreamClient
    /// Whether the upstream accepts this view's credentials (`GET /v2/`), for a login.
    func verifyCredentials() async throws(UpstreamError)
}

extension UpstreamClient {
    public var forwardsClientCredentials: Bool { false }
    public var forwardedClient: ClientCredentials? { nil }
    public func forwarding(_ client: ClientCredentials) -> any UpstreamClient { self }
    public func verifyCredentials() async throws(UpstreamError) {}
}

extension UpstreamRegistry: UpstreamClient {}
