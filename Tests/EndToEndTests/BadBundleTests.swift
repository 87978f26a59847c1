import Foundation
import OCI
import Testing

/// `registry-mirror import` must refuse a corrupt or incomplete bundle, name the bad blob, and
/// leave nothing behind: no tags in `ls`, no blob files under DATA/blobs.
///
/// Independent of the upstream registry: the bundles are synthetic three-platform layouts.
@Suite("registry-mirror import refuses bad bundles", .serialized)
struct BadBundleTests {
    /// A fresh synthetic multi-platform layout in its own temporary directory.
    func makeLayout() throws -> (work: TemporaryDirectory, image: SyntheticImage) {
        _ = try TestPaths.requireMirrorBinary()
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-bad")
        let image = try SyntheticImages.multi(at: try work.subdirectory("layout"), tag: "v1", seed: UInt64.random(in: 1...UInt64.max))
        return (work, image)
    }

    /// Imports `path` into a fresh data directory, expects failure naming `digest`, and an empty cache after.
    func expectRefused(_ path: String, naming digest: Digest, work: TemporaryDirectory,
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let data = work.url.appendingPathComponent("data-\(UUID().uuidString.prefix(6))")
        let result = try await MirrorCLI.importBundle(path, as: "test/multi", dataDirectory: data)
        #expect(!result.timedOut, "\(result.summary)", sourceLocation: sourceLocation)
        #expect(result.status != 0, "import of a bad bundle succeeded: \(result.summary)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains("error:"), "\(result.summary)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(digest.description), "stderr does not name \(digest): \(result.summary)", sourceLocation: sourceLocation)
        #expect(!result.stdout.contains("imported"), "\(result.summary)", sourceLocation: sourceLocation)

        let ls = try await MirrorCLI.list(dataDirectory: data)
        #expect(ls.succeeded, "\(ls.summary)", sourceLocation: sourceLocation)
        #expect(!ls.stdout.contains("test/multi"), "ls after a refused import: \(ls.stdout)", sourceLocation: sourceLocation)
        #expect(!ls.stdout.contains("sha256:"), "ls after a refused import: \(ls.stdout)", sourceLocation: sourceLocation)

        let leftovers = Files.regularFiles(under: data.appendingPathComponent("blobs"))
        #expect(leftovers.isEmpty, "a refused import left blob files behind: \(leftovers)", sourceLocation: sourceLocation)
    }

    /// Overwrites a blob file with different bytes of the same length.
    func tamper(_ digest: Digest, in layout: URL) throws {
        let file = layout.appendingPathComponent("blobs/sha256/\(digest.hex)")
        let original = try Files.read(file)
        var rng = SeededGenerator(seed: UInt64.random(in: 1...UInt64.max))
        var replacement = rng.bytes(original.count)
        if replacement == original { replacement[0] ^= 0xFF }
        try Files.write(replacement, to: file)
        #expect(try Files.read(file).count == original.count)
        #expect(try Files.read(file).sha256 != digest)
    }

    @Test("a layout directory with a tampered layer is refused and leaves nothing behind")
    func tamperedDirectory() async throws {
        let (work, image) = try makeLayout()
        // The last platform's layer: by then the index, the other manifests, configs and layers are stored.
        let layer = try #require(image.platforms.last?.layers.first).digest
        try tamper(layer, in: image.layout)
        try await expectRefused(image.layout.path, naming: layer, work: work)
    }

    @Test("a layout directory with a missing layer is refused as incomplete and leaves nothing behind")
    func incompleteDirectory() async throws {
        let (work, image) = try makeLayout()
        let layer = try #require(image.platforms.last?.layers.first).digest
        try FileManager.default.removeItem(at: image.layout.appendingPathComponent("blobs/sha256/\(layer.hex)"))
        try await expectRefused(image.layout.path, naming: layer, work: work)
    }

    @Test("a tar bundle with a tampered layer is refused and leaves nothing behind")
    func tamperedArchive() async throws {
        let (work, image) = try makeLayout()
        let layer = try #require(image.platforms[1].layers.first).digest
        try tamper(layer, in: image.layout)
        let archive = work.url.appendingPathComponent("tampered.tar")
        try await Command.check("tar", ["-C", image.layout.path, "-cf", archive.path, "oci-layout", "index.json", "blobs"])
        try await expectRefused(archive.path, naming: layer, work: work)
    }

    @Test("the untampered synthetic layout imports (control for the tests above)")
    func controlImport() async throws {
        let (work, image) = try makeLayout()
        let data = work.url.appendingPathComponent("data")
        let result = try await MirrorCLI.importBundle(image.layout.path, as: "test/multi", dataDirectory: data)
        try #require(result.succeeded, "\(result.summary)")
        #expect(result.stdout.contains(image.root.digest.description), "\(result.stdout)")
        let ls = try await MirrorCLI.list(dataDirectory: data)
        #expect(ls.stdout.contains("test/multi:v1"), "\(ls.stdout)")
        #expect(ls.stdout.contains(image.root.digest.description), "\(ls.stdout)")
        // Index + 3 × (manifest, config, layer).
        #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).count == 10)
    }
}
