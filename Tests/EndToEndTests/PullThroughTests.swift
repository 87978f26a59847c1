import Foundation
import OCI
import Testing

/// The mirror as a pull-through cache in front of real docker-registry upstreams: what it asks
/// the upstream (from the upstream's access log), what clients get, and what happens when the
/// tag moves, the upstream dies, there are two upstreams, repositories differ, or the
/// upstream wants Basic credentials. Each test starts its own upstream(s) and mirror.
@Suite("registry-mirror pull-through cache end to end", .serialized)
struct PullThroughTests {
    static func seed() -> UInt64 { UInt64.random(in: 1...(UInt64.max / 2)) }

    /// The access-log count once lines still in flight have landed.
    static func mark(_ registry: DistributionRegistry) async -> Int {
        try? await Task.sleep(for: .milliseconds(200))
        return registry.requests.count
    }

    static func mirrorLog(_ mirror: MirrorProcess) -> String {
        "\n--- mirror stderr (tail) ---\n\(mirror.stderr.suffix(4000))"
    }

    /// A pulled layout holds every digest of `image`, each file hashing to its name.
    static func expectLayout(_ layout: URL, holds image: PullThroughUpstreamImage, _ what: String,
                             sourceLocation: SourceLocation = #_sourceLocation) throws {
        let names = Set(PullThroughLayout.blobNames(layout))
        for digest in image.allDigests {
            let name = "sha256/\(digest.hex)"
            #expect(names.contains(name), "\(what): pulled layout lacks \(digest)", sourceLocation: sourceLocation)
        }
        for name in names {
            let bytes = try Files.read(layout.appendingPathComponent("blobs/\(name)"))
            #expect("sha256/" + bytes.sha256.hex == name, "\(what): \(name) does not hash to its name", sourceLocation: sourceLocation)
        }
    }

    // MARK: 1

    @Test("cold pull: manifests byte-identical to upstream's, each blob GET upstream exactly once")
    func coldPullCounts() async throws {
        try await PullThroughScope.run("cold pull") { scope in
            let upstream = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, "test/img", tag: "v1")
            try await scope.push(try scope.multiImage(seed: seed &+ 1), to: upstream.host, "test/img", tag: "multi")
            let images = [
                "v1": try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1"),
                "multi": try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "multi"),
            ]
            #expect(images["v1"]?.layers.count == 3)
            #expect(images["multi"]?.manifests.count == 4, "index + 3 platform manifests")

            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            let mark = await Self.mark(upstream)
            for tag in ["v1", "multi"] {
                let image = try #require(images[tag])
                let (result, layout) = try await scope.pull("\(mirror.host)/test/img:\(tag)")
                try #require(result.succeeded, "\(result.summary)\(Self.mirrorLog(mirror))")
                #expect(try PullThroughLayout.root(layout) == image.rootDigest, "test/img:\(tag)")
                try Self.expectLayout(layout, holds: image, "test/img:\(tag)")
            }
            let requests = await upstream.requests(since: mark)
            let log = PullThroughLog.describe(requests)

            // Every blob: exactly one GET, answered 200; and no blob GET for anything else.
            let gets = PullThroughLog.blobGets(requests)
            let expectedBlobs = Set(images.values.flatMap(\.blobs))
            #expect(expectedBlobs.count == 4 + 6, "1 config + 3 layers, 3 configs + 3 layers")
            for digest in expectedBlobs {
                let hits = gets["/v2/test/img/blobs/\(digest)"] ?? []
                #expect(hits.count == 1, "blob \(digest) was GET \(hits.count) times upstream\n\(log)")
                #expect(hits.allSatisfy { $0.status == 200 }, "blob \(digest): \(hits)")
            }
            let unexpected = Set(gets.keys).subtracting(expectedBlobs.map { "/v2/test/img/blobs/\($0)" })
            #expect(unexpected.isEmpty, "blob GETs for nothing the images hold: \(unexpected)")
            // Manifests are immutable by digest: none fetched twice either.
            let manifestGets = Dictionary(grouping: requests.filter { $0.method == "GET" && $0.path.contains("/manifests/sha256:") }, by: \.path)
            for (path, hits) in manifestGets {
                #expect(hits.count == 1, "\(path) was GET \(hits.count) times upstream\n\(log)")
            }

