import Foundation
import OCI
import Testing

/// Damage to the cache on disk: `registry-mirror verify` finds a corrupted blob and
/// `--repair` plus a pull heals it; a truncated file is fetched again instead of served.
@Suite("registry-mirror verify and repair", .serialized)
struct PullThroughVerifyTests {
    /// What a test gets after one image was pulled through a mirror whose data directory it knows.
    struct Cached {
        let upstream: DistributionRegistry
        let mirror: MirrorProcess
        let data: URL
        /// The first layer, and its file in the cache.
        let victim: Digest
        let blobFile: URL
    }

    /// Pushes an image, pulls it through a fresh mirror, waits for its first layer's cache
    /// file, runs `body`, and stops the mirror.
    static func withCachedLayer(_ name: String, _ body: (PullThroughScope, Cached) async throws -> Void) async throws {
        try await PullThroughScope.run(name) { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: PullThroughTests.seed()), to: upstream.host, "test/img", tag: "v1")
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")
            let victim = try #require(image.layers.first)
            let base = scope.unique("\(name)-mirror")
            let data = base.appendingPathComponent("data")
            let mirror = try await MirrorProcess.start(
                dataDirectory: data, logDirectory: base.appendingPathComponent("logs"),
                extraArguments: ["--upstream", "http://\(upstream.host)"])
            do {
                let first = try await scope.pull("\(mirror.host)/test/img:v1")
                try #require(first.result.succeeded, "\(first.result.summary)")
                let blobFile = data.appendingPathComponent("blobs/sha256/\(victim.hex.prefix(2))/\(victim.hex)")
                try await waitUntil("the layer to be published in the cache") { FileManager.default.fileExists(atPath: blobFile.path) }
                try await body(scope, Cached(upstream: upstream, mirror: mirror, data: data, victim: victim, blobFile: blobFile))
            } catch {
                await mirror.stop()
                throw error
            }
            await mirror.stop()
        }
    }

    @Test("verify finds a corrupted cached blob; --repair plus a pull heals it")
    func verifyRepairHeals() async throws {
        try await Self.withCachedLayer("verify") { scope, cached in
            let (upstream, mirror, data, victim, blobFile) = (cached.upstream, cached.mirror, cached.data, cached.victim, cached.blobFile)
            #expect(try await MirrorCLI.run(["verify", "--data-dir", data.path]).succeeded, "a fresh cache verifies clean")

            var bytes = try Files.read(blobFile)
            bytes[bytes.count / 2] ^= 0xFF
            try Files.write(bytes, to: blobFile)

            let check = try await MirrorCLI.run(["verify", "--data-dir", data.path])
            #expect(check.status == 1, "\(check.summary)")
            #expect(check.stdout.contains("corrupt \(victim)"), "\(check.summary)")

            let repair = try await MirrorCLI.run(["verify", "--repair", "--data-dir", data.path])
            #expect(repair.succeeded, "\(repair.summary)")
            #expect(!FileManager.default.fileExists(atPath: blobFile.path))

            let mark = await PullThroughTests.mark(upstream)
            let second = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(second.result.succeeded, "\(second.result.summary)")
            let gets = PullThroughLog.blobGets(await upstream.requests(since: mark))
            #expect(gets["/v2/test/img/blobs/\(victim)"]?.count == 1, "the removed layer was fetched again, once")
            #expect(gets.count == 1, "nothing else was fetched: \(gets.keys.sorted())")
            try await waitUntil("the healed layer to be published") { FileManager.default.fileExists(atPath: blobFile.path) }
            #expect(try Files.read(blobFile).sha256 == victim)
            #expect(try await MirrorCLI.run(["verify", "--data-dir", data.path]).succeeded, "healed cache verifies clean")
        }
    }

    @Test("a cached blob truncated on disk is fetched again on the next pull, not served")
    func truncatedCacheFileHealsOnPull() async throws {
        try await Self.withCachedLayer("truncated") { _, cached in
            let (upstream, mirror, victim, blobFile) = (cached.upstream, cached.mirror, cached.victim, cached.blobFile)
            let bytes = try Files.read(blobFile)
            try Files.write(Array(bytes.prefix(bytes.count / 2)), to: blobFile)

            let mark = await PullThroughTests.mark(upstream)
            let response = try RawHTTP.request("GET", port: mirror.port, path: "/v2/test/img/blobs/\(victim)")
            #expect(response.status == 200)
            #expect(response.body.sha256 == victim, "the client gets the whole blob, not the truncated file")
            let gets = PullThroughLog.blobGets(await upstream.requests(since: mark))
            #expect(gets["/v2/test/img/blobs/\(victim)"]?.count == 1, "the damaged layer was fetched again")
            try await waitUntil("the healed layer to be published") {
                (try? Files.read(blobFile).count) == bytes.count
            }
            #expect(try Files.read(blobFile).sha256 == victim)
        }
    }
}
