import ContentStore
import OCI

/// The read side of a registry, as the HTTP front sees it.
///
/// Called by `RegistryAPI` for every `/v2/` request. `LocalRegistry` answers from the cache
/// alone; a pull-through implementation wraps it and falls back to the upstream, so the
/// HTTP handlers never learn whether a cache or an upstream answered (distribution's
/// proxy is shaped the same way).
public protocol RegistryContent: Sendable {
    /// A manifest's exact bytes. Throws `.manifestUnknown` when absent.
    func manifest(_ repository: RepositoryKey, _ reference: ManifestReference) async throws(MirrorError) -> ManifestContent
    /// A blob the repository may read. Throws `.blobUnknown` when absent or not linked.
    func blob(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> BlobContent
    /// A blob for a request with a `Range`: may be the upstream's own answer to the range
    /// (`relayedRange` set) when the blob is not cached and its download has not reached it.
    func blob(_ repository: RepositoryKey, _ digest: Digest, range: RangeRequest?) async throws(MirrorError) -> BlobContent
    /// The size of a blob the repository may read, without downloading it.
    func blobSize(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> Int64
    /// Sorted tag names. Throws `.nameUnknown` for an unknown repository.
    func tags(_ repository: RepositoryKey) async throws(MirrorError) -> [String]
    /// Descriptors of the manifests that refer to `digest` (their `subject`), as a referrers
    /// index lists them. Never "unsupported": an unknown subject has none.
    func referrers(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> [Descriptor]
    /// Told of a manifest body being sent, with its size (served-bytes accounting).
    func delivered(_ bytes: Int64, of manifest: ManifestContent, in repository: RepositoryKey)
    /// A login (`GET /v2/` with credentials): throws what `upstream` answers to the request's
    /// client when it checks client credentials itself (`forward_client_credentials`).
    func verifyClient(of upstream: String) async throws(MirrorError)
}

extension RegistryContent {
    /// Without an upstream to ask, a range is always cut from the whole blob.
    public func blob(_ repository: RepositoryKey, _ digest: Digest, range: RangeRequest?) async throws(MirrorError) -> BlobContent {
        try await blob(repository, digest)
    }

    public func delivered(_ bytes: Int64, of manifest: ManifestContent, in repository: RepositoryKey) {}

    /// Nothing to verify without an upstream that checks client credentials.
    public func verifyClient(of upstream: String) async throws(MirrorError) {}
}

/// A manifest as served: the stored bytes and the stored media type, never re-encoded.
public struct ManifestContent: Sendable {
    public let digest: Digest
    public let mediaType: String
    public let bytes: [UInt8]
    /// Set when the content may be stale (served from cache while the upstream failed).
    public var warning: String?
    /// How the cache answered: hit, revalidated, miss or stale (for `X-Cache` and the log).
    public var cacheResult: MirrorStats.CacheResult = .hit

    public init(digest: Digest, mediaType: String, bytes: [UInt8], warning: String? = nil) {
        self.digest = digest
        self.mediaType = mediaType
        self.bytes = bytes
        self.warning = warning
    }
}

/// A blob ready to be streamed: a reader, and what the response says about it.
///
/// The reader is open, and the blob leased against eviction in this process, before the
/// response's head is sent: a blob that vanished before the open was a miss (fetched again),
/// and one evicted after it still streams to the end. The response keeps this value until its
/// body is written, then calls `finished(sent:)`. Whether the bytes come from the store, a
/// download in progress or an upstream's ranged answer, the HTTP front sees the same shape.
public struct BlobContent: Sendable {
    /// The bytes. For an upstream's ranged answer (`relayedRange`), exactly that answer's body.
    public let reader: any BlobReader
    /// HIT (stored) or MISS (downloading, or relayed), for `X-Cache` and the log.
    public let cacheResult: MirrorStats.CacheResult
    /// Set when the body is the upstream's own answer to the request's range (a 206), streamed
    /// and never stored: send it as it is, with these headers.
    public let relayedRange: RelayedRange?
    /// The download the bytes come from, for callers in the core (`seed`, tests); nil when stored.
    public let fill: BlobFill?
    /// Kept until the body ends: a `BlobLease`, and whatever the reader depends on.
    let holding: (any Sendable)?
    let onFinish: (@Sendable (Int64) -> Void)?

    init(reader: any BlobReader, cacheResult: MirrorStats.CacheResult, relayedRange: RelayedRange? = nil, fill: BlobFill? = nil,
         holding: (any Sendable)? = nil, onFinish: (@Sendable (Int64) -> Void)? = nil) {
        self.reader = reader
        self.cacheResult = cacheResult
        self.relayedRange = relayedRange
        self.fill = fill
        self.holding = holding
        self.onFinish = onFinish
    }

    /// Where a client may fetch this blob itself instead (a presigned URL of the object store
    /// that holds it), for the HTTP front to redirect a GET to; nil: send the bytes. Only a
    /// stored blob has one: a download in progress and a relayed range are sent from here.
    public func redirectLocation() -> String? {
        guard cacheResult == .hit, fill == nil, relayedRange == nil else { return nil }
        return (reader as? any RedirectingBlobReader)?.redirectLocation()
    }

    /// The same content, accounted and held by the mirror core until its body ends.
    func attaching(_ holding: (any Sendable)?, onFinish: (@Sendable (Int64) -> Void)?) -> BlobContent {
        BlobContent(reader: reader, cacheResult: cacheResult, relayedRange: relayedRange, fill: fill, holding: holding, onFinish: onFinish)
    }

    /// Called once by the HTTP front when the body ended, with the bytes that reached the client.
    public func finished(sent: Int64) {
        onFinish?(sent)
        withExtendedLifetime(holding) {}
    }
}

/// The headers of an upstream's 206 that the mirror relays.
public struct RelayedRange: Sendable {
    /// The upstream's `Content-Range` (nil for a multipart answer, which carries one per part).
    public let contentRange: String?
    /// `multipart/byteranges; boundary=…` for several ranges, nil for one.
    public let multipartType: String?
}

/// Errors of the mirror core, mapped to wire codes in one table by the HTTP front.
public struct MirrorError: ErrorWithOrigin, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let raw: String
        public var description: String { raw }
        public static let manifestUnknown = Code(raw: "manifest unknown")
        public static let blobUnknown = Code(raw: "blob unknown")
        public static let nameUnknown = Code(raw: "repository unknown")
        public static let nameInvalid = Code(raw: "invalid repository name")
        public static let upstreamUnavailable = Code(raw: "upstream unavailable")
        public static let upstreamDenied = Code(raw: "upstream denied access")
        /// An upstream that forwards client credentials refused the client's (or its
        /// anonymous request): the client may answer a challenge with credentials of its own.
        public static let unauthorized = Code(raw: "upstream requires the client's credentials")
        /// The mirror's own allow and deny lists refuse the repository (`RepositoryAccess`).
        public static let accessDenied = Code(raw: "refused by the mirror's repository rules")
        public static let tooManyRequests = Code(raw: "too many requests")
        public static let unsupported = Code(raw: "unsupported")
        public static let invalidContent = Code(raw: "invalid content")
        /// The mirror's own store failed (a full disk, an I/O error): not the upstream's fault.
        public static let storeFailed = Code(raw: "local store failure")
        /// The metadata index cannot be reached now (a PostgreSQL index that is down): a
        /// retry may succeed, so the client gets 503, not 500.
        public static let indexUnavailable = Code(raw: "index unavailable")
        public static let `internal` = Code(raw: "internal error")
    }

    public let code: Code
    public let message: String
    /// Seconds a client should wait, for `.tooManyRequests`.
    public var retryAfter: Int?
    /// Where it was raised and what it wraps (an upstream, store or index error), for logs.
    public let origin: ErrorOrigin

    public init(_ code: Code, _ message: String, retryAfter: Int? = nil, cause: (any Error)? = nil,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.origin = ErrorOrigin(cause: cause, file: file, line: line)
    }

    public var description: String { "\(code.raw): \(message)" }
}
