import Foundation
import PostgresTestServer
import OCI
import S3Store
import Testing

/// The mirror with `storage.backend: s3` on a real S3 protocol peer (moto), its index local,
/// pulled through by skopeo from a real docker-registry upstream.
@Suite("registry-mirror on S3 storage end to end", .serialized)
struct S3BackendTests {
    static let credentials = S3Credentials(accessKeyID: "e2e-access-key", secretAccessKey: "e2e-secret-key")

    @Test("a cold pull fills the bucket with exactly the image's blobs; a warm pull needs no upstream")
    func pullThroughOnS3() async throws {
        try await PullThroughScope.run("s3 backend") { scope in
            let moto = try await MotoProcess.start(logDirectory: scope.unique("moto-logs"))
            do {
                try await run(scope, moto: moto)
                await moto.process.stop()
            } catch {
                await moto.process.stop()
                throw error
            }
        }
    }

    func run(_ scope: PullThroughScope, moto: MotoProcess) async throws {
        let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "mirror-e2e", prefix: "replicas/a", pathStyle: true)
        let bucket = S3Store(location: location, credentials: Self.credentials)
        try await bucket.createBucket()

        let upstream = try await scope.registry()
        // A layer of several parts (8 MiB each) and small ones: the multipart path and the one-PUT path.
        try await scope.push(try scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [20 << 20, 3000]), to: upstream.host, "test/img", tag: "v1")
        let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")

        let data = scope.unique("mirror").appendingPathComponent("data")
        let environment = [
            "REGISTRY_MIRROR_STORAGE_BACKEND": "s3",
            "REGISTRY_MIRROR_STORAGE_S3_ENDPOINT": moto.endpoint.absoluteString,
            "REGISTRY_MIRROR_STORAGE_S3_BUCKET": location.bucket,
            "REGISTRY_MIRROR_STORAGE_S3_PREFIX": location.prefix,
            "REGISTRY_MIRROR_STORAGE_S3_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": Self.credentials.accessKeyID,
            "AWS_SECRET_ACCESS_KEY": Self.credentials.secretAccessKey,
        ]
        let mirror = try await MirrorProcess.start(
            dataDirectory: data, logDirectory: scope.unique("mirror-logs"),
            extraArguments: ["--upstream", "http://\(upstream.host)", "--log-level", "debug"], environment: environment)
        try await mirror.stopping { mirror in
            let (cold, coldLayout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(cold.succeeded, "\(cold.summary)\(PullThroughTests.mirrorLog(mirror))")
            #expect(try PullThroughLayout.root(coldLayout) == image.rootDigest)
            try PullThroughTests.expectLayout(coldLayout, holds: image, "cold pull from S3")

            // The bucket holds exactly the image (manifest, config, layers), nothing half-done.
            // A client has the last byte once the blob is verified; the upload is completed
            // just after, so give the fills a moment to publish.
            let deadline = ContinuousClock.now + .seconds(20)
            while Set(try await bucket.allDigests()) != image.allDigests, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(Set(try await bucket.allDigests()) == image.allDigests, "the bucket holds other than the image's blobs")
            #expect(try await bucket.pendingUploads().isEmpty, "an upload was left open")
            let localBlobs = FileManager.default.enumerator(atPath: data.appendingPathComponent("blobs").path)?.allObjects ?? []
            #expect(localBlobs.compactMap { $0 as? String }.filter { $0.count > 64 }.isEmpty, "blobs went to the data directory: \(localBlobs)")
            for digest in image.blobs {
                #expect(await bucket.size(of: digest) != nil, "\(digest) is not in the bucket")
            }

            // Warm: the upstream is gone, every byte comes from the bucket.
            await upstream.stop()
            let (warm, warmLayout) = try await scope.pull("\(mirror.host)/test/img@\(image.rootDigest)")
            try #require(warm.succeeded, "\(warm.summary)\(PullThroughTests.mirrorLog(mirror))")
            try PullThroughTests.expectLayout(warmLayout, holds: image, "warm pull from S3, upstream stopped")
            // A blob GET with a Range, answered from S3.
            let layer = try #require(image.layers.first)
            let whole = try PullThroughLayout.blob(warmLayout, layer)
            let ranged = try RawHTTP.get(port: mirror.port, path: "/v2/test/img/blobs/\(layer)", headers: [("Range", "bytes=10-99")])
            #expect(ranged.status == 206)
            #expect(ranged.body == Array(whole[10...99]), "a range served from S3 differs")

            // verify hashes what is in the bucket; gc evicts from it.
            let cli = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            let binary = try TestPaths.requireMirrorBinary()
            let verify = try await Command.run(binary, ["verify", "--data-dir", data.path], environment: cli)
            #expect(verify.succeeded && verify.stdout.contains("checked \(image.allDigests.count) blobs"), "\(verify.summary)")
            let gc = try await Command.run(binary, ["gc", "--data-dir", data.path, "--max-size", "1"], environment: cli)
            #expect(gc.succeeded, "\(gc.summary)")
            #expect(try await bucket.allDigests().isEmpty, "gc left objects in the bucket: \(gc.summary)")
        }
    }
}

/// `moto_server` (the S3 protocol peer) on 127.0.0.1 at a free port: from `.build/venv-moto`
/// (which `scripts/test.sh` creates) or PATH. Missing, it is a failure, not a skip.
struct MotoProcess {
    let process: ChildProcess
    let endpoint: URL

    static func start(logDirectory: URL) async throws -> MotoProcess {
        let venv = TestPaths.packageRoot.appendingPathComponent(".build/venv-moto/bin/moto_server").path
        let binary = FileManager.default.isExecutableFile(atPath: venv) ? venv : try TestPaths.executable("moto_server")
        // A free port: bound at 0 by a listener we close at once; moto binds it right after.
        let port = try freePort()
        let process = try ChildProcess(name: "moto", program: binary, arguments: ["-H", "127.0.0.1", "-p", String(port)], logDirectory: logDirectory)
        try await waitUntil("moto_server to answer", process: process) {
            (try? RawHTTP.get(port: port, path: "/"))?.status == 200
        }
        return MotoProcess(process: process, endpoint: URL(string: "http://127.0.0.1:\(port)")!)
    }

    static func freePort() throws -> Int { try LoopbackPort.free() }
}
