import Foundation
import OCI

/// What the cache knows about its content: upstreams, repositories, tags, manifests, index
/// children with platforms, repository↔blob links, blob sizes, access times and pins, and
/// the eviction plan built from them. The bytes live in a `BlobStore`; a row here is written
/// only after the bytes it describes were verified and published.
///
/// Called by the mirror core (lookups on every request, records after verified fills, access
/// times and eviction from `CacheMaintenance`), `Bundles` (import, export) and the CLI (`ls`,
/// `pin`, `gc`, `verify`). `SQLiteMetadataStore` is the single-machine implementation; every
/// implementation passes the conformance suite in the tests (`MetadataStoreConformance`).
public protocol MetadataStore: Sendable {
    /// The schema version after migrations.
    func schemaVersion() async throws(IndexError) -> Int

    // MARK: Lookups

    func tag(_ repository: RepositoryKey, _ tag: Tag) async throws(IndexError) -> TagRecord?
    /// Tag names of a repository, sorted.
    func tags(_ repository: RepositoryKey) async throws(IndexError) -> [String]
    func repositoryExists(_ repository: RepositoryKey) async throws(IndexError) -> Bool
    func manifest(_ digest: Digest) async throws(IndexError) -> ManifestRecord?
    /// A manifest and whether `repository` is known to hold it, in one lookup: the warm
    /// manifest-by-digest path asks both on every request.
    func manifest(_ digest: Digest, in repository: RepositoryKey) async throws(IndexError) -> (record: ManifestRecord, linked: Bool)?
    /// True when `repository` is known to hold `digest`: it came through that repository,
    /// or one of its manifests names it. The rule that keeps one repository from reading
    /// another's private layers.
    func isLinked(_ repository: RepositoryKey, _ digest: Digest) async throws(IndexError) -> Bool
    /// Cached manifests of `repository` that name `blob` (at most `limit`): their descriptors
    /// give the blob's size when an upstream sends it without one.
    func manifests(naming blob: Digest, in repository: RepositoryKey, limit: Int) async throws(IndexError) -> [ManifestRecord]
    /// Manifests in `repository` whose `subject` is `subject`, by digest.
    func referrers(_ repository: RepositoryKey, subject: Digest) async throws(IndexError) -> [ReferrerRecord]
    /// Children of an index, in the index's order, with their platforms.
    func children(ofIndex digest: Digest) async throws(IndexError) -> [ChildRecord]
    func blobSize(_ digest: Digest) async throws(IndexError) -> Int64?
    /// Every tag with its digest and the total size of what it reaches, for `ls`.
    func listing() async throws(IndexError) -> [ListingRow]
    /// Bytes of a manifest plus everything it reaches that is stored, counted once.
    func totalSize(_ root: Digest) async throws(IndexError) -> Int64
    /// Every tag of a repository called any of `names`, on any upstream (sizes are 0).
    func taggedRepositories(named names: [RepositoryName]) async throws(IndexError) -> [ListingRow]

    // MARK: Writes

    /// Records verified content at once: blobs, manifests, links, tags, pins. `now` is
    /// Unix seconds. Call only after every blob in the batch is published in the store.
    func record(_ batch: ContentBatch, now: Int64) async throws(IndexError)
    /// Records that the upstream confirmed `tag` still points where it did.
    func touchTag(_ repository: RepositoryKey, _ tag: Tag, checkedAt: Int64) async throws(IndexError)
    /// Claims the next revalidation of `tag` for the caller, a compare-and-set on its
    /// `checked_at`: moves it from `observedCheckedAt` (what the caller read) to `checkedAt`
    /// only if it still is `observedCheckedAt`. Of any number of callers (replicas of a fleet)
    /// that read the same row, exactly one gets true and asks the upstream; the others see the
    /// row checked and serve what it says. False also when the tag is gone.
    func claimTagRevalidation(_ repository: RepositoryKey, _ tag: Tag, observedCheckedAt: Int64, checkedAt: Int64) async throws(IndexError) -> Bool

    // MARK: The cache's life

    /// Bytes and objects recorded as stored.
    func usage() async throws(IndexError) -> (bytes: Int64, objects: Int)
    /// Writes batched access times (Unix milliseconds), keeping the later of old and new.
    func recordAccess(_ times: [Digest: Int64]) async throws(IndexError)
    /// Pins or unpins a manifest (an image root). Returns false when it is not cached.
    @discardableResult
    func setPinned(_ digest: Digest, _ pinned: Bool) async throws(IndexError) -> Bool
    /// Pinned roots, with the tags (`upstream/repository:tag`) that point at them.
    func pinned() async throws(IndexError) -> [(digest: Digest, references: [String])]
    /// Evicts least recently used images, then loose blobs, until the recorded total is at
    /// most `maxBytes`, at once. The caller deletes the returned blobs' files after. `inUse`
    /// blobs (open responses) keep their row: they count as freed and a later pass takes them.
    /// With `dryRun` nothing changes and the plan is returned.
    func evict(toAtMost maxBytes: Int64, dryRun: Bool, inUse: @escaping @Sendable (Digest) -> Bool) async throws(IndexError) -> EvictionPlan
    /// Every blob row: digest and recorded size, for `verify` and `gc`.
    func allBlobs() async throws(IndexError) -> [(digest: Digest, size: Int64)]
    /// Drops blob rows (not manifests, tags or links), for blobs removed from the store; a
    /// later fill records them again.
    func forgetBlobs(_ digests: [Digest]) async throws(IndexError)
}

extension MetadataStore {
    public func manifests(naming blob: Digest, in repository: RepositoryKey) async throws(IndexError) -> [ManifestRecord] {
        try await manifests(naming: blob, in: repository, limit: 4)
    }

    /// Records `batch` as of the system clock.
    public func record(_ batch: ContentBatch) async throws(IndexError) {
        try await record(batch, now: Int64(Date().timeIntervalSince1970))
    }

    public func evict(toAtMost maxBytes: Int64, dryRun: Bool = false) async throws(IndexError) -> EvictionPlan {
        try await evict(toAtMost: maxBytes, dryRun: dryRun, inUse: { _ in false })
    }
}
