import Foundation
import OCI
@testable import S3Store
import Testing

/// What a replica on S3 does besides serving (issue 12, operations): `storage.s3.redirect`
/// sends clients to presigned URLs of stored blobs, and abandoned multipart uploads are swept
/// on a schedule by `serve` and at once by `gc`. Real skopeo, docker-registry and moto.
@Suite("registry-mirror on S3: redirects and the upload sweep", .serialized)
struct S3OperationsTests {
    static let credentials = S3BackendTests.credentials

    static func environment(_ moto: MotoProcess, _ location: S3Location, _ extra: [String: String] = [:]) -> [String: String] {
        [
            "REGISTRY_MIRROR_STORAGE_BACKEND": "s3",
            "REGISTRY_MIRROR_STORAGE_S3_ENDPOINT": moto.endpoint.absoluteString,
            "REGISTRY_MIRROR_STORAGE_S3_BUCKET": location.bucket,
            "REGISTRY_MIRROR_STORAGE_S3_PREFIX": location.prefix,
            "REGISTRY_MIRROR_STORAGE_S3_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": credentials.accessKeyID,
            "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey,
        ].merging(extra) { $1 }
    }

    static func withMoto(_ scope: PullThroughScope, _ body: (MotoProcess) async throws -> Void) async throws {
        let moto = try await MotoProcess.start(logDirectory: scope.unique("moto-logs"))
        do {
            try await body(moto)
            await moto.process.stop()
        } catch {
            await moto.process.stop()
            throw error
        }
    }

    @Test("with storage.s3.redirect, stored blobs are answered 307 to presigned S3 URLs that skopeo follows; downloads in progress are sent by the mirror")
    func redirectsToS3() async throws {
        try await PullThroughScope.run("s3 redirect") { scope in
            try await Self.withMoto(scope) { moto in try await redirect(scope, moto) }
        }
    }

