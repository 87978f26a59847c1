import ContentStore
import Foundation
import Logging
import MetadataIndex
@testable import Mirror
import OCI
import Testing
import Upstream

/// A `PullThroughRegistry` over a real `LocalRegistry` (files and SQLite in a temporary
/// directory), a counting fake upstream and a clock that moves only when told.
struct PolicyFixture {
    let dir: TemporaryDirectory
    let clock = TestClock()
    let upstream = FakeUpstream()
    /// What `MirrorStats` counts, as `label kind=value`.
    let metrics = EventCounts()
    let registry: PullThroughRegistry
    let policy: UpstreamPolicy

    init(policy: UpstreamPolicy = UpstreamPolicy()) throws {
        self.policy = policy
        dir = try TemporaryDirectory()
        let local = LocalRegistry(store: try FileSystemStore(root: dir.path), index: try SQLiteMetadataStore(path: dir.path + "/index.sqlite"))
        registry = PullThroughRegistry(local: local, upstreams: [upstream], policies: [upstream.name: policy],
                                       stats: MirrorStats(factory: CountingMetrics(events: metrics)), clock: clock,
                                       logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
    }

    func key(_ name: String) throws -> RepositoryKey { RepositoryKey(upstream: upstream.name, name: try RepositoryName(parsing: name)) }

    /// Puts an image (a config and one layer) in `repository`; returns its manifest's digest and blobs.
    @discardableResult
    func putImage(in repository: String, tag: String? = nil, layer: String) -> (manifest: Digest, size: Int, blobs: [Digest]) {
        let config = Array(#"{"architecture":"amd64","os":"linux","layer":"\#(layer)"}"#.utf8)
        let layerBytes = Array("layer \(layer)".utf8)
        let configDigest = upstream.put(blob: config, in: repository)
        let layerDigest = upstream.put(blob: layerBytes, in: repository)
        let manifest = Array("""
            {"schemaVersion":2,"mediaType":"\(MediaType.ociManifest)",\
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\(configDigest)","size":\(config.count)},\
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"\(layerDigest)","size":\(layerBytes.count)}]}
            """.utf8)
        let digest = upstream.put(manifest: manifest, mediaType: MediaType.ociManifest, in: repository, tag: tag)
        return (digest, manifest.count, [configDigest, layerDigest])
    }

    func tag(_ repository: String, _ tag: String) async throws -> ManifestContent {
        try await registry.manifest(try key(repository), .tag(try Tag(parsing: tag)))
    }
}

/// The pull-through policy, in process: every count below is of calls the fake upstream saw.
@Suite("Pull-through policy")
struct PullThroughPolicyTests {
    @Test("a tag within its TTL asks nothing; at the TTL one HEAD revalidates it and restarts the TTL")
    func tagTTL() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let image = f.putImage(in: "lib/app", tag: "1", layer: "a")
        let cold = try await f.tag("lib/app", "1")
        #expect(cold.digest == image.manifest && cold.cacheResult == .miss)
        #expect(f.upstream.calls["manifestHead"] == 1 && f.upstream.calls["manifestGet"] == 1)

        f.clock.advance(by: .seconds(299))
        #expect(try await f.tag("lib/app", "1").cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 1)

        f.clock.advance(by: .seconds(1))
        let revalidated = try await f.tag("lib/app", "1")
        #expect(revalidated.digest == image.manifest && revalidated.cacheResult == .revalidated)
        #expect(f.upstream.calls["manifestHead"] == 2 && f.upstream.calls["manifestGet"] == 1)

        // The revalidation refreshed checked_at: another TTL of silence.
        f.clock.advance(by: .seconds(299))
        #expect(try await f.tag("lib/app", "1").cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 2)
    }

    @Test("a tag that moved is fetched by its new digest, never by tag")
    func movedTag() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        let moved = f.putImage(in: "lib/app", tag: "1", layer: "b")

        f.clock.advance(by: .seconds(300))
        let content = try await f.tag("lib/app", "1")
        #expect(content.digest == moved.manifest && content.cacheResult == .miss)
        #expect(f.upstream.calls["manifestHead"] == 2)
        #expect(f.upstream.calls["manifestGet \(moved.manifest)"] == 1 && f.upstream.calls["manifestGet"] == 2)
        #expect(f.upstream.calls["manifestGet 1"] == 0)
    }