            // skopeo inspect --raw: byte-identical through the mirror and directly.
            for (tag, image) in images {
                let direct = try await Command.check("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(upstream.host)/test/img:\(tag)"])
                let viaMirror = try await Command.check("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(mirror.host)/test/img:\(tag)"])
                #expect(viaMirror.stdoutData == direct.stdoutData, "test/img:\(tag): manifest bytes differ")
                #expect(viaMirror.stdoutData.sha256 == image.rootDigest, "test/img:\(tag)")
                let head = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/\(tag)", head: true)
                #expect(head.header("Docker-Content-Digest") == image.rootDigest.description, "\(head)")
            }
        }
    }

    // MARK: 2

    @Test("eight concurrent cold pulls of one image: all succeed, one upstream GET per blob, identical layers")
    func concurrentColdPulls() async throws {
        try await PullThroughScope.run("8 concurrent pulls") { scope in
            let upstream = try await scope.registry()
            let big = try scope.bigImage(seed: Self.seed(), layerSizes: [8 << 20, 8 << 20, 8 << 20])
            try await scope.push(big, to: upstream.host, "test/img")
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")
            #expect(image.layers.count == 3)

            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            let mark = await Self.mark(upstream)
            let reference = "\(mirror.host)/test/img:v1"
            let pulls = try await withThrowingTaskGroup(of: (Int, CommandResult, URL).self) { group in
                for i in 0..<8 {
                    group.addTask {
                        let (result, layout) = try await scope.pull(reference, all: false, timeout: .seconds(180))
                        return (i, result, layout)
                    }
                }
                var all: [(Int, CommandResult, URL)] = []
                for try await pull in group { all.append(pull) }
                return all.sorted { $0.0 < $1.0 }
            }
            for (i, result, _) in pulls {
                #expect(result.succeeded, "pull #\(i): \(result.summary)\(Self.mirrorLog(mirror))")
            }
            let requests = await upstream.requests(since: mark)
            let gets = PullThroughLog.blobGets(requests)
            for digest in image.blobs {
                let hits = gets["/v2/test/img/blobs/\(digest)"] ?? []
                #expect(hits.count == 1 && hits.allSatisfy { $0.status == 200 },
                        "blob \(digest) was GET \(hits.count) times upstream: \(hits)\n\(PullThroughLog.describe(requests))")
            }
            #expect(gets.count == image.blobs.count, "blob GETs: \(gets.keys.sorted())")
            let joins = mirror.stderr.components(separatedBy: "joined a running download").count - 1
            Progress.step("8 concurrent pulls: the mirror logged \(joins) joins of a running download")

            // Identical outputs: same blob files, each hashing to its name, same root.
            let reference0 = PullThroughLayout.blobNames(pulls[0].2)
            for (i, result, layout) in pulls where result.succeeded {
                #expect(try PullThroughLayout.root(layout) == image.rootDigest, "pull #\(i)")
                #expect(PullThroughLayout.blobNames(layout) == reference0, "pull #\(i): blob set differs from pull #0")
                try Self.expectLayout(layout, holds: image, "pull #\(i)")
            }
        }
    }

    // MARK: 3

    @Test("warm pull within the tag TTL: no upstream request at all")
    func warmPull() async throws {
        try await PullThroughScope.run("warm pull") { scope in
            let upstream = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, "test/img", tag: "v1")
            try await scope.push(try scope.multiImage(seed: seed &+ 1), to: upstream.host, "test/img", tag: "multi")
            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            var roots: [String: Digest] = [:]
            for tag in ["v1", "multi"] {
                let (cold, layout) = try await scope.pull("\(mirror.host)/test/img:\(tag)")
                try #require(cold.succeeded, "cold \(tag): \(cold.summary)\(Self.mirrorLog(mirror))")
                roots[tag] = try PullThroughLayout.root(layout)
            }
            let mark = await Self.mark(upstream)
            for tag in ["v1", "multi"] {
                let (warm, layout) = try await scope.pull("\(mirror.host)/test/img:\(tag)")
                try #require(warm.succeeded, "warm \(tag): \(warm.summary)\(Self.mirrorLog(mirror))")
                #expect(try PullThroughLayout.root(layout) == roots[tag])
            }
            let requests = await upstream.requests(since: mark)
            #expect(requests.isEmpty, "a warm pull within the TTL reached the upstream:\n\(PullThroughLog.describe(requests))")
        }
    }

    // MARK: 4

    @Test("tag moved upstream: the old digest within the TTL, a HEAD after it, then the new digest")
    func tagMoved() async throws {
        try await PullThroughScope.run("tag moved") { scope in
            let upstream = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, "test/img", tag: "v1")
            // The image the tag will move to, already in the repository, so moving the tag is one quick PUT.
            try await scope.push(try scope.singleImage(seed: seed &+ 1), to: upstream.host, "test/img", tag: "staged")
            let one = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")
            let two = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "staged")
            try #require(one.rootDigest != two.rootDigest)

            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)", "--tag-ttl", "2s"])
            let (pull, layout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(pull.succeeded, "\(pull.summary)\(Self.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(layout) == one.rootDigest)

            // Past the TTL with the tag unchanged: a HEAD refreshes it, no manifest is fetched again.
            try await Task.sleep(for: .milliseconds(2300))
            let mark0 = await Self.mark(upstream)
            let refreshedAt = ContinuousClock.now
            let refresh = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1")
            #expect(refresh.status == 200, "\(refresh)")
            #expect(refresh.header("Docker-Content-Digest") == one.rootDigest.description, "\(refresh)")

            // Move v1 upstream to the other image.
            let put = try PullThroughHTTP.requestWithBody(
                "PUT", port: upstream.port, path: "/v2/test/img/manifests/v1",
                headers: [("Content-Type", two.rootMediaType ?? MediaType.ociManifest)], body: two.rootBytes)
            try #require(put.status == 201, "moving the tag upstream: \(put)")
            // No fixed sleep here: the next GET must come well within the TTL. Wait only for the PUT's log line.
            try await waitUntil("the manifest PUT in the access log", timeout: .seconds(5)) {
                upstream.requests.contains { $0.method == "PUT" && $0.path == "/v2/test/img/manifests/v1" }
            }
            let mark1 = upstream.requests.count
            let refreshRequests = Array(upstream.requests[mark0..<mark1])
            #expect(refreshRequests.contains { $0.method == "HEAD" && $0.path == "/v2/test/img/manifests/v1" && $0.status == 200 },
                    "no HEAD for the expired tag:\n\(PullThroughLog.describe(refreshRequests))")
            #expect(!refreshRequests.contains { $0.method == "GET" && $0.path.contains("/manifests/") },
                    "the refresh of an unchanged tag fetched a manifest:\n\(PullThroughLog.describe(refreshRequests))")

            // Within the TTL: still the old digest, no upstream request.
            let stale = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1")
            let elapsed = ContinuousClock.now - refreshedAt
            #expect(stale.status == 200, "\(stale)")
            #expect(stale.header("Docker-Content-Digest") == one.rootDigest.description,
                    "within the TTL (\(elapsed) after the refresh) the mirror served \(stale.header("Docker-Content-Digest") ?? "-")")
            #expect(stale.body == one.rootBytes)
            let withinTTL = await upstream.requests(since: mark1)
            #expect(withinTTL.isEmpty, "requests within the TTL (\(elapsed) after the refresh):\n\(PullThroughLog.describe(withinTTL))")

            // After the TTL: a HEAD for the tag, the new manifest by digest.
            try await Task.sleep(for: .milliseconds(2300))
            let mark2 = await Self.mark(upstream)
            let moved = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1")
            #expect(moved.status == 200, "\(moved)")
            #expect(moved.header("Docker-Content-Digest") == two.rootDigest.description, "\(moved)\(Self.mirrorLog(mirror))")
            #expect(moved.body == two.rootBytes)
            let afterTTL = await upstream.requests(since: mark2)
            #expect(afterTTL.contains { $0.method == "HEAD" && $0.path == "/v2/test/img/manifests/v1" },
                    "no HEAD for the tag:\n\(PullThroughLog.describe(afterTTL))")
            #expect(afterTTL.contains { $0.method == "GET" && $0.path == "/v2/test/img/manifests/\(two.rootDigest)" && $0.status == 200 },
                    "the new manifest was not fetched by digest:\n\(PullThroughLog.describe(afterTTL))")

            // And a client pulling the tag now gets the new image.
            let (again, layoutTwo) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(again.succeeded, "\(again.summary)\(Self.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(layoutTwo) == two.rootDigest)
            try Self.expectLayout(layoutTwo, holds: two, "moved test/img:v1")
        }
    }

    // MARK: 5

    @Test("upstream stopped: cached tag served stale with Warning 110, digests and blobs served, uncached → 503 UNAVAILABLE")
    func upstreamStopped() async throws {
        try await PullThroughScope.run("upstream stopped") { scope in
            let upstream = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, "test/img", tag: "v1")
            try await scope.push(try scope.singleImage(seed: seed &+ 1), to: upstream.host, "test/other", tag: "v1")
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")

            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)", "--tag-ttl", "1s"])
            let (pull, _) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(pull.succeeded, "\(pull.summary)\(Self.mirrorLog(mirror))")

            await upstream.stop()
            try await Task.sleep(for: .milliseconds(1500))

            // The cached tag, stale: skopeo still pulls it.
            let (stalePull, layout) = try await scope.pull("\(mirror.host)/test/img:v1")
            #expect(stalePull.succeeded, "\(stalePull.summary)\(Self.mirrorLog(mirror))")
            if stalePull.succeeded {
                #expect(try PullThroughLayout.root(layout) == image.rootDigest)
                try Self.expectLayout(layout, holds: image, "stale pull")
            }
            let byTag = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1")
            #expect(byTag.status == 200, "\(byTag)")
            #expect(byTag.header("Docker-Content-Digest") == image.rootDigest.description, "\(byTag)")
            #expect(byTag.header("Warning")?.contains("110") == true, "no Warning: 110 on a stale tag: \(byTag)")
            #expect(byTag.body == image.rootBytes)

            let byDigest = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/\(image.rootDigest)")
            #expect(byDigest.status == 200, "\(byDigest)")
            #expect(byDigest.body == image.rootBytes)
            for digest in image.blobs {
                let blob = try RawHTTP.get(port: mirror.port, path: "/v2/test/img/blobs/\(digest)")
                #expect(blob.status == 200, "blob \(digest): \(blob)")
                #expect(blob.body.sha256 == digest, "blob \(digest): \(blob.body.count) bytes that hash to \(blob.body.sha256)")
            }

            // Never pulled: 503 UNAVAILABLE naming the upstream.
            let unknown = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/other/manifests/v1")
            #expect(unknown.status == 503, "\(unknown)")
            #expect(unknown.errorCodes == ["UNAVAILABLE"], "\(unknown)")
            let details = PullThroughHTTP.errorDetails(unknown)
            #expect(details.contains { $0.contains(upstream.host) }, "the detail does not name \(upstream.host): \(unknown)")
            let (failed, _) = try await scope.pull("\(mirror.host)/test/other:v1")
            #expect(!failed.succeeded && !failed.timedOut, "\(failed.summary)")
            let message = failed.stderr.lowercased()
            #expect(message.contains("unavailable") || message.contains("503"),
                    "skopeo's error does not say the upstream is unavailable: \(failed.stderr)")
            Progress.step("upstream stopped: skopeo says: \(failed.stderr.trimmingCharacters(in: .whitespacesAndNewlines).suffix(400))")
        }
    }

    // MARK: 6

    @Test("a second upstream, by ?ns= and by path prefix, cached separately from the default")
    func secondUpstream() async throws {
        try await PullThroughScope.run("second upstream") { scope in
            let a = try await scope.registry()
            let b = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: a.host, "test/img", tag: "v1")
            try await scope.push(try scope.singleImage(seed: seed &+ 1), to: b.host, "test/img", tag: "v1")
            let imageA = try PullThroughHTTP.upstreamImage(port: a.port, "test/img", tag: "v1")
            let imageB = try PullThroughHTTP.upstreamImage(port: b.port, "test/img", tag: "v1")
            try #require(imageA.allDigests.isDisjoint(with: imageB.allDigests))

            let mirror = try await scope.mirror(["--upstream", "http://\(a.host)", "--upstream", "second=http://\(b.host)"])
            let markA = await Self.mark(a)
            let markB = await Self.mark(b)

            let viaDefault = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1")
            #expect(viaDefault.status == 200, "\(viaDefault)")
            #expect(viaDefault.header("Docker-Content-Digest") == imageA.rootDigest.description, "default upstream: \(viaDefault)")
            #expect(viaDefault.body == imageA.rootBytes)

            let viaNamespace = try PullThroughHTTP.manifest(port: mirror.port, "/v2/test/img/manifests/v1?ns=second")
            #expect(viaNamespace.status == 200, "\(viaNamespace)")
            #expect(viaNamespace.header("Docker-Content-Digest") == imageB.rootDigest.description, "?ns=second: \(viaNamespace)")
            #expect(viaNamespace.header("OCI-Namespace") == "second", "\(viaNamespace)")
            #expect(viaNamespace.body == imageB.rootBytes)

            let (pullB, layoutB) = try await scope.pull("\(mirror.host)/second/test/img:v1")
            try #require(pullB.succeeded, "\(pullB.summary)\(Self.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(layoutB) == imageB.rootDigest)
            try Self.expectLayout(layoutB, holds: imageB, "second/test/img:v1")

            // Each upstream saw only its own requests.
            let requestsA = await a.requests(since: markA)
            let requestsB = await b.requests(since: markB)
            func mentions(_ request: DistributionRegistry.Request, _ image: PullThroughUpstreamImage) -> Bool {
                image.allDigests.contains { request.path.contains($0.hex) }
            }
            #expect(!requestsA.isEmpty)
            #expect(!requestsB.isEmpty)
            #expect(requestsA.allSatisfy { $0.path.hasPrefix("/v2/test/img/") && !mentions($0, imageB) },
                    "upstream A was asked for B's content:\n\(PullThroughLog.describe(requestsA))")
            #expect(requestsB.allSatisfy { $0.path.hasPrefix("/v2/test/img/") && !mentions($0, imageA) },
                    "upstream B was asked for A's content (or with the prefix left on):\n\(PullThroughLog.describe(requestsB))")
            #expect(requestsB.contains { $0.method == "HEAD" && $0.path == "/v2/test/img/manifests/v1" } ||
                    requestsB.contains { $0.method == "GET" && $0.path == "/v2/test/img/manifests/v1" },
                    "B never saw the tag request:\n\(PullThroughLog.describe(requestsB))")
            let getsB = PullThroughLog.blobGets(requestsB)
            for digest in imageB.blobs {
                #expect(getsB["/v2/test/img/blobs/\(digest)"]?.count == 1, "B blob \(digest):\n\(PullThroughLog.describe(requestsB))")
            }

            // Both still right, each from its own cache entry: no manifest request to either upstream.
            let markA2 = await Self.mark(a)
            let markB2 = await Self.mark(b)
            for (path, expected) in [
                ("/v2/test/img/manifests/v1", imageA),
                ("/v2/test/img/manifests/v1?ns=second", imageB),
                ("/v2/second/test/img/manifests/v1", imageB),
                ("/v2/test/img/manifests/v1", imageA),
            ] {
                let response = try PullThroughHTTP.manifest(port: mirror.port, path)
                #expect(response.status == 200 && response.header("Docker-Content-Digest") == expected.rootDigest.description,
                        "\(path): \(response)")
            }
            let (pullA, layoutA) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(pullA.succeeded, "\(pullA.summary)\(Self.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(layoutA) == imageA.rootDigest)
            try Self.expectLayout(layoutA, holds: imageA, "test/img:v1 (default upstream)")
            let secondRoundA = await a.requests(since: markA2)
            let secondRoundB = await b.requests(since: markB2)
            #expect(secondRoundB.isEmpty, "B was asked again:\n\(PullThroughLog.describe(secondRoundB))")
            #expect(!secondRoundA.contains { $0.path.contains("/manifests/") },
                    "A was asked for a manifest again:\n\(PullThroughLog.describe(secondRoundA))")
            #expect(secondRoundA.allSatisfy { !mentions($0, imageB) }, "\(PullThroughLog.describe(secondRoundA))")
        }
    }

    // MARK: 7

    @Test("repository scoping: a blob cached via team/a is 404 under team/b, served from cache under team/c")
    func repositoryScoping() async throws {
        try await PullThroughScope.run("repository scoping") { scope in
            let upstream = try await scope.registry()
            let seed = Self.seed()
            try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, "team/a", tag: "v1")
            try await scope.push(try scope.singleImage(seed: seed &+ 1), to: upstream.host, "team/b", tag: "v1")
            // X again under team/c, copied registry-side so that its (gzipped) blobs are the very same.
            try await Command.check("skopeo", ["copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                                               "docker://\(upstream.host)/team/a:v1", "docker://\(upstream.host)/team/c:v1"])
            let x = try PullThroughHTTP.upstreamImage(port: upstream.port, "team/a", tag: "v1")
            let c = try PullThroughHTTP.upstreamImage(port: upstream.port, "team/c", tag: "v1")
            try #require(c.rootDigest == x.rootDigest, "team/c:v1 is not X")
            let layer = try #require(x.layers.first)
            let layerBytes = try RawHTTP.get(port: upstream.port, path: "/v2/team/a/blobs/\(layer)").body
            try #require(layerBytes.sha256 == layer)
            let direct = try RawHTTP.head(port: upstream.port, path: "/v2/team/b/blobs/\(layer)")
            try #require(direct.status == 404, "upstream itself serves X's layer under team/b: \(direct)")

            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            let (pull, _) = try await scope.pull("\(mirror.host)/team/a:v1")
            try #require(pull.succeeded, "\(pull.summary)\(Self.mirrorLog(mirror))")

            // team/b does not hold it upstream.
            let markB = await Self.mark(upstream)
            let underB = try RawHTTP.get(port: mirror.port, path: "/v2/team/b/blobs/\(layer)")
            #expect(underB.status == 404, "\(underB)")
            #expect(underB.errorCodes == ["BLOB_UNKNOWN"], "\(underB)")
            let requestsB = await upstream.requests(since: markB)
            #expect(requestsB.contains { $0.method == "HEAD" && $0.path == "/v2/team/b/blobs/\(layer)" && $0.status == 404 },
                    "no HEAD under team/b:\n\(PullThroughLog.describe(requestsB))")
            #expect(!requestsB.contains { $0.method == "GET" }, "\(PullThroughLog.describe(requestsB))")

            // team/c does: served from the cache after a HEAD, no GET.
            let markC = await Self.mark(upstream)
            let underC = try RawHTTP.get(port: mirror.port, path: "/v2/team/c/blobs/\(layer)")
            #expect(underC.status == 200, "\(underC)")
            #expect(underC.body == layerBytes, "team/c blob: \(underC.body.count) bytes, expected \(layerBytes.count)")
            let requestsC = await upstream.requests(since: markC)
            #expect(requestsC.contains { $0.method == "HEAD" && $0.path == "/v2/team/c/blobs/\(layer)" && $0.status == 200 },
                    "no HEAD under team/c:\n\(PullThroughLog.describe(requestsC))")
            #expect(!requestsC.contains { $0.method == "GET" && $0.path.contains("/blobs/\(layer)") },
                    "the blob was downloaded again:\n\(PullThroughLog.describe(requestsC))")

            // Asked again, team/b is still refused and team/c still served.
            let underBAgain = try RawHTTP.get(port: mirror.port, path: "/v2/team/b/blobs/\(layer)")
            #expect(underBAgain.status == 404 && underBAgain.errorCodes == ["BLOB_UNKNOWN"], "\(underBAgain)")
            let underCAgain = try RawHTTP.get(port: mirror.port, path: "/v2/team/c/blobs/\(layer)")
            #expect(underCAgain.status == 200 && underCAgain.body == layerBytes, "\(underCAgain.status)")
        }
    }

    // MARK: 8

    @Test("htpasswd Basic-auth upstream: pulls with credentials from the config; without them a 4xx, never 5xx")
    func basicAuthUpstream() async throws {
        try await PullThroughScope.run("basic auth") { scope in
            let line = try await PullThroughBcrypt.htpasswdLine(user: "alice", password: "secret")
            let upstream = try await scope.authRegistry(htpasswdLine: line)
            let creds = "alice:secret"
            try await scope.push(try scope.singleImage(seed: Self.seed()), to: upstream.host, "test/img", tag: "v1", creds: creds)
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1", creds: creds)

            let passwordFile = scope.work.url.appendingPathComponent("upstream-password")
            try "secret\n".write(to: passwordFile, atomically: true, encoding: .utf8)
            let config = scope.work.url.appendingPathComponent("mirror.yaml")
            try """
                upstreams:
                  - name: up
                    url: http://\(upstream.host)
                    username: alice
                    password_file: \(passwordFile.path)
                    tag_ttl: 5m

                """.write(to: config, atomically: true, encoding: .utf8)

            let mirror = try await scope.mirror(["--config", config.path])
            let (pull, layout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(pull.succeeded, "\(pull.summary)\(Self.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(layout) == image.rootDigest)
            try Self.expectLayout(layout, holds: image, "Basic-auth pull")
            let inspect = try await Command.check("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(mirror.host)/test/img:v1"])
            #expect([UInt8](inspect.stdoutData) == image.rootBytes)
            // The mirror runs with --log-level debug (PullThroughScope.mirror): neither the
            // password nor its Basic form may appear in its log.
            let mirrorLog = mirror.stderr
            #expect(!mirrorLog.contains("secret"), "the mirror logged the upstream password")
            let basic = Data(creds.utf8).base64EncodedString()
            #expect(!mirrorLog.contains(basic), "the mirror logged the Basic credentials (\(basic))")

            // The same upstream without credentials: the anonymous 401 is a 4xx (404 unknown), never a 5xx.
            let anonymous = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            let (refused, _) = try await scope.pull("\(anonymous.host)/test/img:v1")
            #expect(!refused.succeeded && !refused.timedOut, "\(refused.summary)")
            for (what, response) in [
                ("manifest by tag", try PullThroughHTTP.manifest(port: anonymous.port, "/v2/test/img/manifests/v1")),
                ("manifest by digest", try PullThroughHTTP.manifest(port: anonymous.port, "/v2/test/img/manifests/\(image.rootDigest)")),
                ("blob", try RawHTTP.get(port: anonymous.port, path: "/v2/test/img/blobs/\(image.blobs[0])")),
            ] {
                #expect((400..<500).contains(response.status), "\(what) without credentials: \(response)\(Self.mirrorLog(anonymous))")
                #expect(response.status == 404, "\(what) without credentials: \(response)")
            }
            // The mirror's address is in skopeo's message, and its port may contain "500".
            let said = refused.stderr.replacingOccurrences(of: anonymous.host, with: "<mirror>")
            #expect(!said.contains("500") && !said.contains("503"), "\(refused.stderr)")
        }
    }

    // MARK: 9

    /// Regression test for the blob-fill rename race (fixed in 160fbc7): `runFill` renamed the
    /// `.part` file into `blobs/` (`writer.commit()`), then recorded the index, and only then
    /// reported `.done`. A reader whose `fillBody` opened `fill.temporaryPath` in that window got
    /// ENOENT, saw the outcome still `.running`, and cut the response after the 200 and the
    /// Content-Length had gone out: 0 body bytes (skopeo: "unexpected EOF"; curl: exit 18). Small
    /// blobs finish downloading almost at once, so many sequential cold GETs hit the window.
    @Test("cold GETs of many small blobs: every response carries the whole blob (fill rename race)")
    func coldSmallBlobsComplete() async throws {
        try await PullThroughScope.run("cold small blobs") { scope in
            let upstream = try await scope.registry()
            var rng = SeededGenerator(seed: Self.seed())
            var blobs: [(Digest, [UInt8])] = []
            for i in 0..<300 {
                let bytes = rng.bytes(100 + (i * 37) % 400)
                blobs.append((try PullThroughHTTP.uploadBlob(port: upstream.port, "test/small", bytes), bytes))
            }
            // Sequential cold GETs through a fresh mirror.
            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            var failures: [String] = []
            for (digest, bytes) in blobs {
                do {
                    let response = try RawHTTP.get(port: mirror.port, path: "/v2/test/small/blobs/\(digest)")
                    if response.status != 200 || response.body != bytes {
                        failures.append("\(digest): HTTP \(response.status), Content-Length \(response.header("Content-Length") ?? "-"), \(response.body.count) of \(bytes.count) bytes")
                    }
                } catch {
                    failures.append("\(digest): \(error)")
                }
            }
            Progress.step("cold small blobs: \(blobs.count) cold GETs, \(failures.count) incomplete")
            #expect(failures.isEmpty, """
                \(failures.count) of \(blobs.count) cold blob GETs came back incomplete (the blob-fill rename race: \
                the body opened the fill's .part file after commit() renamed it, before the fill reported done):
                \(failures.joined(separator: "\n"))
                """)
            // Once cached, the same blobs are served whole.
            for (digest, bytes) in blobs.prefix(10) {
                let response = try RawHTTP.get(port: mirror.port, path: "/v2/test/small/blobs/\(digest)")
                #expect(response.status == 200 && response.body == bytes, "warm \(digest): \(response.status), \(response.body.count) bytes")
            }
        }
    }
}
