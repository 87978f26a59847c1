import Foundation
import OCI
import Testing

/// `import` and `export` run with a fleet replica's configuration (issue 12 item 7): blobs go
/// into and come out of the shared bucket, images into and out of the shared PostgreSQL index,
/// and nothing is left on, or read from, the disk of the machine the command runs on (each
/// command gets a fresh data directory). The guarantees are a single node's: every blob
/// verified, images visible only once all their blobs are stored, a bad bundle leaves nothing,
/// and an export re-hashes what it reads.
@Suite("import and export against a fleet configuration", .serialized)
struct FleetBundleTests {
    @Test("import fills the bucket and two replicas serve it with no upstream request; export reads the bucket; bad input leaves nothing")
    func bundlesOnAFleet() async throws {
        try await FleetHarness.run(replicas: 2) { fleet in
            Progress.step("fleet bundles: a skopeo oci-archive imported with the fleet's configuration")
            try await Self.expectImportServedByTheFleet(fleet)
            Progress.step("fleet bundles: an image pulled through replica 0 exported with replica 1's configuration")
            try await Self.expectExportFromTheBucket(fleet)
            Progress.step("fleet bundles: a bundle with a damaged layer")
            try await Self.expectBadBundleLeavesNothing(fleet)
        }
    }

    /// A bundle skopeo wrote (`oci-archive:`) of an image with a layer of several S3 parts:
    /// after `import`, the bucket holds every blob under its digest, and both replicas serve
    /// the image without asking the upstream.
    static func expectImportServedByTheFleet(_ fleet: FleetHarness) async throws {
        let image = try fleet.scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [20 << 20, 3000])
        try await fleet.push(image, "test/airlifted", tag: "v1")
        let expected = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/airlifted", tag: "v1")
        let bundle = fleet.scope.unique("airlifted").appendingPathExtension("tar")
        try await Command.check("skopeo", ["copy", "--src-tls-verify=false", "docker://\(fleet.upstream.host)/test/airlifted:v1",
                                           "oci-archive:\(bundle.path):v1"])

        let mark = await fleet.mark()
        let imported = try await fleet.cli(["import", bundle.path, "--as", "\(fleet.upstream.host)/test/airlifted"])
        try #require(imported.succeeded, "\(imported.summary)")
        #expect(imported.stdout.contains("imported \(fleet.upstream.host)/test/airlifted:v1 \(expected.rootDigest)"), "\(imported.stdout)")

        let stored = try await fleet.bucket.allDigests()
        #expect(Set(stored).isSuperset(of: expected.allDigests), "the bucket lacks \(expected.allDigests.subtracting(stored))")
        for digest in stored {
            let bytes = try await fleet.bucket.read(digest, limit: 64 << 20)
            #expect(bytes.sha256 == digest, "the object of \(digest) holds bytes that hash to \(bytes.sha256)")
        }
        #expect(try await fleet.bucket.pendingUploads().isEmpty, "the import left a multipart upload open")

