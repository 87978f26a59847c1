import Foundation
import MetadataIndex
import OCI
import Testing

/// What every `MetadataStore` must do, whatever keeps its rows: tags, links, index children,
/// access times, pins, eviction order, usage, the schema across a reopen, and readers that
/// keep answering while a writer writes. Run by each implementation's test (SQLite now,
/// PostgreSQL later), as distribution's storage drivers all pass one `testsuites` package.
///
/// `open(name)` gives a store named `name`: a new name is an empty store, and opening a name
/// again gives the same data (a reopened file, a reconnected database).
struct MetadataStoreConformance {
    let open: @Sendable (_ name: String) async throws -> any MetadataStore

    func run() async throws {
        try await tagsAreSetMovedAndListedSorted()
        try await aTagRevalidationIsClaimedOnce()
        try await linksScopeContentToRepositories()
        try await childrenOfAnIndexKeepTheirOrderAndPlatforms()
        try await accessTimesKeepTheLaterAndOrderEviction()
        try await pinsKeepImagesAndRefuseUnknownDigests()
        try await evictionKeepsSharedLayersAndFollowsChildrenUse()
        try await aDryRunChangesNothing()
        try await usageCountsEveryBlobOnce()
        try await theSchemaIsCurrentAndAReopenKeepsData()
        try await readersAnswerWhileAWriterWrites()
    }

    // MARK: Content

    static let app = RepositoryKey(upstream: "registry.test", name: try! RepositoryName(parsing: "team/app"))
    static let other = RepositoryKey(upstream: "registry.test", name: try! RepositoryName(parsing: "team/other"))

    /// A digest standing for a layer or config.
    static func blob(_ label: String) -> Digest { DigestHasher.digest(of: Array(label.utf8)) }

    /// An image manifest over `layers` (each `size` bytes) and a config of its own, recorded in
    /// `repository`, tagged `tag`. Returns its digest.
    @discardableResult
    func image(_ store: any MetadataStore, _ name: String, tag: String?, layers: [String], size: Int64 = 1000,
               in repository: RepositoryKey = app, pin: Bool = false) async throws -> Digest {
        let config = Self.blob("config-" + name)
        let entries = layers.map { #"{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"\#(Self.blob($0))","size":\#(size)}"# }
        let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(config)","size":10},"layers":[\#(entries.joined(separator: ","))]}"#
        return try await Self.record(store, Array(text.utf8), tag: tag, blobs: layers.map { (Self.blob($0), size) } + [(config, 10)],
                                in: repository, pin: pin)
    }

    /// An index listing `children` with the architectures `architectures`.
    @discardableResult
    func index(_ store: any MetadataStore, tag: String?, children: [Digest], architectures: [String]) async throws -> Digest {
        let entries = zip(children, architectures).map { #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#($0)","size":1,"platform":{"os":"linux","architecture":"\#($1)"}}"# }
        let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(entries.joined(separator: ","))]}"#
        return try await Self.record(store, Array(text.utf8), tag: tag, blobs: [], in: Self.app, pin: false)
    }

    /// Records a manifest's bytes with its blobs, linked to `repository`, as a pull does.
    static func record(_ store: any MetadataStore, _ bytes: [UInt8], tag: String?, blobs: [(Digest, Int64)],
                       in repository: RepositoryKey, pin: Bool) async throws -> Digest {
        let digest = DigestHasher.digest(of: bytes)
        let document = try ManifestDocument(bytes: bytes, contentType: nil)
        var batch = ContentBatch()
        batch.addBlob(digest, size: Int64(bytes.count))
        for (blob, size) in blobs { batch.addBlob(blob, size: size) }
        batch.manifests.append(.init(digest: digest, size: Int64(bytes.count), document: document))
        batch.link(repository, digest)
        for (blob, _) in blobs { batch.link(repository, blob) }
        for child in document.manifests { batch.link(repository, child.digest) }
        if let tag { batch.tag(repository, try Tag(parsing: tag), digest, mediaType: document.mediaType, checkedAt: 100) }
        if pin { batch.pinned.insert(digest) }
        try await store.record(batch, now: 1_000)
        return digest
    }

    /// An access time after every record's own (records are at 1,000 s), `n` ms apart.
    static func at(_ n: Int64) -> Int64 { 2_000_000 + n }