    @Test("an upstream failing after the TTL: the cached digest, stale, with the Warning",
          arguments: [UpstreamError.Code.unavailable, .tooManyRequests])
    func staleIfError(_ failure: UpstreamError.Code) async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let image = f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.upstream.fail(.manifestHead, with: failure)
        f.clock.advance(by: .seconds(300))
        let content = try await f.tag("lib/app", "1")
        #expect(content.digest == image.manifest && content.cacheResult == .stale)
        #expect(content.warning?.hasPrefix("110") == true)
        #expect(f.upstream.calls["manifestHead"] == 2)
    }

    /// stale_if_error off, the upstream's failure is the answer; a 404 is no failure, never stale.
    @Test("no stale answer: with stale_if_error off, or for a 404", arguments: [
        (false, UpstreamError.Code.unavailable, MirrorError.Code.upstreamUnavailable),
        (true, .notFound, .manifestUnknown),
    ])
    func noStaleAnswer(_ staleIfError: Bool, _ failure: UpstreamError.Code, _ expected: MirrorError.Code) async throws {
        var policy = UpstreamPolicy()
        policy.staleIfError = staleIfError
        let f = try PolicyFixture(policy: policy)
        defer { f.dir.remove() }
        f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.upstream.fail(.manifestHead, with: failure)
        f.clock.advance(by: .seconds(300))
        await #expect { _ = try await f.tag("lib/app", "1") } throws: { ($0 as? MirrorError)?.code == expected }
    }

    @Test("a blob cached through A is served under B after one HEAD under B, then by its link; C, refused, gets BLOB_UNKNOWN")
    func blobScoping() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let digest = f.upstream.put(blob: Array("shared layer".utf8), in: "team/a", "team/b")
        guard let fill = try await f.registry.blob(try f.key("team/a"), digest).fill else {
            Issue.record("a cold blob should be filling")
            return
        }
        _ = try await fill.completed()

        for _ in 0..<2 {
            guard try await f.registry.blob(try f.key("team/b"), digest).cacheResult == .hit else {
                Issue.record("the cached blob should be served under team/b")
                return
            }
        }
        #expect(f.upstream.calls["blobHead team/b"] == 1)
        #expect(try await f.registry.blobSize(try f.key("team/b"), digest) == 12)
        #expect(f.upstream.calls["blobHead team/b"] == 1)

        await #expect { _ = try await f.registry.blob(try f.key("team/c"), digest) } throws: { ($0 as? MirrorError)?.code == .blobUnknown }
        #expect(f.upstream.calls["blobHead team/c"] == 1)
        #expect(f.upstream.calls["blobGet"] == 1)
    }

    @Test("a manifest cached through A is served by digest under B only after a HEAD under B")
    func manifestScoping() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let image = f.putImage(in: "team/a", tag: "1", layer: "a")
        _ = try await f.tag("team/a", "1")
        await #expect { _ = try await f.registry.manifest(try f.key("team/b"), .digest(image.manifest)) } throws: {
            ($0 as? MirrorError)?.code == .manifestUnknown
        }
        #expect(f.upstream.calls["manifestHead team/b"] == 1)
        #expect(f.upstream.calls["manifestGet"] == 1)
    }

    @Test("concurrent revalidations of one tag share one HEAD")
    func tagSingleFlight() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.clock.advance(by: .seconds(300))
        f.upstream.hold(.manifestHead)
        let callers = 8
        try await withThrowingTaskGroup(of: ManifestContent.self) { group in
            for _ in 0..<callers { group.addTask { try await f.tag("lib/app", "1") } }
            // One caller is inside the held HEAD; the rest must have joined it.
            let entered = await f.upstream.calls.wait("manifestHead", reaches: 2)
            let joined = await f.metrics.wait("registry_mirror_singleflight_joins_total kind=manifest_tag", reaches: callers - 1, deadline: .seconds(5))
            f.upstream.release(.manifestHead)
            #expect(entered && joined)
            for try await content in group { #expect(content.cacheResult == .revalidated) }
        }
        #expect(f.upstream.calls["manifestHead"] == 2)
    }

    @Test("concurrent cold GETs of one blob share one download")
    func blobSingleFlight() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let digest = f.upstream.put(blob: Array(repeating: 7, count: 100_000), in: "lib/app")
        f.upstream.hold(.blobGet)
        let callers = 8
        let key = try f.key("lib/app")
        let fills = try await withThrowingTaskGroup(of: BlobFill?.self) { group in
            for _ in 0..<callers {
                group.addTask {
                    try await f.registry.blob(key, digest).fill
                }
            }
            return try await group.reduce(into: [BlobFill?]()) { $0.append($1) }
        }
        #expect(await f.upstream.calls.wait("blobGet", reaches: 1))
        f.upstream.release(.blobGet)
        for fill in fills {
            #expect(fill === fills[0])
            #expect(try await fill?.completed() == 100_000)
        }
        #expect(f.upstream.calls["blobGet"] == 1)
        #expect(f.metrics["registry_mirror_singleflight_joins_total kind=blob"] == callers - 1)
    }

    @Test("an index fetch prefetches its platforms' images and at most prefetchMaxChildren others")
    func prefetch() async throws {
        var policy = UpstreamPolicy()
        policy.prefetchPlatforms = [Platform(os: "linux", architecture: "arm64")]
        policy.prefetchMaxChildren = 2
        let f = try PolicyFixture(policy: policy)
        defer { f.dir.remove() }
        let architectures = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
        let children = architectures.map { f.putImage(in: "lib/app", layer: $0) }
        let descriptors = zip(architectures, children).map { arch, child in
            #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#(child.manifest)","size":\#(child.size),"platform":{"os":"linux","architecture":"\#(arch)"}}"#
        }
        let index = Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(descriptors.joined(separator: ","))]}"#.utf8)
        f.upstream.put(manifest: index, mediaType: MediaType.ociIndex, in: "lib/app", tag: "1")

        _ = try await f.tag("lib/app", "1")
        // The index, arm64 (its platform), then the first two uncached others.
        #expect(await f.upstream.calls.wait("manifestGet", reaches: 4))
        // arm64's blobs are downloading; a client's GET joins those downloads.
        #expect(await f.upstream.calls.wait("blobGet", reaches: 2))
        for blob in children[1].blobs {
            if let fill = try await f.registry.blob(try f.key("lib/app"), blob).fill { _ = try await fill.completed() }
        }
        #expect(f.upstream.calls["blobGet"] == 2)
        for child in children[0...2] { #expect(f.upstream.calls["manifestGet \(child.manifest)"] == 1) }
        for child in children[3...] { #expect(f.upstream.calls["manifestGet \(child.manifest)"] == 0) }
        #expect(f.upstream.calls["manifestGet"] == 4)
    }

    @Test("which children an index prefetches: its platforms always, others up to the cap and only uncached")
    func childrenToPrefetch() throws {
        var policy = UpstreamPolicy()
        policy.prefetchPlatforms = [Platform(os: "linux", architecture: "arm64")]
        policy.prefetchMaxChildren = 2
        let architectures = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]
        let children = architectures.map { arch in
            Descriptor(mediaType: MediaType.ociManifest, digest: DigestHasher.digest(of: Array(arch.utf8)), size: 1,
                       platform: Platform(os: "linux", architecture: arch))
        }
        let cached: Set<Digest> = [children[0].digest]
        let chosen = PullThroughRegistry.childrenToPrefetch(children, policy: policy) { cached.contains($0) }
        #expect(chosen.map { $0.platform?.architecture } == ["arm64", "ppc64le", "s390x"])
    }
}