        for replica in fleet.replicas {
            let (pulled, layout) = try await fleet.pull("test/airlifted@\(expected.rootDigest)", through: replica.index)
            try #require(pulled.succeeded, "replica \(replica.index): \(pulled.summary)\n\(fleet.logTails())")
            try PullThroughTests.expectLayout(layout, holds: expected, "pull of the imported image through replica \(replica.index)")
        }
        let upstream = await fleet.upstreamRequests(since: mark)
        #expect(upstream.isEmpty, "the replicas went upstream for what was imported:\n\(PullThroughLog.describe(upstream))")
    }

    /// An image cached by a pull through replica 0 is exported with replica 1's configuration
    /// (and a local disk tier configured, which the export does not read): as a directory and
    /// a tar that skopeo copies from by the full reference, with the upstream's blobs. A
    /// damaged object in the bucket fails the export and leaves no output.
    static func expectExportFromTheBucket(_ fleet: FleetHarness) async throws {
        try await fleet.push(try fleet.scope.multiImage(seed: PullThroughTests.seed()), "test/exported", tag: "v1")
        let expected = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/exported", tag: "v1")
        let (pulled, _) = try await fleet.pull("test/exported:v1", through: 0)
        try #require(pulled.succeeded, "\(pulled.summary)\n\(fleet.logTails())")
        #expect(try await fleet.waitUntilPublished(expected.allDigests), "the bucket lacks some of the image")

        let name = "\(fleet.upstream.host)/test/exported:v1"
        let directory = fleet.scope.unique("exported")
        let tar = fleet.scope.unique("exported").appendingPathExtension("tar")
        for output in [directory, tar] {
            let result = try await export(fleet, to: output)
            try #require(result.succeeded, "\(result.summary)")
            #expect(result.stdout.contains("exported \(name) \(expected.rootDigest)") && result.stdout.contains("(3/3 platforms)"), "\(result.stdout)")
        }
        try PullThroughTests.expectLayout(directory, holds: expected, "the exported directory")
        #expect(Set(Files.regularFiles(under: directory.appendingPathComponent("blobs"))) == Set(expected.allDigests.map { "sha256/\($0.hex)" }))
        for source in ["oci:\(directory.path):\(name)", "oci-archive:\(tar.path):\(name)"] {
            let copy = fleet.scope.unique("copied")
            let copied = try await Command.run("skopeo", ["copy", "--all", source, "oci:\(copy.path):v1"])
            try #require(copied.succeeded, "skopeo copy \(source): \(copied.summary)")
            try PullThroughTests.expectLayout(copy, holds: expected, "skopeo copy \(source)")
        }

        // The same bytes count under the layer's key, different ones: re-hashing catches it.
        let layer = try #require(expected.layers.first)
        let size = try await fleet.bucket.read(layer, limit: 64 << 20).count
        var rng = SeededGenerator(seed: PullThroughTests.seed())
        try await overwriteObject(fleet, layer, with: rng.bytes(size))
        let damaged = fleet.scope.unique("damaged-export")
        let refused = try await export(fleet, to: damaged)
        #expect(!refused.succeeded, "an export of a damaged object succeeded: \(refused.summary)")
        #expect(refused.stderr.contains("\(layer)") && refused.stderr.contains("corrupt"), "\(refused.summary)")
        #expect(!FileManager.default.fileExists(atPath: damaged.path), "a failed export left its output")
        let leftovers = (try FileManager.default.contentsOfDirectory(atPath: damaged.deletingLastPathComponent().path))
            .filter { $0.hasPrefix(damaged.lastPathComponent + ".tmp-") }
        #expect(leftovers.isEmpty, "a failed export left \(leftovers)")
    }

    static func export(_ fleet: FleetHarness, to output: URL) async throws -> CommandResult {
        try await fleet.cli(["export", "test/exported:v1", "-o", output.path, "--upstream", "http://\(fleet.upstream.host)"],
                            as: 1, extraEnvironment: ["REGISTRY_MIRROR_STORAGE_LOCAL_CACHE_MAX_SIZE": "1GiB"])
    }

    /// PUTs `bytes` under a blob's key, past the store's verification (curl signs the request).
    static func overwriteObject(_ fleet: FleetHarness, _ digest: Digest, with bytes: [UInt8]) async throws {
        let file = fleet.scope.unique("object")
        try Files.write(bytes, to: file)
        let location = fleet.location
        let url = "\(location.endpoint.absoluteString)/\(location.bucket)/\(location.prefix)/blobs/sha256/\(digest.hex)"
        try await Command.check("curl", [
            "-fsS", "-X", "PUT", "--data-binary", "@\(file.path)", "--aws-sigv4", "aws:amz:\(location.region):s3",
            "--user", "\(FleetHarness.credentials.accessKeyID):\(FleetHarness.credentials.secretAccessKey)", url,
        ])
    }

    /// A layout whose small last layer is damaged (same size, other bytes): its manifest,
    /// config and large first layer (a multipart upload) are stored before the damage is found,
    /// and must be taken out of the bucket again; the index must not have heard of any of it.
    static func expectBadBundleLeavesNothing(_ fleet: FleetHarness) async throws {
        let image = try fleet.scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [12 << 20, 3000])
        let platform = try #require(image.platforms.first)
        let damaged = try #require(platform.layers.last).digest
        try BadBundleTests().tamper(damaged, in: image.layout)
        let bundle = Set([platform.manifest.digest, platform.config.digest] + platform.layers.map(\.digest))
        let before = Set(try await fleet.bucket.allDigests())

        let result = try await fleet.cli(["import", image.layout.path, "--as", "\(fleet.upstream.host)/test/damaged"])
        #expect(!result.succeeded, "import of a damaged bundle succeeded: \(result.summary)")
        #expect(result.stderr.contains("\(damaged)"), "stderr does not name \(damaged): \(result.summary)")

        let after = Set(try await fleet.bucket.allDigests())
        #expect(after == before, "a refused import left objects in the bucket: \(after.subtracting(before))")
        #expect(after.isDisjoint(with: bundle))
        #expect(try await fleet.bucket.pendingUploads().isEmpty, "a refused import left a multipart upload open")
        let digests = bundle.map { "'\($0)'" }.joined(separator: ",")
        for query in [
            "SELECT count(*) FROM blobs WHERE digest IN (\(digests))",
            "SELECT count(*) FROM manifests WHERE digest IN (\(digests))",
            "SELECT count(*) FROM repository_blobs WHERE digest IN (\(digests))",
            "SELECT count(*) FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = 'test/damaged'",
        ] {
            let count = try await fleet.sql(query).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(count == "0", "\(query): \(count) rows after a refused import")
        }
    }
}
