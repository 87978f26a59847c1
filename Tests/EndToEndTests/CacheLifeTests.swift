import Foundation
import OCI
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Seeding, pins and eviction under a size cap, against a real docker-registry upstream.
@Suite("Cache life: seed, pins, eviction", .serialized)
struct CacheLifeTests {
    // MARK: Seed

    @Test("seed copies only the chosen platform, keeps the index byte-exact, pins, and lists failures")
    func seedChoosesPlatformsAndPins() async throws {
        try await PullThroughScope.run("seed") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.multiImage(seed: 41), to: upstream.host, "test/multi")
            try await scope.push(try scope.singleImage(seed: 42), to: upstream.host, "test/single")
            let multi = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/multi", tag: "v1")
            let single = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/single", tag: "v1")
            let data = scope.unique("seed-data")

            let seed = try await MirrorCLI.run([
                "seed", "--upstream", "http://\(upstream.host)", "--data-dir", data.path, "--platform", "linux/arm64",
                "\(upstream.host)/test/multi:v1", "test/single:v1", "\(upstream.host)/test/absent:v1",
            ])
            // One image is missing upstream: exit 1, the failure listed at the end, the others seeded.
            #expect(seed.status == 1, "\(seed.summary)")
            #expect(seed.stderr.contains("1 image(s) failed") && seed.stderr.contains("test/absent:v1"), "\(seed.stderr)")
            #expect(seed.stdout.contains("seeded \(upstream.host)/test/multi:v1 \(multi.rootDigest)"), "\(seed.stdout)")
            #expect(seed.stdout.contains("(1/3 platforms)"), "\(seed.stdout)")
            #expect(seed.stdout.contains("seeded \(upstream.host)/test/single:v1 \(single.rootDigest)"), "\(seed.stdout)")
            // Not a terminal: plain progress lines.
            #expect(seed.stdout.contains("seed: \(upstream.host)/test/multi:v1: done"), "\(seed.stdout)")