/// A store whose writes fail, as an S3 server that refuses a concurrent PUT of one key does.
final class RefusingWritesStore: BlobStore {
    let inner: FileSystemStore
    init(inner: FileSystemStore) { self.inner = inner }
    func size(of digest: Digest) async -> Int64? { inner.size(of: digest) }
    func modificationDate(of digest: Digest) async -> Date? { inner.modificationDate(of: digest) }
    func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? { try inner.openBlob(digest) }
    func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        throw StoreError(.io, "the server refused the PUT")
    }
    func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] { try inner.read(digest, limit: limit) }
    func delete(_ digest: Digest) async throws(StoreError) { try inner.delete(digest) }
    func allDigests() async throws(StoreError) -> [Digest] { try inner.allDigests() }
}

@Suite struct ManifestWriteRaceTests {
    @Test("a manifest write that loses to another writer of the same bytes is served, not a 500")
    func lostWriteOfTheSameBytes() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let upstream = FakeUpstream()
        let files = try FileSystemStore(root: dir.path)
        let local = LocalRegistry(store: RefusingWritesStore(inner: files), index: try SQLiteMetadataStore(path: dir.path + "/index.sqlite"))
        let registry = PullThroughRegistry(local: local, upstreams: [upstream], logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let manifest = Array(#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.utf8)
        let digest = upstream.put(manifest: manifest, mediaType: MediaType.ociManifest, in: "lib/app", tag: "1")
        let key = RepositoryKey(upstream: upstream.name, name: try RepositoryName(parsing: "lib/app"))
        // Nobody stored it: the refused write is the mirror's failure.
        await #expect(throws: MirrorError.self) { _ = try await registry.manifest(key, .digest(digest)) }
        // Another writer stored the same bytes: served.
        try await files.write(manifest, as: digest)
        let content = try await registry.manifest(key, .digest(digest))
        #expect(content.bytes == manifest)
    }
}