    func redirect(_ scope: PullThroughScope, _ moto: MotoProcess) async throws {
        let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "redirect", prefix: "replicas", pathStyle: true)
        try await S3Store(location: location, credentials: Self.credentials).createBucket()
        let upstream = try await scope.registry()
        try await scope.push(try scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [12 << 20, 3000]), to: upstream.host, "test/img", tag: "v1")
        try await scope.push(try scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [2 << 20]), to: upstream.host, "test/other", tag: "v1")
        let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")
        let other = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/other", tag: "v1")

        let environment = Self.environment(moto, location, ["REGISTRY_MIRROR_STORAGE_S3_REDIRECT": "true",
                                                            "REGISTRY_MIRROR_STORAGE_S3_REDIRECT_EXPIRY": "5m"])
        let mirror = try await MirrorProcess.start(
            dataDirectory: scope.unique("mirror").appendingPathComponent("data"), logDirectory: scope.unique("mirror-logs"),
            extraArguments: ["--upstream", "http://\(upstream.host)"], environment: environment)
        try await mirror.stopping { mirror in
            // A blob not stored yet is a download, sent by the mirror as it arrives.
            let otherLayer = try #require(other.layers.first)
            let miss = try RawHTTP.get(port: mirror.port, path: "/v2/test/other/blobs/\(otherLayer)")
            #expect(miss.status == 200, "\(miss)")
            #expect(miss.header("X-Cache") == "MISS")
            #expect(DigestHasher.digest(of: miss.body) == otherLayer)

            let (cold, coldLayout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(cold.succeeded, "\(cold.summary)\(PullThroughTests.mirrorLog(mirror))")
            try PullThroughTests.expectLayout(coldLayout, holds: image, "cold pull with redirects on")

            // Stored now (give the fills a moment to publish): a GET is a 307 to the bucket.
            let layer = try #require(image.layers.first)
            let bucket = S3Store(location: location, credentials: Self.credentials)
            let deadline = ContinuousClock.now + .seconds(20)
            while Set(try await bucket.allDigests()).isSuperset(of: image.allDigests) == false, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            let redirected = try RawHTTP.get(port: mirror.port, path: "/v2/test/img/blobs/\(layer)")
            #expect(redirected.status == 307, "\(redirected)")
            #expect(redirected.body.isEmpty)
            #expect(redirected.header("Docker-Content-Digest") == layer.description)
            #expect(redirected.header("Cache-Control") == "no-store")
            let target = try #require(redirected.header("Location").flatMap { URLComponents(string: $0) }, "\(redirected)")
            #expect(target.port == moto.endpoint.port && target.path.hasSuffix("/redirect/replicas/blobs/sha256/\(layer.hex)"), "\(target)")
            #expect(target.queryItems?.first { $0.name == "X-Amz-Expires" }?.value == "300")
            let fetched = try RawHTTP.get(port: try #require(target.port), path: target.percentEncodedPath + "?" + (target.percentEncodedQuery ?? ""))
            #expect(fetched.status == 200)
            #expect(DigestHasher.digest(of: fetched.body) == layer, "the presigned URL gave other bytes")
            // A Range is redirected too (the client sends it again to the bucket, which cuts it).
            #expect(try RawHTTP.get(port: mirror.port, path: "/v2/test/img/blobs/\(layer)", headers: [("Range", "bytes=0-99")]).status == 307)
            // A HEAD is answered here: the size is known, and a redirect would cost a round trip.
            let head = try RawHTTP.head(port: mirror.port, path: "/v2/test/img/blobs/\(layer)")
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == String(fetched.body.count))

            // Warm, the upstream gone: every blob comes from the bucket through redirects.
            await upstream.stop()
            let (warm, warmLayout) = try await scope.pull("\(mirror.host)/test/img@\(image.rootDigest)")
            try #require(warm.succeeded, "\(warm.summary)\(PullThroughTests.mirrorLog(mirror))")
            try PullThroughTests.expectLayout(warmLayout, holds: image, "warm pull through redirects, upstream stopped")
            #expect(mirror.stderr.contains("http.status=307"), "the request log shows no redirect\(PullThroughTests.mirrorLog(mirror))")
            let metrics = String(decoding: try RawHTTP.get(port: mirror.port, path: "/metrics").body, as: UTF8.self)
            let redirects = metrics.split(separator: "\n").filter {
                $0.hasPrefix("registry_mirror_http_requests_total") && $0.contains("route=\"blob\"") && $0.contains("status=\"307\"")
            }
            let count = redirects.compactMap { $0.split(separator: " ").last.flatMap { Int($0) } }.reduce(0, +)
            // The three raw GETs above and at least the image's layers and config in the warm pull.
            #expect(count >= 2 + image.layers.count, "\(redirects)")
        }
    }

    @Test("serve sweeps idle multipart uploads on its schedule and keeps fresh ones; gc sweeps at once")
    func uploadSweep() async throws {
        try await PullThroughScope.run("s3 upload sweep") { scope in
            try await Self.withMoto(scope) { moto in try await sweep(scope, moto) }
        }
    }

    func sweep(_ scope: PullThroughScope, _ moto: MotoProcess) async throws {
        let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "sweep", prefix: "replicas", pathStyle: true)
        let bucket = S3Store(location: location, credentials: Self.credentials)
        try await bucket.createBucket()
        let data = scope.unique("mirror").appendingPathComponent("data")
        let environment = Self.environment(moto, location, ["REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_OLDER_THAN": "3s",
                                                            "REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_INTERVAL": "500ms"])
        let mirror = try await MirrorProcess.start(dataDirectory: data, logDirectory: scope.unique("mirror-logs"),
                                                   extraArguments: ["--offline", "--log-level", "debug"], environment: environment)
        try await mirror.stopping { mirror in
            // Left after the start: only the schedule can find them.
            let old = try await Self.leaveUpload(in: bucket, named: "old")
            try await Task.sleep(for: .seconds(2))
            let fresh = try await Self.leaveUpload(in: bucket, named: "fresh")
            let deadline = ContinuousClock.now + .seconds(10)
            var pending = try await bucket.pendingUploads().map(\.uploadID)
            while pending.contains(old), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                pending = try await bucket.pendingUploads().map(\.uploadID)
            }
            // When the old one went (3 s idle), the fresh one was 1 to 2 s idle.
            #expect(pending == [fresh], "old \(old), fresh \(fresh), pending \(pending)\(PullThroughTests.mirrorLog(mirror))")
            #expect(mirror.stderr.contains("aborted abandoned multipart uploads"), "\(PullThroughTests.mirrorLog(mirror))")
        }

        // gc, with the server stopped: what is idle longer than older_than goes now.
        let left = try await Self.leaveUpload(in: bucket, named: "left")
        #expect(try await bucket.pendingUploads().count >= 1)
        var gcEnvironment = environment
        gcEnvironment["REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_OLDER_THAN"] = "1h"
        let kept = try await Command.run(try TestPaths.requireMirrorBinary(), ["gc", "--data-dir", data.path], environment: gcEnvironment)
        #expect(kept.succeeded, "\(kept.summary)")
        #expect(kept.stdout.contains("aborted 0 multipart uploads in s3://sweep"), "\(kept.summary)")
        #expect(try await bucket.pendingUploads().map(\.uploadID).contains(left))
        try await Task.sleep(for: .milliseconds(1500))
        gcEnvironment["REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_OLDER_THAN"] = "1s"
        let dry = try await Command.run(try TestPaths.requireMirrorBinary(), ["gc", "--dry-run", "--data-dir", data.path], environment: gcEnvironment)
        #expect(dry.stdout.contains("would abort"), "\(dry.summary)")
        #expect(try await bucket.pendingUploads().map(\.uploadID).contains(left), "gc --dry-run aborted an upload")
        let swept = try await Command.run(try TestPaths.requireMirrorBinary(), ["gc", "--data-dir", data.path], environment: gcEnvironment)
        #expect(swept.succeeded, "\(swept.summary)")
        #expect(swept.stdout.contains("aborted"), "\(swept.summary)")
        #expect(try await bucket.pendingUploads().isEmpty, "gc left an upload open")
    }

    /// What a killed replica leaves: an upload with one part and no completion. Answers its id.
    static func leaveUpload(in store: S3Store, named name: String) async throws -> String {
        let key = store.key(of: DigestHasher.digest(of: Array(name.utf8)))
        let created = try await store.connection.send(S3Request(method: "POST", key: key, query: [("uploads", "")]))
        let id = try #require(S3XML.value("UploadId", in: created.text))
        let part = try await store.connection.send(S3Request(method: "PUT", key: key, query: [("partNumber", "1"), ("uploadId", id)], body: [1, 2, 3]))
        #expect(part.status == 200)
        return id
    }
}