            let index = try ManifestDocument(bytes: multi.rootBytes)
            let arm64 = try #require(index.manifests.first { $0.platform?.architecture == "arm64" })
            let amd64 = try #require(index.manifests.first { $0.platform?.architecture == "amd64" })
            let arm64Layers = try ManifestDocument(bytes: try #require(multi.manifests[arm64.digest])).layers.map(\.digest)
            let amd64Layers = try ManifestDocument(bytes: try #require(multi.manifests[amd64.digest])).layers.map(\.digest)
            for layer in arm64Layers + single.layers { #expect(CacheFiles.exists(layer, in: data), "\(layer) was not seeded") }
            for layer in amd64Layers { #expect(!CacheFiles.exists(layer, in: data), "amd64 layer \(layer) was seeded") }

            let pins = try await MirrorCLI.run(["pin", "--data-dir", data.path])
            #expect(pins.stdout.contains(multi.rootDigest.description) && pins.stdout.contains(single.rootDigest.description), "\(pins.summary)")

            // Offline, the index is the upstream's bytes, arm64 is served and amd64 is a clear 404.
            await upstream.stop()
            let mirror = try await scope.mirrorOn(data, ["--offline", "--upstream", "http://\(upstream.host)"])
            let served = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/multi/manifests/v1")
            #expect(served.status == 200 && served.body == multi.rootBytes)
            #expect(try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/multi/manifests/\(arm64.digest)").status == 200)
            let absent = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/multi/manifests/\(amd64.digest)")
            #expect(absent.status == 404 && String(decoding: absent.body, as: UTF8.self).contains("MANIFEST_UNKNOWN"), "\(absent)")
        }
    }

    // MARK: Eviction

    @Test("over the cap, the least recently used image goes first; shared layers and pins stay; an evicted image fills again")
    func evictionIsLRUAndKeepsSharedAndPinned() async throws {
        try await PullThroughScope.run("evict") { scope in
            let upstream = try await scope.registry()
            let images = try CacheImages.sharingABase(scope, names: ["a", "b", "c", "d"], seed: 77)
            for (name, image) in images { try await scope.push(image, to: upstream.host, "evict/\(name)") }
            let data = scope.unique("evict-data")
            // base 400 kB + 300 kB per image: d (pinned) and a and b fit under 1.5 MB, c does not.
            let config = try CacheImages.config(in: scope, maxSize: "1500000", interval: "1s")
            let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(upstream.host)", "--config", config.path])
            // skopeo compresses the layers on push: the upstream's digests are the ones to follow.
            var held: [String: PullThroughUpstreamImage] = [:]
            for name in ["a", "b", "c", "d"] { held[name] = try PullThroughHTTP.upstreamImage(port: upstream.port, "evict/\(name)", tag: "v1") }
            let base = held["a"]!.layers[0]
            try #require(held.values.allSatisfy { $0.layers.count == 2 && $0.layers[0] == base })
            func unique(_ name: String) -> Digest { held[name]!.layers[1] }

            // d is seeded into the running server's data directory, pinned.
            let seed = try await MirrorCLI.run(["seed", "--upstream", "http://\(upstream.host)", "--data-dir", data.path, "evict/d:v1"])
            try #require(seed.succeeded, "\(seed.summary)")
            for name in ["a", "b", "a"] {
                let (pull, _) = try await scope.pull("\(mirror.host)/evict/\(name):v1", all: false)
                try #require(pull.succeeded, "\(pull.summary)")
            }
            #expect(try await CacheFiles.tags(data) == ["evict/a:v1", "evict/b:v1", "evict/d:v1"])
            // c goes over the cap: b is the least recently used (a was pulled again after it).
            let (pullC, _) = try await scope.pull("\(mirror.host)/evict/c:v1", all: false)
            try #require(pullC.succeeded, "\(pullC.summary)")
            try await waitFor("b to be evicted") { try await CacheFiles.tags(data) == ["evict/a:v1", "evict/c:v1", "evict/d:v1"] }
            #expect(!CacheFiles.exists(unique("b"), in: data), "b's own layer survived its eviction")
            for name in ["a", "c", "d"] { #expect(CacheFiles.exists(unique(name), in: data), "\(name)'s layer is gone\n\(mirror.stderr.suffix(6000))") }
            #expect(CacheFiles.exists(base, in: data), "the shared base layer was evicted while images use it")

            // A dry run reports and changes nothing; everything but the pinned d would go.
            let dry = try await MirrorCLI.run(["gc", "--dry-run", "--max-size", "1", "--data-dir", data.path])
            #expect(dry.succeeded && dry.stdout.contains("would evict evict/a:v1") == false, "\(dry.summary)")
            #expect(dry.stdout.contains("would evict \(upstream.host)/evict/a:v1") && dry.stdout.contains("\(upstream.host)/evict/c:v1"), "\(dry.stdout)")
            #expect(!dry.stdout.contains("evict/d:v1"), "the dry run would evict the pinned image: \(dry.stdout)")
            #expect(dry.stdout.contains("still over the cap"), "\(dry.stdout)")
            #expect(try await CacheFiles.tags(data) == ["evict/a:v1", "evict/c:v1", "evict/d:v1"])

            // The evicted image fills again from the upstream: its own layer, not the cached base.
            let mark = upstream.requests.count
            let (again, _) = try await scope.pull("\(mirror.host)/evict/b:v1", all: false)
            try #require(again.succeeded, "\(again.summary)")
            let gets = PullThroughLog.blobGets(await upstream.requests(since: mark))
            #expect(gets.keys.contains { $0.hasSuffix(unique("b").description) }, "b's layer was not fetched again: \(gets.keys)")
            #expect(!gets.keys.contains { $0.hasSuffix(base.description) }, "the cached base layer was fetched again")

            // Unpinned, d goes too; with no image left, so does the base layer.
            let unpin = try await MirrorCLI.run(["unpin", "--data-dir", data.path, "\(upstream.host)/evict/d:v1"])
            #expect(unpin.succeeded, "\(unpin.summary)")
            let gc = try await MirrorCLI.run(["gc", "--max-size", "1", "--data-dir", data.path])
            #expect(gc.succeeded, "\(gc.summary)")
            #expect(try await CacheFiles.tags(data).isEmpty)
            #expect(!CacheFiles.exists(base, in: data), "the base layer outlived every image using it")
        }
    }

    @Test("a blob a response is streaming is not deleted under it; eviction takes it after")
    func streamingBlobSurvivesEviction() async throws {
        try await PullThroughScope.run("evict-lease") { scope in
            let upstream = try await scope.registry()
            // Random bytes do not compress: the pushed layer stays about 48 MiB.
            let big = try scope.bigImage(seed: 91, layerSizes: [48 << 20])
            let other = try scope.bigImage(seed: 92, layerSizes: [2_000_000])
            try await scope.push(big, to: upstream.host, "lease/big")
            try await scope.push(other, to: upstream.host, "lease/other")
            let data = scope.unique("lease-data")
            let config = try CacheImages.config(in: scope, maxSize: "49MiB", interval: "1s")
            let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(upstream.host)", "--config", config.path])
            let (pull, _) = try await scope.pull("\(mirror.host)/lease/big:v1", all: false)
            try #require(pull.succeeded, "\(pull.summary)")
            let held = try PullThroughHTTP.upstreamImage(port: upstream.port, "lease/big", tag: "v1")
            let layer = held.layers[0]
            let layerBytes = try RawHTTP.get(port: upstream.port, path: "/v2/lease/big/blobs/\(layer)").body

            // A slow client: reads the first bytes of the big layer and stops reading.
            let reader = try SlowReader(port: mirror.port, path: "/v2/lease/big/blobs/\(layer)")
            try reader.read(atLeast: 64 << 10)
            // Another image pushes the store over the cap: big is the least recently used.
            let (pullOther, _) = try await scope.pull("\(mirror.host)/lease/other:v1", all: false)
            try #require(pullOther.succeeded, "\(pullOther.summary)")
            try await waitFor("big's tag to be evicted") { try await CacheFiles.tags(data) == ["lease/other:v1"] }
            try await Task.sleep(for: .seconds(2))
            #expect(CacheFiles.exists(layer, in: data), "the streaming blob's file was deleted under the response")

            let body = try reader.readToEnd()
            #expect(body.count == layerBytes.count && body.sha256 == layer, "the streamed body is \(body.count) bytes")
            // Once the response is done, a later pass takes the blob.
            try await waitFor("the released blob to be evicted") { !CacheFiles.exists(layer, in: data) }
        }
    }
}

// MARK: - Support

/// Polls an async probe until it holds, or fails after `timeout`.
func waitFor(_ what: String, timeout: Duration = .seconds(30), probe: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    var last: (any Error)?
    while ContinuousClock.now < deadline {
        do {
            if try await probe() { return }
        } catch {
            last = error
        }
        try await Task.sleep(for: .milliseconds(200))
    }
    throw E2EError("timed out waiting for \(what)\(last.map { ": \($0)" } ?? "")")
}

enum CacheFiles {
    static func path(_ digest: Digest, in data: URL) -> String {
        data.path + "/blobs/\(digest.algorithm.rawValue)/\(digest.hex.prefix(2))/\(digest.hex)"
    }

    static func exists(_ digest: Digest, in data: URL) -> Bool {
        FileManager.default.fileExists(atPath: path(digest, in: data))
    }

    /// `repository:tag` of every cached tag, upstream host dropped, from `registry-mirror ls`.
    static func tags(_ data: URL) async throws -> [String] {
        let ls = try await MirrorCLI.list(dataDirectory: data)
        guard ls.succeeded else { throw E2EError("ls failed: \(ls.summary)") }
        return ls.stdout.split(separator: "\n").compactMap { line -> String? in
            guard let first = line.split(separator: " ").first, first.contains(":"), first.contains("/") else { return nil }
            return String(first.drop { $0 != "/" }.dropFirst())
        }.sorted()
    }
}

enum CacheImages {
    /// Images that share one 400 kB base layer, each with a 300 kB layer of its own.
    static func sharingABase(_ scope: PullThroughScope, names: [String], seed: UInt64) throws -> [(String, SyntheticImage)] {
        var rng = SeededGenerator(seed: seed)
        let base = Ustar.archive([("base.bin", rng.bytes(400_000))])
        return try names.map { name in
            let writer = try OCILayoutWriter(root: scope.unique("image-\(name)"), seed: seed)
            let layers = [
                try writer.writeBlob(base, mediaType: OCILayoutWriter.layerType),
                try writer.writeBlob(Ustar.archive([("\(name).bin", rng.bytes(300_000))]), mediaType: OCILayoutWriter.layerType),
            ]
            let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
            let config = try writer.writeBlob(Array(#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{}}"#.utf8),
                                              mediaType: OCILayoutWriter.configType)
            let manifestText = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":\#(config.descriptorJSON),"layers":[\#(layers.map(\.descriptorJSON).joined(separator: ","))]}"#
            let manifest = try writer.writeBlob(Array(manifestText.utf8), mediaType: MediaType.ociManifest)
            try writer.writeLayoutIndex(root: manifest, tag: "v1")
            let platform = SyntheticPlatform(os: "linux", architecture: "amd64", variant: nil, manifest: manifest, config: config, layers: layers)
            return (name, SyntheticImage(layout: writer.root, tag: "v1", root: manifest, platforms: [platform]))
        }
    }

    /// A config file with a size cap and a short eviction interval.
    static func config(in scope: PullThroughScope, maxSize: String, interval: String) throws -> URL {
        let url = scope.unique("config").appendingPathExtension("yaml")
        try "storage:\n  max_size: \(maxSize)\n  eviction_interval: \(interval)\n".write(to: url, atomically: true, encoding: .utf8)
        return url
    }
}

/// A client that reads a response as slowly as the test says.
final class SlowReader {
    let fd: Int32
    private var raw: [UInt8] = []
    private var headerEnd: Int?
    private var contentLength = 0

    init(port: Int, path: String) throws {
        fd = try RawHTTP.connectLoopback(port: port, timeout: 60)
        var small: Int32 = 16 << 10
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            throw E2EError("sending the request failed")
        }
    }

    deinit { close(fd) }

    /// Reads until at least `count` body bytes arrived.
    func read(atLeast count: Int) throws {
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        while headerEnd == nil || raw.count - headerEnd! < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return }
            raw.append(contentsOf: buffer[0..<n])
            if headerEnd == nil, let end = raw.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound {
                headerEnd = end
                let head = String(decoding: raw[..<end], as: UTF8.self)
                guard head.hasPrefix("HTTP/1.1 200") else { throw E2EError("unexpected response: \(head)") }
                for line in head.split(separator: "\r\n") where line.lowercased().hasPrefix("content-length:") {
                    contentLength = Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0
                }
            }
        }
    }

    func readToEnd() throws -> [UInt8] {
        try read(atLeast: Int.max)
        guard let headerEnd else { throw E2EError("no response head") }
        return Array(raw[headerEnd...].prefix(max(contentLength, 0)))
    }
}
