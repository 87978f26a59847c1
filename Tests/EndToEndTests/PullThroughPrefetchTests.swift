import Foundation
import OCI
import Testing

/// `prefetch_platforms`: fetching an index downloads the chosen platforms' blobs in the
/// background, before any client asks for them, and leaves the other platforms alone.
@Suite("registry-mirror prefetch of chosen platforms", .serialized)
struct PullThroughPrefetchTests {
    @Test("an index fetch prefetches linux/arm64's blobs only")
    func prefetchesChosenPlatform() async throws {
        try await PullThroughScope.run("prefetch") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.multiImage(seed: PullThroughTests.seed()), to: upstream.host, "test/multi", tag: "v1")
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/multi", tag: "v1")
            let index = try ManifestDocument(bytes: image.rootBytes)
            var blobsByArchitecture: [String: [Digest]] = [:]
            for child in index.manifests {
                let manifest = try ManifestDocument(bytes: try #require(image.manifests[child.digest]))
                blobsByArchitecture[try #require(child.platform?.architecture)] = manifest.blobs.map(\.digest)
            }
            let chosen = try #require(blobsByArchitecture["arm64"])
            let others = blobsByArchitecture.filter { $0.key != "arm64" }.values.flatMap { $0 }
            #expect(!others.isEmpty)

            let config = scope.unique("config").appendingPathExtension("yaml")
            try """
                upstreams:
                  - name: up
                    url: http://\(upstream.host)
                    prefetch_platforms: [linux/arm64]
                """.write(to: config, atomically: true, encoding: .utf8)
            let mirror = try await scope.mirror(["--config", config.path])
            let mark = await PullThroughTests.mark(upstream)

            // A client asks for the index only.
            let response = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/multi/manifests/v1")
            #expect(response.status == 200)

            let blobPath = { (digest: Digest) in "/v2/test/multi/blobs/\(digest)" }
            try await waitUntil("linux/arm64's blobs to be fetched upstream", timeout: .seconds(30)) {
                let gets = PullThroughLog.blobGets(Array(upstream.requests.dropFirst(mark)))
                return chosen.allSatisfy { gets[blobPath($0)] != nil }
            }
            // Give stray downloads a moment to show up before asserting there are none.
            let requests = await upstream.requests(since: mark)
            let gets = PullThroughLog.blobGets(requests)
            for digest in others {
                #expect(gets[blobPath(digest)] == nil, "\(digest) of another platform was fetched:\n\(PullThroughLog.describe(requests))")
            }
            // The prefetched blobs are served from the cache: no further upstream GET.
            let before = await PullThroughTests.mark(upstream)
            for digest in chosen {
                let blob = try RawHTTP.request("GET", port: mirror.port, path: blobPath(digest))
                #expect(blob.status == 200)
                #expect(blob.body.sha256 == digest, "\(digest) served intact")
            }
            let after = await upstream.requests(since: before)
            #expect(PullThroughLog.blobGets(after).isEmpty, "prefetched blobs came from the cache:\n\(PullThroughLog.describe(after))")
        }
    }
}
