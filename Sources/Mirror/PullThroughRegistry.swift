import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
import Synchronization
import Upstream

/// Per-upstream caching policy.
public struct UpstreamPolicy: Sendable {
    /// Within this, a cached tag is served with no upstream request.
    public var tagTTL: Duration = .seconds(300)
    /// Serve the last known digest when the upstream fails (unreachable, 5xx, 429, timeout).
    public var staleIfError = true
    /// When an index is fetched, also download the blobs of these platforms' images in the
    /// background, so the first pull of a fleet's platform finds them cached.
    public var prefetchPlatforms: [Platform] = []
    /// At most this many of an index's other child manifests are fetched in the background.
    /// Each is a pull on the upstream's rate limit, and a crafted index can list hundreds.
    public var prefetchMaxChildren = 32
    /// When the upstream says (Docker Hub's `ratelimit-remaining`) that this many pulls or
    /// fewer are left, a tag whose HEAD shows a new digest keeps its cached one (served stale,
    /// with the `Warning`) instead of spending a pull on the GET: the rest are kept for content
    /// the cache cannot serve at all.
    public var rateLimitReserve = 10
    /// For an upstream that forwards client credentials: how long its "yes, this client may
    /// read this repository" is trusted before it is asked again (`ClientAccess.swift`).
    public var accessMemo: Duration = .seconds(60)

    public init() {}
}

/// The pull-through cache: the local registry first, the upstream on a miss.
///
/// - Manifests by digest are immutable: a hit is served from the cache; a miss is fetched
///   by digest and verified against it before anything is stored.
/// - Manifests by tag: within the TTL the cached digest is served; after it, a HEAD
///   revalidates (free against Docker Hub's pull limit). If the upstream fails, the last
///   known digest is served with a `Warning: 110` (stale-if-error).
/// - Blobs: one upstream download per (upstream, digest), however many clients ask; each
///   streams from the growing file (`BlobFill`).
/// - Repository scoping: a cached blob is served under repository R only if R is known to
///   hold it; otherwise the upstream is asked (HEAD) first.
/// - Allow and deny lists (`RepositoryAccess`): every public entry asks `admit` first, so a
///   refused repository reads no cache and asks no upstream, online or offline.
/// - Forwarded client credentials (`ClientAccess.swift`): an upstream that forwards them is
///   asked through the request's client's view of it, and cached content is served only after
///   `checkAccess` (the upstream said this client may read that repository).
public final class PullThroughRegistry: RegistryContent {
    public let local: LocalRegistry
    let upstreams: [String: any UpstreamClient]
    let policies: [String: UpstreamPolicy]
    /// Per upstream name; an upstream without an entry serves every repository.
    let access: [String: RepositoryAccess]
    let offline: Bool
    let maintenance: CacheMaintenance?
    /// Fetch an index's child manifests in the background when the index arrives. Off for
    /// `seed`, which copies exactly the instances chosen.
    let prefetchChildManifests: Bool
    let stats: MirrorStats?
    let logger: Logger
    /// Tag `checked_at` and the TTL are read from it.
    let clock: any MirrorClock
    /// Downloads in progress, by `fillKey` (PullThroughRegistry+Fills.swift).
    let fills = Mutex<[String: BlobFill]>([:])
    /// Which clients an upstream that forwards client credentials lately allowed which repository.
    let accessMemo = Mutex(AccessMemo())
    private let manifestFlights = SingleFlight<String, ManifestContent>()
    /// The last referrers answer per (repository, subject), for when the upstream fails.
    let referrerCache = ReferrerCache(capacity: 4096)
    private let prefetchSlots = AsyncSemaphore(4)
    /// Owns fills and prefetches, which outlive the request that started them.
    let fillService: FillService
    /// Set on a fleet replica: fills take a lease, and a blob another replica is downloading
    /// is streamed from it (PullThroughRegistry+Fleet.swift).
    public let fleet: FleetMember?