    // MARK: The checks

    func tagsAreSetMovedAndListedSorted() async throws {
        let store = try await open("tags")
        let v1 = try await image(store, "v1", tag: "v2", layers: ["l1"])
        for tag in ["v10", "latest"] {
            var batch = ContentBatch()
            batch.tag(Self.app, try Tag(parsing: tag), v1, mediaType: MediaType.ociManifest, checkedAt: 100)
            try await store.record(batch, now: 1_000)
        }
        #expect(try await store.tags(Self.app) == ["latest", "v10", "v2"], "tags are listed sorted")
        let tagged = try #require(try await store.tag(Self.app, Tag(parsing: "v2")))
        #expect(tagged.digest == v1 && tagged.mediaType == MediaType.ociManifest && tagged.checkedAt == 100)

        // A tag moves to another digest; the old image stays, untagged by it.
        let v2 = try await image(store, "v2", tag: "v2", layers: ["l2"])
        #expect(try await store.tag(Self.app, Tag(parsing: "v2"))?.digest == v2)
        #expect(try await store.manifest(v1) != nil)
        try await store.touchTag(Self.app, Tag(parsing: "v2"), checkedAt: 500)
        #expect(try await store.tag(Self.app, Tag(parsing: "v2"))?.checkedAt == 500)
        #expect(try await store.tag(Self.other, Tag(parsing: "v2")) == nil)
        let elsewhere = RepositoryKey(upstream: "elsewhere.test", name: Self.app.name)
        #expect(try await store.tag(elsewhere, Tag(parsing: "v2")) == nil, "the upstream is part of the key")
        #expect(try await store.listing().map(\.tag) == ["latest", "v10", "v2"])
        #expect(try await store.taggedRepositories(named: [Self.app.name]).count == 3)
    }

    /// The fleet's one revalidation per tag per TTL: handles on one store (replicas) that read
    /// the same `checked_at` and claim at once have exactly one winner.
    func aTagRevalidationIsClaimedOnce() async throws {
        let replicas = [try await open("claims"), try await open("claims"), try await open("claims")]
        let digest = try await image(replicas[0], "claimed", tag: "c", layers: ["c"])  // checked at 100
        let tag = try Tag(parsing: "c")
        let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<12 {
                group.addTask {
                    try await replicas[i % replicas.count].claimTagRevalidation(Self.app, tag, observedCheckedAt: 100, checkedAt: 200 + Int64(i))
                }
            }
            return try await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
        }
        #expect(wins == 1, "\(wins) of 12 concurrent claims on one tag won")
        let claimed = try #require(try await replicas[1].tag(Self.app, tag))
        #expect(claimed.digest == digest && (200..<212).contains(claimed.checkedAt), "the winner's checked_at is the row's")

