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

    /// Issue 10: one GET of a 500-child index made 500 upstream manifest GETs, each a pull on
    /// Docker Hub's rate limit. Now at most `prefetch_max_children` others, plus the
    /// configured platforms' children.
    @Test("an index of 40 children prefetches at most prefetch_max_children of them, plus the chosen platform's")
    func prefetchIsCapped() async throws {
        try await PullThroughScope.run("prefetch cap") { scope in
            let upstream = try await scope.registry()
            let repository = "test/wide"
            let config = Array(#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.utf8)
            let configDigest = try PullThroughHTTP.uploadBlob(port: upstream.port, repository, config)
            var children: [(digest: Digest, architecture: String, size: Int)] = []
            for i in 0..<40 {
                let architecture = i % 10 == 3 ? "arm64" : "amd64"
                let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(configDigest)","size":\#(config.count)},"layers":[],"annotations":{"n":"\#(i)"}}"#
                let bytes = Array(text.utf8)
                let put = try PullThroughHTTP.requestWithBody("PUT", port: upstream.port, path: "/v2/\(repository)/manifests/\(bytes.sha256)",
                                                              headers: [("Content-Type", MediaType.ociManifest)], body: bytes)
                #expect(put.status == 201, "pushing child \(i): \(put)")
                children.append((bytes.sha256, architecture, bytes.count))
            }
            let indexDigest = try Self.pushIndex(port: upstream.port, repository, children: children)
            let arm64 = children.filter { $0.architecture == "arm64" }.map(\.digest)
            #expect(arm64.count == 4)

            let file = scope.unique("config").appendingPathExtension("yaml")
            try """
                upstreams:
                  - name: up
                    url: http://\(upstream.host)
                    prefetch_platforms: [linux/arm64]
                    prefetch_max_children: 5
                """.write(to: file, atomically: true, encoding: .utf8)
            let mirror = try await scope.mirror(["--config", file.path])
            let mark = await PullThroughTests.mark(upstream)
            let response = try PullThroughHTTP.manifest(port: mirror.port, "/v2/\(repository)/manifests/v1")
            #expect(response.status == 200, "\(response)")

            let childGets = { (requests: [DistributionRegistry.Request]) in
                Set(requests.filter { $0.method == "GET" && $0.path.contains("/manifests/sha256:") && !$0.path.hasSuffix(indexDigest.description) }.map(\.path))
            }
            try await waitUntil("the chosen platform's children to be prefetched", timeout: .seconds(30)) {
                let gets = childGets(Array(upstream.requests.dropFirst(mark)))
                return arm64.allSatisfy { gets.contains("/v2/\(repository)/manifests/\($0)") }
            }
            try await Task.sleep(for: .seconds(1))
            let requests = await upstream.requests(since: mark)
            let fetched = childGets(requests)
            #expect(fetched.count == 4 + 5, "expected the 4 arm64 children and 5 others, got \(fetched.count):\n\(PullThroughLog.describe(requests))")
            let metrics = String(decoding: try RawHTTP.get(port: mirror.port, path: "/metrics").body, as: UTF8.self)
            #expect(metrics.contains(#"registry_mirror_prefetches_total{kind="manifest"} 9"#),
                    "prefetches not counted: \(metrics.split(separator: "\n").filter { $0.contains("prefetch") })")
        }
    }

    /// PUTs an OCI index over `children` as `v1`.
    @discardableResult
    static func pushIndex(port: Int, _ repository: String, children: [(digest: Digest, architecture: String, size: Int)]) throws -> Digest {
        let entries = children.map { child in
            #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#(child.digest)","size":\#(child.size),"platform":{"os":"linux","architecture":"\#(child.architecture)"}}"#
        }
        let index = Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(entries.joined(separator: ","))]}"#.utf8)
        let put = try PullThroughHTTP.requestWithBody("PUT", port: port, path: "/v2/\(repository)/manifests/v1",
                                                      headers: [("Content-Type", MediaType.ociIndex)], body: index)
        guard put.status == 201 else { throw E2EError("pushing the index: \(put)") }
        return index.sha256
    }
}
