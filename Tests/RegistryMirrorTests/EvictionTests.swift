import ContentStore
import Foundation
import Logging
import MetadataIndex
import Mirror
import OCI
import Testing

/// Eviction against a real SQLite index (and, for `CacheMaintenance`, a real store).
@Suite struct EvictionTests {
    let repository = RepositoryKey(upstream: "registry.test", name: try! RepositoryName(parsing: "app"))

    /// A blob digest and size that stand for a layer or config.
    static func blob(_ label: String) -> Digest { DigestHasher.digest(of: Array(label.utf8)) }

    /// Records an image manifest over `blobs` (each `size` bytes), tagged `tag`. Returns its digest.
    @discardableResult
    func image(_ index: any MetadataStore, _ tag: String?, blobs: [String], size: Int64 = 1000, pin: Bool = false) async throws -> Digest {
        let layers = blobs.map { #"{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"\#(Self.blob($0))","size":\#(size)}"# }
        let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(Self.blob("config-" + (tag ?? blobs.joined())))","size":10},"layers":[\#(layers.joined(separator: ","))]}"#
        return try await record(index, Array(text.utf8), tag: tag, blobs: blobs.map { (Self.blob($0), size) } + [(Self.blob("config-" + (tag ?? blobs.joined())), 10)], pin: pin)
    }

    func record(_ index: any MetadataStore, _ bytes: [UInt8], tag: String?, blobs: [(Digest, Int64)], pin: Bool) async throws -> Digest {
        try await MetadataStoreConformance.record(index, bytes, tag: tag, blobs: blobs, in: repository, pin: pin)
    }

    func tags(_ index: any MetadataStore) async throws -> [String] { try await index.tags(repository) }

    /// An access time after every record's own (access times only move forward).
    static func later(_ n: Int64) -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) + 60_000 + n }

    @Test func leastRecentlyUsedImageGoesFirstAndSharedLayersStay() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        let a = try await image(index, "a", blobs: ["base", "a"])
        let b = try await image(index, "b", blobs: ["base", "b"])
        let c = try await image(index, "c", blobs: ["base", "c"], pin: true)
        try await index.recordAccess([a: Self.later(3000), b: Self.later(1000), c: Self.later(500)])
        let total = try await index.usage().bytes

        // Room for all but one image's own layer: b (least recently used) goes.
        let plan = try await index.evict(toAtMost: total - 500)
        #expect(plan.images.map(\.digest) == [b])
        #expect(plan.images.first?.tags == ["registry.test/app:b"])
        #expect(Set(plan.blobs.map(\.digest)) == [b, Self.blob("b"), Self.blob("config-b")])
        await #expect(try tags(index) == ["a", "c"])
        #expect(try await index.blobSize(Self.blob("base")) == 1000)

        // Down to nothing: a goes; the pinned c and the base layer it uses stay.
        let rest = try await index.evict(toAtMost: 0)
        #expect(rest.images.map(\.digest) == [a])
        await #expect(try tags(index) == ["c"])
        #expect(try await index.blobSize(Self.blob("base")) == 1000)
        #expect(try await index.blobSize(Self.blob("a")) == nil)
        #expect(rest.bytesAfter == (try await index.usage().bytes))

        // Unpinned, c goes, and the base with it.
        try await index.setPinned(c, false)
        _ = try await index.evict(toAtMost: 0)
        #expect(try await index.usage().objects == 0)
    }

    @Test func anIndexGoesWithTheChildrenOnlyItLists() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        let amd64 = try await image(index, nil, blobs: ["amd64"])
        let arm64 = try await image(index, nil, blobs: ["arm64"])
        func list(_ children: [Digest], _ label: String) -> [UInt8] {
            let entries = children.map { #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#($0)","size":1,"platform":{"os":"linux","architecture":"\#(label)"}}"# }
            return Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(entries.joined(separator: ","))]}"#.utf8)
        }
        let both = try await record(index, list([amd64, arm64], "x"), tag: "both", blobs: [], pin: false)
        let shared = try await record(index, list([arm64], "y"), tag: "arm-only", blobs: [], pin: false)
        try await index.recordAccess([both: Self.later(1), shared: Self.later(2)])
        // Children are not candidates of their own; the oldest root is `both`.
        let plan = try await index.evict(toAtMost: (try await index.usage().bytes) - 1)
        #expect(plan.images.map(\.digest) == [both])
        #expect(try await index.manifest(amd64) == nil, "a child only `both` listed stays behind")
        #expect(try await index.blobSize(Self.blob("amd64")) == nil)
        #expect(try await index.manifest(arm64) != nil, "a child another index lists was removed")
        #expect(try await index.blobSize(Self.blob("arm64")) == 1000)
        #expect(try await index.children(ofIndex: shared).map(\.digest) == [arm64])
    }

    @Test func looseBlobsAreCandidatesAndInUseBlobsWait() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        var batch = ContentBatch()
        batch.addBlob(Self.blob("loose"), size: 5000)
        try await index.record(batch)
        let a = try await image(index, "a", blobs: ["a"])
        try await index.recordAccess([Self.blob("loose"): Self.later(1), a: Self.later(2)])

        // Dry run: the plan, and nothing changed.
        let dry = try await index.evict(toAtMost: 0, dryRun: true)
        #expect(dry.blobs.map(\.digest).first == Self.blob("loose"))
        #expect(dry.images.map(\.digest) == [a])
        #expect(try await index.blobSize(Self.blob("loose")) == 5000)
        #expect(try await tags(index) == ["a"])

        // The loose blob is in use: kept, and counted as freed so `a` need not go.
        let plan = try await index.evict(toAtMost: (try await index.usage().bytes) - 5000, dryRun: false, inUse: { $0 == Self.blob("loose") })
        #expect(plan.skippedInUse == [Self.blob("loose")])
        #expect(plan.images.isEmpty && plan.blobs.isEmpty)
        #expect(try await index.blobSize(Self.blob("loose")) == 5000)
        await #expect(try tags(index) == ["a"])
    }

    @Test func maintenanceDeletesFilesButNotLeasedOnes() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        let maintenance = CacheMaintenance(store: store, index: index, maxBytes: 0, logger: Logger(label: "test"))
        var digests: [Digest] = []
        var batch = ContentBatch()
        for label in ["one", "two"] {
            let bytes = Array(label.utf8)
            let digest = DigestHasher.digest(of: bytes)
            try await store.write(bytes, as: digest)
            batch.addBlob(digest, size: Int64(bytes.count))
            digests.append(digest)
        }
        try await index.record(batch)
        var lease: BlobLease? = maintenance.lease(digests[1])
        try await maintenance.evict()
        #expect(store.size(of: digests[0]) == nil)
        #expect(store.size(of: digests[1]) == 3, "a leased blob was deleted")
        withExtendedLifetime(lease) {}
        lease = nil
        try await maintenance.evict()
        #expect(store.size(of: digests[1]) == nil)
        #expect(try await index.usage().objects == 0)
    }

    @Test func accessTimesAreBatchedUntilFlushed() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        let maintenance = CacheMaintenance(store: store, index: index, maxBytes: nil, logger: Logger(label: "test"))
        let old = try await image(index, "old", blobs: ["x"])
        let new = try await image(index, "new", blobs: ["y"])
        func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
        try await index.recordAccess([old: now() + 1])
        try await Task.sleep(for: .milliseconds(10))
        try await index.recordAccess([new: now() + 1])
        try await Task.sleep(for: .milliseconds(10))
        maintenance.touch(old)
        // Not yet written: `old` is still the least recently used.
        #expect(try await index.evict(toAtMost: 0, dryRun: true).images.first?.digest == old)
        await maintenance.flush()
        #expect(try await index.evict(toAtMost: 0, dryRun: true).images.first?.digest == new)
    }

    @Test func strayFilesAreSweptOnlyWhenOld() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let index = try SQLiteMetadataStore(path: dir.path + "/index.sqlite")
        let maintenance = CacheMaintenance(store: store, index: index, maxBytes: nil, logger: Logger(label: "test"))
        var digests: [String: Digest] = [:]
        for label in ["stray-old", "stray-new", "indexed-old"] {
            let bytes = Array(label.utf8)
            digests[label] = DigestHasher.digest(of: bytes)
            try await store.write(bytes, as: digests[label]!)
        }
        var batch = ContentBatch()
        batch.addBlob(digests["indexed-old"]!, size: 11)
        try await index.record(batch)
        let old = Date().addingTimeInterval(-7 * 3600)
        for label in ["stray-old", "indexed-old"] {
            try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: store.path(of: digests[label]!))
        }
        #expect(try await maintenance.sweepUnindexed(dryRun: true).map(\.digest) == [digests["stray-old"]!])
        #expect(store.size(of: digests["stray-old"]!) != nil, "a dry run deleted a file")
        #expect(try await maintenance.sweepUnindexed().map(\.digest) == [digests["stray-old"]!])
        #expect(store.size(of: digests["stray-old"]!) == nil)
        #expect(store.size(of: digests["stray-new"]!) != nil, "a file whose record may still come was removed")
        #expect(store.size(of: digests["indexed-old"]!) != nil)
    }
}
