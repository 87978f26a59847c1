import ContentStore
import Foundation
import Logging
import MetadataIndex
@testable import Mirror
import OCI
import Testing

/// The warm manifest-by-digest path answers from memory, and forgets what eviction removed.
@Suite struct ManifestHotPathTests {
    @Test func anEvictedManifestIsForgottenInMemoryAtOnce() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let local = f.registry.local
        let maintenance = CacheMaintenance(store: local.store, index: local.index, maxBytes: nil,
                                           logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let registry = PullThroughRegistry(local: local, upstreams: [f.upstream], maintenance: maintenance,
                                           logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let image = f.putImage(in: "lib/app", layer: "a")
        let repository = try f.key("lib/app")
        _ = try await registry.manifest(repository, .digest(image.manifest))
        let warm = try await registry.manifest(repository, .digest(image.manifest))
        #expect(warm.cacheResult == .hit && f.upstream.calls["manifestGet"] == 1)
        #expect(local.manifests.linked(image.manifest, in: repository) != nil, "the warm hit is answered from memory")
        #expect(local.manifests.linked(image.manifest, in: try f.key("lib/other")) == nil, "only for the repository the index named")

        try await maintenance.evict(toAtMost: 0)
        #expect(local.manifests.linked(image.manifest, in: repository) == nil)
        let again = try await registry.manifest(repository, .digest(image.manifest))
        #expect(again.cacheResult == .miss && f.upstream.calls["manifestGet"] == 2, "an evicted manifest was served from memory")
    }

    @Test func shardsSpreadDigestsAndKeepTheBound() {
        let cache = ManifestCache(capacity: 16 * 100)
        let digests = (0..<64).map { DigestHasher.digest(of: Array("m\($0)".utf8)) }
        for digest in digests { cache[digest] = Array(repeating: 1, count: 50) }
        let held = digests.filter { cache[$0] != nil }.count
        // Each of 16 shards holds at most 100 bytes: two 50-byte manifests.
        #expect(held <= 32 && held >= 16, "\(held) held")
        #expect(cache[digests[63]] != nil, "the newest entry stays")
    }
}