        // A claim on what was read before loses; on what is there now, wins (a release is one).
        #expect(try await replicas[2].claimTagRevalidation(Self.app, tag, observedCheckedAt: 100, checkedAt: 300) == false)
        #expect(try await replicas[2].claimTagRevalidation(Self.app, tag, observedCheckedAt: claimed.checkedAt, checkedAt: 100))
        #expect(try await replicas[0].tag(Self.app, tag)?.checkedAt == 100)
        // No row, no claim: another repository's, an unknown tag.
        #expect(try await replicas[0].claimTagRevalidation(Self.other, tag, observedCheckedAt: 100, checkedAt: 300) == false)
        #expect(try await replicas[0].claimTagRevalidation(Self.app, try Tag(parsing: "absent"), observedCheckedAt: 100, checkedAt: 300) == false)
        #expect(try await replicas[0].tag(Self.app, tag)?.checkedAt == 100)
    }

    func linksScopeContentToRepositories() async throws {
        let store = try await open("links")
        let manifest = try await image(store, "a", tag: "a", layers: ["private"])
        #expect(try await store.isLinked(Self.app, Self.blob("private")))
        #expect(try await !store.isLinked(Self.other, Self.blob("private")), "other never held the layer")
        #expect(try await store.repositoryExists(Self.app))
        #expect(try await !store.repositoryExists(Self.other))
        #expect(try await store.manifest(manifest, in: Self.app)?.linked == true)
        #expect(try await store.manifest(manifest, in: Self.other)?.linked == false)
        #expect(try await store.manifest(Self.blob("private"), in: Self.app) == nil, "a layer is not a manifest")
        #expect(try await store.manifests(naming: Self.blob("private"), in: Self.app).map(\.digest) == [manifest])
        #expect(try await store.manifests(naming: Self.blob("private"), in: Self.other).isEmpty)
        #expect(try await store.blobSize(Self.blob("private")) == 1000)
        #expect(try await store.blobSize(Self.blob("never")) == nil)
    }

    func childrenOfAnIndexKeepTheirOrderAndPlatforms() async throws {
        let store = try await open("children")
        let amd64 = try await image(store, "amd64", tag: nil, layers: ["amd64"])
        let arm64 = try await image(store, "arm64", tag: nil, layers: ["arm64"])
        let list = try await index(store, tag: "multi", children: [arm64, amd64], architectures: ["arm64", "amd64"])
        let children = try await store.children(ofIndex: list)
        #expect(children.map(\.digest) == [arm64, amd64], "in the index's order")
        #expect(children.map(\.platform?.architecture) == ["arm64", "amd64"])
        #expect(try await store.children(ofIndex: amd64).isEmpty)
        #expect(try await store.totalSize(list) > 2 * 1010, "an index reaches its children's blobs")
    }

    func accessTimesKeepTheLaterAndOrderEviction() async throws {
        let store = try await open("access")
        let a = try await image(store, "a", tag: "a", layers: ["a"])
        let b = try await image(store, "b", tag: "b", layers: ["b"])
        try await store.recordAccess([a: Self.at(20), b: Self.at(10)])
        #expect(try await store.evict(toAtMost: 0, dryRun: true).images.map(\.digest) == [b, a])
        // An older time never moves a blob back.
        try await store.recordAccess([a: Self.at(30), b: Self.at(5)])
        try await store.recordAccess([a: Self.at(1)])
        #expect(try await store.evict(toAtMost: 0, dryRun: true).images.map(\.digest) == [b, a])
        try await store.recordAccess([b: Self.at(40)])
        #expect(try await store.evict(toAtMost: 0, dryRun: true).images.map(\.digest) == [a, b])
        try await store.recordAccess([:])
    }

    func pinsKeepImagesAndRefuseUnknownDigests() async throws {
        let store = try await open("pins")
        let kept = try await image(store, "kept", tag: "kept", layers: ["shared", "kept"])
        let gone = try await image(store, "gone", tag: "gone", layers: ["shared", "gone"])
        try await store.recordAccess([kept: Self.at(1), gone: Self.at(2)])
        #expect(try await store.setPinned(kept, true))
        #expect(try await !store.setPinned(Self.blob("not cached"), true), "pinning an unknown digest is refused")
        #expect(try await store.pinned().map(\.digest) == [kept])
        #expect(try await store.pinned().first?.references == ["registry.test/team/app:kept"])

        let plan = try await store.evict(toAtMost: 0)
        #expect(plan.images.map(\.digest) == [gone], "the pinned image, though older, stays")
        #expect(try await store.manifest(kept) != nil)
        #expect(try await store.blobSize(Self.blob("shared")) == 1000, "what a pinned image references stays")
        #expect(try await store.blobSize(Self.blob("gone")) == nil)
        #expect(plan.bytesAfter > 0, "over the cap: the rest is pinned")

        #expect(try await store.setPinned(kept, false))
        #expect(try await store.pinned().isEmpty)
        _ = try await store.evict(toAtMost: 0)
        #expect(try await store.usage().objects == 0, "unpinned, it goes too")
    }

    func evictionKeepsSharedLayersAndFollowsChildrenUse() async throws {
        let store = try await open("eviction")
        let a = try await image(store, "a", tag: "a", layers: ["base", "a"])
        let b = try await image(store, "b", tag: "b", layers: ["base", "b"])
        let amd64 = try await image(store, "amd64", tag: nil, layers: ["amd64"])
        let list = try await index(store, tag: "multi", children: [amd64], architectures: ["amd64"])
        var batch = ContentBatch()
        batch.addBlob(Self.blob("loose"), size: 500)
        try await store.record(batch, now: 1_000)
        // The index itself was used first, its child last: it goes after a and b.
        try await store.recordAccess([Self.blob("loose"): Self.at(1), list: Self.at(2), a: Self.at(3), b: Self.at(4), amd64: Self.at(9)])

        let total = try await store.usage().bytes
        let first = try await store.evict(toAtMost: total - 500)
        #expect(first.images.isEmpty && first.blobs.map(\.digest) == [Self.blob("loose")], "a loose blob is a candidate of its own")

        let second = try await store.evict(toAtMost: total - 501)
        #expect(second.images.map(\.digest) == [a], "least recently used first")
        #expect(Set(second.blobs.map(\.digest)) == [a, Self.blob("a"), Self.blob("config-a")], "the shared base stays")
        #expect(second.images.first?.tags == ["registry.test/team/app:a"])
        #expect(try await store.blobSize(Self.blob("base")) == 1000)
        #expect(try await store.tag(Self.app, Tag(parsing: "a")) == nil, "its tags go with it")

        let rest = try await store.evict(toAtMost: 0)
        #expect(rest.images.map(\.digest) == [b, list], "an index is as recent as its most recent child")
        #expect(try await store.manifest(amd64) == nil, "a child only that index listed goes with it")
        #expect(try await store.usage().objects == 0)
        #expect(rest.bytesAfter == 0)
    }

    func aDryRunChangesNothing() async throws {
        let store = try await open("dry")
        let a = try await image(store, "a", tag: "a", layers: ["a"])
        let before = try await store.usage()
        let plan = try await store.evict(toAtMost: 0, dryRun: true)
        #expect(plan.images.map(\.digest) == [a] && plan.bytesFreed == before.bytes)
        let after = try await store.usage()
        #expect(after.bytes == before.bytes && after.objects == before.objects)
        #expect(try await store.tags(Self.app) == ["a"])
        // In use: kept, counted as freed, and not deleted.
        let held = try await store.evict(toAtMost: 0, dryRun: false, inUse: { $0 == Self.blob("a") })
        #expect(held.skippedInUse == [Self.blob("a")])
        #expect(try await store.blobSize(Self.blob("a")) == 1000)
    }

    func usageCountsEveryBlobOnce() async throws {
        let store = try await open("usage")
        #expect(try await store.usage().objects == 0)
        let a = try await image(store, "a", tag: "a", layers: ["shared", "a"], size: 100)
        let aBytes = try #require(try await store.blobSize(a))
        let b = try await image(store, "b", tag: "b", layers: ["shared"], size: 100)
        let bBytes = try #require(try await store.blobSize(b))
        let usage = try await store.usage()
        #expect(usage.objects == 6, "two manifests, two configs, two layers")
        #expect(usage.bytes == 200 + 20 + aBytes + bBytes, "the shared layer counts once")
        #expect(try await store.allBlobs().count == 6)
        try await store.forgetBlobs([Self.blob("a")])
        #expect(try await store.usage().objects == 5)
    }

    func theSchemaIsCurrentAndAReopenKeepsData() async throws {
        let first = try await open("reopen")
        let version = try await first.schemaVersion()
        #expect(version > 0)
        let a = try await image(first, "a", tag: "a", layers: ["a"])
        let again = try await open("reopen")
        #expect(try await again.schemaVersion() == version, "a reopen migrates nothing more")
        #expect(try await again.tag(Self.app, Tag(parsing: "a"))?.digest == a)
        #expect(try await again.blobSize(Self.blob("a")) == 1000)
    }

    func readersAnswerWhileAWriterWrites() async throws {
        let store = try await open("concurrent")
        let seed = try await image(store, "seed", tag: "seed", layers: ["seed"])
        try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask {
                for i in 0..<40 { try await image(store, "w\(i)", tag: "w\(i)", layers: ["w\(i)"]) }
                return 0
            }
            for _ in 0..<8 {
                group.addTask {
                    var answered = 0
                    for _ in 0..<50 {
                        // Every read sees a committed state: the seed image, linked, whole.
                        guard try await store.manifest(seed, in: Self.app)?.linked == true,
                              try await store.blobSize(Self.blob("seed")) == 1000 else { return -1 }
                        answered += 1
                    }
                    return answered
                }
            }
            var total = 0
            for try await answered in group {
                #expect(answered >= 0, "a read missed committed data while the writer wrote")
                total += answered
            }
            #expect(total == 8 * 50)
        }
        #expect(try await store.tags(Self.app).count == 41)
    }
}