    public init(local: LocalRegistry, upstreams: [any UpstreamClient], policies: [String: UpstreamPolicy] = [:],
                access: [String: RepositoryAccess] = [:], offline: Bool = false, maintenance: CacheMaintenance? = nil, prefetchChildManifests: Bool = true,
                stats: MirrorStats? = nil, clock: any MirrorClock = .system, fillService: FillService? = nil, fleet: FleetMember? = nil,
                logger: Logger) {
        self.fleet = fleet
        self.local = local
        self.fillService = fillService ?? FillService(logger: logger)
        self.clock = clock
        self.upstreams = Dictionary(upstreams.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.policies = policies
        self.access = access
        self.offline = offline
        self.maintenance = maintenance
        maintenance?.onEviction { [local] digests in local.forget(digests) }
        self.prefetchChildManifests = prefetchChildManifests
        self.stats = stats
        self.logger = logger
    }

    var store: any BlobStore { local.store }
    var index: any MetadataStore { local.index }

    /// The upstream for a repository, or nil when offline or unknown: for one that forwards
    /// client credentials, the request's client's view of it (anonymous without a request).
    func upstream(for repository: RepositoryKey) -> (any UpstreamClient)? {
        guard !offline, let upstream = upstreams[repository.upstream] else { return nil }
        return upstream.forwardsClientCredentials ? upstream.forwarding(RequestClient.credentials) : upstream
    }

    func policy(_ repository: RepositoryKey) -> UpstreamPolicy { policies[repository.upstream] ?? UpstreamPolicy() }

    /// The allow and deny lists' gate, before any cache read or upstream request.
    func admit(_ repository: RepositoryKey) throws(MirrorError) {
        try refuseUncheckable(repository)
        guard let rules = access[repository.upstream], rules.verdict(for: repository.name) != .allowed else { return }
        logger.debug("refused by the repository rules", metadata: ["oci.repository": "\(repository)"])
        throw rules.refusalError(repository)
    }

    /// Unix seconds, as `checked_at` is stored.
    var now: Int64 { clock.unixSeconds }

    // MARK: Manifests

    public func manifest(_ repository: RepositoryKey, _ reference: ManifestReference) async throws(MirrorError) -> ManifestContent {
        try admit(repository)
        let kind: MirrorStats.CacheKind = if case .tag = reference { .manifestByTag } else { .manifestByDigest }
        let content: ManifestContent
        do throws(MirrorError) {
            if let upstream = upstream(for: repository) {
                try await checkAccess(repository, .manifest(reference), upstream: upstream)
                switch reference {
                case .digest(let digest): content = try await manifest(repository, digest: digest, upstream: upstream)
                case .tag(let tag): content = try await manifest(repository, tag: tag, upstream: upstream)
                }
            } else {
                content = try await local.manifest(repository, reference)
            }
        } catch {
            if error.code == .manifestUnknown, upstream(for: repository) == nil { stats?.cache(kind, .miss) }
            if error.code == .invalidContent { stats?.verificationFailed() }
            throw error
        }
        stats?.cache(kind, content.cacheResult)
        if content.cacheResult == .stale { stats?.stale(upstream: repository.upstream) }
        maintenance?.touch(content.digest)
        return content
    }

    public func delivered(_ bytes: Int64, of manifest: ManifestContent, in repository: RepositoryKey) {
        stats?.served(bytes, repository: repository)
    }

    /// A tag's manifest revalidated with the upstream now, whatever the tag's TTL: for the
    /// watch list, whose interval is the freshness the operator asked for. A stale answer
    /// (the upstream failed, the cached digest served) is an error here, not a success.
    public func revalidate(_ repository: RepositoryKey, _ tag: Tag) async throws(MirrorError) -> ManifestContent {
        try admit(repository)
        guard let upstream = upstream(for: repository) else {
            throw MirrorError(.upstreamUnavailable, "\(repository) cannot be revalidated: \(offline ? "the mirror is offline" : "no upstream is named \(repository.upstream)")")
        }
        let content = try await manifest(repository, tag: tag, upstream: upstream, maxAge: .zero)
        guard content.cacheResult != .stale else {
            throw MirrorError(.upstreamUnavailable, "\(upstream.name) did not answer for \(repository):\(tag); the cached \(content.digest) stays")
        }
        return content
    }

    /// `maxAge` overrides the policy's tag TTL (`.zero`: always ask the upstream).
    func manifest(_ repository: RepositoryKey, tag: Tag, upstream: any UpstreamClient, maxAge: Duration? = nil) async throws(MirrorError) -> ManifestContent {
        let cached = try await local.wrap { () async throws(IndexError) in try await index.tag(repository, tag) }
        let policy = policy(repository)
        if let cached, now - cached.checkedAt < Int64((maxAge ?? policy.tagTTL).components.seconds),
           let content = try? await local.manifestContent(cached.digest, mediaType: cached.mediaType) {
            // Fresh, or only looking fresh while this process's own claimed revalidation runs:
            // then wait for its answer, as the requests that came a moment earlier do.
            if let revalidated = try await manifestFlights.join("tag|\(repository)|\(tag)", joined: { stats?.joined(.manifestByTag) }) {
                return revalidated
            }
            return content
        }
        // Concurrent revalidations of one tag share one upstream round trip; in a fleet, one
        // replica claims it (or a tag's first fetch) and the others serve what the tag's row
        // says (+TagClaims.swift). The watch list (`maxAge`) revalidates itself, claim or not.
        return try await manifestFlights.run("tag|\(repository)|\(tag)", joined: { stats?.joined(.manifestByTag) }) { () throws(MirrorError) in
            let claim = try await self.claimTag(repository, tag, cached, ttl: policy.tagTTL, forced: maxAge != nil)
            if case .lost(let content) = claim { return content }
            do throws(MirrorError) {
                let content = try await self.revalidateTag(repository, tag, cached, upstream: upstream, policy: policy)
                // Nothing written (stale-if-error, the rate-limit reserve): the next request tries again.
                await self.release(claim, repository, tag, recorded: content.cacheResult != .stale)
                return content
            } catch {
                await self.release(claim, repository, tag, recorded: false)
                throw error
            }
        }
    }

    /// Asks the upstream where `tag` points now (a HEAD, then a GET if it moved), records the
    /// answer, or serves `cached` stale when the upstream fails.
    private func revalidateTag(_ repository: RepositoryKey, _ tag: Tag, _ cached: TagRecord?, upstream: any UpstreamClient,
                               policy: UpstreamPolicy) async throws(MirrorError) -> ManifestContent {
        do {
            let head = try await upstream.manifest(repository.name, .tag(tag), head: true)
            if let digest = head.digest {
                if let cached, digest == cached.digest, var content = try? await self.local.manifestContent(digest, mediaType: cached.mediaType) {
                    try await self.local.wrap { () async throws(IndexError) in try await self.index.touchTag(repository, tag, checkedAt: self.now) }
                    content.cacheResult = .revalidated
                    return content
                }
                if let content = await self.keepingReserve(cached, repository: repository, tag: tag, upstream: upstream) { return content }
                return try await self.fetchManifest(repository, digest: digest, tag: tag, upstream: upstream)
            }
            if let content = await self.keepingReserve(cached, repository: repository, tag: tag, upstream: upstream) { return content }
            // No digest in the HEAD answer: GET by tag and trust the bytes' own digest.
            return try await self.fetchManifest(repository, digest: nil, tag: tag, upstream: upstream)
        } catch let error as UpstreamError {
            if error.isUpstreamFailure, let cached, policy.staleIfError, let content = await self.stale(cached) {
                // Marking the upstream down was logged once, as a warning; not again per request.
                self.logger.log(level: error.markedDown ? .debug : .warning, "serving a stale tag: the upstream failed", metadata: [
                    "oci.repository": "\(repository)", "oci.tag": "\(tag)", "cache.result": "stale", "error": "\(error.message)"])
                return content
            }
            throw Self.map(error, upstream: upstream, what: "\(repository):\(tag)", unknown: .manifestUnknown)
        } catch let error as MirrorError {
            throw error
        } catch {
            throw MirrorError(.internal, "\(error)", cause: error)
        }
    }

    /// The cached digest of a tag, served stale, when getting the new one would spend one of
    /// the last pulls the upstream's rate limit allows (`UpstreamPolicy.rateLimitReserve`).
    /// The HEAD that found the new digest is free against Docker Hub's limit; the GET is not.
    func keepingReserve(_ cached: TagRecord?, repository: RepositoryKey, tag: Tag, upstream: any UpstreamClient) async -> ManifestContent? {
        let reserve = policy(repository).rateLimitReserve
        guard let cached, let remaining = upstream.rateLimitRemaining, remaining <= reserve, let content = await stale(cached) else { return nil }
        logger.info("serving a stale tag: the upstream's rate limit is down to its reserve", metadata: [
            "oci.repository": "\(repository)", "oci.tag": "\(tag)", "cache.result": "stale",
            "ratelimit.remaining": "\(remaining)", "ratelimit.reserve": "\(reserve)"])
        return content
    }

    /// The cached digest of a tag, marked stale (`Warning: 110`); nil if its manifest is gone.
    func stale(_ cached: TagRecord) async -> ManifestContent? {
        guard var content = try? await local.manifestContent(cached.digest, mediaType: cached.mediaType) else { return nil }
        content.warning = #"110 - "Response is Stale""#
        content.cacheResult = .stale
        return content
    }

    func manifest(_ repository: RepositoryKey, digest: Digest, upstream: any UpstreamClient) async throws(MirrorError) -> ManifestContent {
        if let hit = local.manifests.linked(digest, in: repository) {
            return ManifestContent(digest: digest, mediaType: hit.mediaType, bytes: hit.bytes)
        }
        let found = try await local.wrap { () async throws(IndexError) in try await index.manifest(digest, in: repository) }
        // Bytes in memory need no stat of their file.
        let present = found == nil ? false : local.holdsInMemory(digest) ? true : await store.size(of: digest) != nil
        if let (known, linked) = found, present {
            if !linked {
                // Cached through another repository: ask the upstream whether this one holds it.
                do {
                    _ = try await upstream.manifest(repository.name, .digest(digest), head: true)
                } catch {
                    throw Self.map(error, upstream: upstream, what: "\(repository)@\(digest)", unknown: .manifestUnknown)
                }
                var batch = ContentBatch()
                batch.link(repository, digest)
                try await local.wrap { () async throws(IndexError) in try await index.record(batch, now: now) }
            }
            // A file evicted between the check and the read is a miss, fetched below.
            if let content = try? await local.manifestContent(digest, mediaType: known.mediaType) {
                local.manifests.noteLinked(digest, in: repository, mediaType: known.mediaType)
                return content
            }
        }
        return try await manifestFlights.run("digest|\(repository)|\(digest)", joined: { stats?.joined(.manifestByDigest) }) { () throws(MirrorError) in
            try await self.fetchManifest(repository, digest: digest, tag: nil, upstream: upstream)
        }
    }

    /// GETs a manifest, verifies it against `digest` (or computes its digest for a tag GET
    /// without one), stores it, and records links, children and the tag.
    func fetchManifest(_ repository: RepositoryKey, digest expected: Digest?, tag: Tag?, upstream: any UpstreamClient) async throws(MirrorError) -> ManifestContent {
        let reference: ManifestReference = expected.map { .digest($0) } ?? .tag(tag!)
        let response: UpstreamManifest
        do {
            response = try await upstream.manifest(repository.name, reference, head: false)
        } catch {
            throw Self.map(error, upstream: upstream, what: "\(repository):\(reference)", unknown: .manifestUnknown)
        }
        let bytes = response.bytes ?? []
        let actual = DigestHasher.digest(of: bytes, algorithm: expected?.algorithm ?? .sha256)
        if let expected, actual != expected {
            throw MirrorError(.invalidContent, "\(upstream.name) sent a manifest for \(repository)@\(expected) whose bytes hash to \(actual)")
        }
        if expected == nil, let claimed = response.digest, claimed.algorithm == .sha256, claimed != actual {
            throw MirrorError(.invalidContent, "\(upstream.name) sent a manifest for \(repository):\(reference) whose bytes hash to \(actual), not the \(claimed) it claimed")
        }
        let document: ManifestDocument
        do {
            document = try ManifestDocument(bytes: bytes, contentType: response.mediaType)
        } catch {
            throw MirrorError(.invalidContent, "\(upstream.name) sent an unreadable manifest for \(repository):\(reference): \(error.message)", cause: error)
        }
        if MediaType.isSchema1(document.mediaType) {
            throw MirrorError(.manifestUnknown, "\(repository):\(reference) is a Docker schema 1 manifest, which this mirror does not serve")
        }
        // The type the upstream served it as is the type we serve it as.
        let mediaType = response.mediaType.flatMap { MediaType.isManifest($0) ? $0 : nil } ?? document.mediaType
        let knownBefore = try await local.wrap { () async throws(IndexError) in try await index.blobSize(actual) } != nil
        do {
            try await store.write(bytes, as: actual)
        } catch {
            // Replicas of a fleet that miss one manifest at once all write it to the shared
            // store; a write that lost to another (S3 servers may refuse concurrent PUTs of one
            // key) finds the same bytes stored, under their digest, and is as good as done.
            if await store.size(of: actual) != Int64(bytes.count) {
                stats?.storeFailed()
                throw MirrorError(.storeFailed, "the local store cannot keep manifest \(actual): \(error.message)", cause: error)
            }
        }
        var batch = ContentBatch()
        batch.addBlob(actual, size: Int64(bytes.count))
        var entry = ContentBatch.Manifest(digest: actual, size: Int64(bytes.count), document: document)
        entry = ContentBatch.Manifest(copying: entry, mediaType: mediaType)
        batch.manifests.append(entry)
        batch.link(repository, actual)
        // A manifest of R names its blobs and children: R is known to hold them.
        for blob in document.blobs { batch.link(repository, blob.digest) }
        for child in document.manifests { batch.link(repository, child.digest) }
        if let tag { batch.tag(repository, tag, actual, mediaType: mediaType, checkedAt: now) }
        try await record(batch, stored: actual, knownBefore: knownBefore)
        var content = ManifestContent(digest: actual, mediaType: mediaType, bytes: bytes)
        content.cacheResult = .miss
        if document.isIndex, prefetchChildManifests { await prefetchChildren(document.manifests, repository: repository, upstream: upstream) }
        return content
    }

    /// Child manifests are small and a client asks for one right after the index: fetch
    /// them in the background, a few at a time. The configured platforms' children always;
    /// others only up to `prefetchMaxChildren`, so one index cannot spend the rate limit.
    func prefetchChildren(_ children: [Descriptor], repository: RepositoryKey, upstream: any UpstreamClient) async {
        let policy = policy(repository)
        var cached: Set<Digest> = []
        for child in children where await store.size(of: child.digest) != nil { cached.insert(child.digest) }
        let missing = Self.childrenToPrefetch(children, policy: policy) { cached.contains($0) }
        guard !missing.isEmpty else { return }
        // Owned by the fill service: refused while the server shuts down.
        fillService.start(.prefetch) { [self] in
            await withTaskGroup(of: Void.self) { group in
                for child in missing {
                    group.addTask {
                        await self.prefetchSlots.wait()
                        defer { self.prefetchSlots.signal() }
                        do {
                            self.stats?.prefetched("manifest")
                            let content = try await self.manifest(repository, digest: child.digest, upstream: upstream)
                            if let platform = child.platform, self.policy(repository).prefetchPlatforms.contains(where: { $0.matches(platform) }) {
                                try await self.prefetchBlobs(of: content, repository: repository, upstream: upstream)
                            }
                        } catch {
                            self.logger.debug("prefetch of an index child failed", metadata: ["oci.digest": "\(child.digest)", "error": "\(error)"])
                        }
                    }
                }
            }
        }
    }

    /// Starts (or joins) downloads of an image manifest's blobs that are not cached yet.
    func prefetchBlobs(of manifest: ManifestContent, repository: RepositoryKey, upstream: any UpstreamClient) async throws {
        let document = try ManifestDocument(bytes: manifest.bytes, contentType: manifest.mediaType)
        for blob in document.blobs where await store.size(of: blob.digest) == nil {
            stats?.prefetched("blob")
            _ = try await startOrJoinFill(repository, blob.digest, upstream: upstream)
        }
    }

    /// Which children of an index to fetch in the background: those of the policy's
    /// platforms (cached or not: their blobs are wanted too), then uncached others, at most
    /// `prefetchMaxChildren` of them.
    static func childrenToPrefetch(_ children: [Descriptor], policy: UpstreamPolicy, isCached: (Digest) -> Bool) -> [Descriptor] {
        var chosen: [Descriptor] = []
        var others = 0
        for child in children where MediaType.isManifest(child.mediaType) {
            if let platform = child.platform, policy.prefetchPlatforms.contains(where: { $0.matches(platform) }) {
                chosen.append(child)
            } else if others < policy.prefetchMaxChildren, !isCached(child.digest) {
                others += 1
                chosen.append(child)
            }
        }
        return chosen
    }

    // MARK: Blobs

    /// A blob, open (or its download joined) and leased before the HTTP front sends a head;
    /// marked used, and its served bytes counted when the body ends.
    public func blob(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> BlobContent {
        try admit(repository)
        // Leased before the lookup, so an eviction pass here that decides after this point
        // leaves the blob be; one that decided before finds the open below failing, a miss.
        let lease = maintenance?.lease(digest)
        let content = try await lookUpBlob(repository, digest)
        maintenance?.touch(digest)
        let stats = self.stats
        return content.attaching(lease) { sent in stats?.served(sent, repository: repository) }
    }

    private func lookUpBlob(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> BlobContent {
        guard let upstream = upstream(for: repository) else {
            do throws(MirrorError) {
                let content = try await local.blob(repository, digest)
                stats?.cache(.blob, .hit)
                return content
            } catch {
                stats?.cache(.blob, .miss)
                throw error
            }
        }
        try await checkAccess(repository, .blob(digest), upstream: upstream)
        if let reader = try await local.openIntact(digest) {
            try await ensureLinked(repository, digest, upstream: upstream)
            stats?.cache(.blob, .hit)
            return BlobContent(reader: reader, cacheResult: .hit)
        }
        // Not cached, evicted, or damaged (and removed): fetch it again.
        let fill = try await startOrJoinFill(repository, digest, upstream: upstream)
        return BlobContent(reader: fill.reader(), cacheResult: .miss, fill: fill)
    }

    /// How long a request for a stored blob waits for its download to record it (the window
    /// between the file's publication and the index's link) before asking the upstream.
    static let publishWait: Duration = .seconds(10)

    /// How long a HEAD for a blob the upstream sends without a length waits for its download.
    static let sizelessHeadWait: Duration = .seconds(20)

    public func blobSize(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> Int64 {
        try admit(repository)
        guard let upstream = upstream(for: repository) else { return try await local.blobSize(repository, digest) }
        try await checkAccess(repository, .blob(digest), upstream: upstream)
        if let reader = try await local.openIntact(digest), let size = try await LocalRegistry.size(of: reader, digest) {
            try await ensureLinked(repository, digest, upstream: upstream)
            return size
        }
        if let fill = fills.withLock({ $0[fillKey(upstream, digest)] }), let size = fill.snapshot.size { return size }
        // HEAD upstream; download nothing.
        let size: Int64?
        do {
            size = try await upstream.blobSize(repository.name, digest)
        } catch {
            throw Self.map(error, upstream: upstream, what: "\(repository)@\(digest)", unknown: .blobUnknown)
        }
        guard let size else { throw MirrorError(.blobUnknown, "\(upstream.name) has no blob \(digest) in \(repository)") }
        if size >= 0 { return size }
        // The upstream answered without a length (a chunked server). A cached manifest's
        // descriptor says it; failing that, the download does, fetched now and bounded.
        if let known = try await descriptorSize(of: digest, in: repository) { return known }
        let fill = try await startOrJoinFill(repository, digest, upstream: upstream)
        if let completed = try await fill.completedSize(within: Self.sizelessHeadWait) { return completed }
        throw MirrorError(.upstreamUnavailable, "\(upstream.name) sent no size for \(repository)@\(digest), and its download is still running; retry")
    }

    /// The size a cached manifest of `repository` gives for `digest`, if one names it.
    func descriptorSize(of digest: Digest, in repository: RepositoryKey) async throws(MirrorError) -> Int64? {
        let manifests = try await local.wrap { () async throws(IndexError) in try await index.manifests(naming: digest, in: repository) }
        for record in manifests {
            guard let content = try? await local.manifestContent(record.digest, mediaType: record.mediaType),
                  let document = try? ManifestDocument(bytes: content.bytes, contentType: content.mediaType) else { continue }
            if let descriptor = document.blobs.first(where: { $0.digest == digest }) { return descriptor.size }
        }
        return nil
    }

    /// Repository scoping: link R to a cached blob only after the upstream confirms R holds it.
    func ensureLinked(_ repository: RepositoryKey, _ digest: Digest, upstream: any UpstreamClient) async throws(MirrorError) {
        if try await local.wrap({ () async throws(IndexError) in try await index.isLinked(repository, digest) }) { return }
        // The blob is stored but its download is still publishing: it records the link next
        // (if it was for this repository), so wait for that instead of asking the upstream.
        if let running = fills.withLock({ $0[fillKey(upstream, digest)] }) {
            _ = try? await running.completedSize(within: Self.publishWait)
            if try await local.wrap({ () async throws(IndexError) in try await index.isLinked(repository, digest) }) { return }
        }
        let size: Int64?
        do {
            size = try await upstream.blobSize(repository.name, digest)
        } catch {
            throw Self.map(error, upstream: upstream, what: "\(repository)@\(digest)", unknown: .blobUnknown)
        }
        guard size != nil else {
            throw MirrorError(.blobUnknown, "\(repository) does not hold \(digest) on \(upstream.name)")
        }
        var batch = ContentBatch()
        batch.link(repository, digest)
        try await local.wrap { () async throws(IndexError) in try await index.record(batch, now: now) }
    }

    // MARK: Tags (referrers: PullThroughRegistry+Referrers.swift)

    public func tags(_ repository: RepositoryKey) async throws(MirrorError) -> [String] {
        try admit(repository)
        guard let upstream = upstream(for: repository) else { return try await local.tags(repository) }
        do {
            let tags = try await upstream.tags(repository.name, maxPages: 50).sorted()
            if upstream.forwardsClientCredentials {
                rememberAccess(AccessMemo.Key(client: (upstream.forwardedClient ?? .anonymous).key, repository: repository), upstream: upstream)
            }
            return tags
        } catch {
            // A client of an upstream that forwards credentials gets the cached list only if it was allowed lately.
            if error.isUpstreamFailure, accessRemembered(repository, upstream: upstream), let cached = try? await local.tags(repository) { return cached }
            throw Self.map(error, upstream: upstream, what: "\(repository)", unknown: .nameUnknown)
        }
    }

    // MARK: Errors

    static func map(_ error: UpstreamError, upstream: any UpstreamClient, what: String, unknown: MirrorError.Code) -> MirrorError {
        switch error.code {
        case .notFound: return MirrorError(unknown, "\(what) is not on \(upstream.name): \(error.message)", cause: error)
        case .denied: return MirrorError(.upstreamDenied, error.message, cause: error)
        case .unauthorized: return MirrorError(.unauthorized, error.message, cause: error)
        case .tooManyRequests: return MirrorError(.tooManyRequests, error.message, retryAfter: error.retryAfter, cause: error)
        case .invalidResponse: return MirrorError(.invalidContent, error.message, cause: error)
        case .busy: return MirrorError(.upstreamUnavailable, "this mirror is busy: \(error.message)", retryAfter: error.retryAfter, cause: error)
        default: return MirrorError(.upstreamUnavailable, "upstream \(upstream.name) is unavailable: \(error.message)", retryAfter: error.retryAfter, cause: error)
        }
    }

    static func map(_ error: any Error, upstream: any UpstreamClient, what: String, unknown: MirrorError.Code) -> MirrorError {
        if let error = error as? UpstreamError { return map(error, upstream: upstream, what: what, unknown: unknown) }
        if let error = error as? MirrorError { return error }
        return MirrorError(.internal, "\(error)", cause: error)
    }
}

extension MirrorError {
    var isUpstreamFailure: Bool { code == .upstreamUnavailable || code == .tooManyRequests }
}
