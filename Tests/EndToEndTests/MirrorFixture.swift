import Foundation
import OCI
import Testing

/// Everything the end-to-end flow shares, built once for the suite:
///
/// 1. a real docker-registry ("upstream") with `test/single:v1` and `test/multi:v1` pushed by skopeo
///    from synthetic OCI layouts;
/// 2. both exported back with `skopeo copy --all … oci:DIR:v1`, and `test/single` also as an
///    `oci-archive:` tar;
/// 3. `registry-mirror import` of the multi layout directory and of the single tar into a fresh
///    data directory;
/// 4. `registry-mirror serve --offline` on that data directory (no upstream involved).
final class MirrorFixture: Sendable {
    @TaskLocal static var current: MirrorFixture?

    static let multiRepository = "test/multi"
    static let singleRepository = "test/single"
    static let tag = "v1"

    let work: TemporaryDirectory
    let seed: UInt64
    let upstream: DistributionRegistry
    let multiLayout: URL
    let singleLayout: URL
    let singleArchive: URL
    let dataDirectory: URL
    let importMulti: CommandResult
    let importSingle: CommandResult
    let mirror: MirrorProcess

    private init(work: TemporaryDirectory, seed: UInt64, upstream: DistributionRegistry, multiLayout: URL, singleLayout: URL,
                 singleArchive: URL, dataDirectory: URL, importMulti: CommandResult, importSingle: CommandResult, mirror: MirrorProcess) {
        self.work = work
        self.seed = seed
        self.upstream = upstream
        self.multiLayout = multiLayout
        self.singleLayout = singleLayout
        self.singleArchive = singleArchive
        self.dataDirectory = dataDirectory
        self.importMulti = importMulti
        self.importSingle = importSingle
        self.mirror = mirror
    }

    static func setUp() async throws -> MirrorFixture {
        // Fail (not skip) when the binary under test is missing.
        let binary = try TestPaths.requireMirrorBinary()
        for tool in ["skopeo", "docker-registry", "timeout"] { _ = try TestPaths.executable(tool) }

        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e")
        let seed = UInt64.random(in: 1...UInt64.max)
        Progress.step("fixture: starting docker-registry (seed \(seed))")
        let upstream = try await DistributionRegistry.start()
        Progress.step("fixture: docker-registry up on \(upstream.host); pushing synthetic images")

        // Synthetic images, pushed to the real registry.
        let single = try SyntheticImages.single(at: try work.subdirectory("synthetic-single"), tag: tag, seed: seed)
        let multi = try SyntheticImages.multi(at: try work.subdirectory("synthetic-multi"), tag: tag, seed: seed &+ 1)
        for (image, repository) in [(single, singleRepository), (multi, multiRepository)] {
            try await Command.check("skopeo", [
                "copy", "--all", "--dest-tls-verify=false",
                "oci:\(image.layout.path):\(image.tag)", "docker://\(upstream.host)/\(repository):\(tag)",
            ])
        }

        Progress.step("fixture: pushed; exporting with skopeo")
        // Exported from the real registry the way a user would make a bundle.
        let multiLayout = try work.subdirectory("export-multi", create: false)
        let singleLayout = try work.subdirectory("export-single", create: false)
        let singleArchive = work.url.appendingPathComponent("export-single.tar")
        for (destination, repository) in [
            ("oci:\(multiLayout.path):\(tag)", multiRepository),
            ("oci:\(singleLayout.path):\(tag)", singleRepository),
            ("oci-archive:\(singleArchive.path):\(tag)", singleRepository),
        ] {
            try await Command.check("skopeo", [
                "copy", "--all", "--src-tls-verify=false", "docker://\(upstream.host)/\(repository):\(tag)", destination,
            ])
        }

        Progress.step("fixture: exported; importing")
        // Imported into a fresh data directory: the layout directory for multi, the tar for single.
        let dataDirectory = try work.subdirectory("mirror-data", create: false)
        let importMulti = try await Command.run(binary, [
            "import", multiLayout.path, "--as", multiRepository, "--data-dir", dataDirectory.path,
        ])
        let importSingle = try await Command.run(binary, [
            "import", singleArchive.path, "--as", singleRepository, "--data-dir", dataDirectory.path,
        ])

        Progress.step("fixture: imported (status \(importMulti.status), \(importSingle.status)); starting registry-mirror serve")
        let mirror = try await MirrorProcess.start(dataDirectory: dataDirectory, logDirectory: try work.subdirectory("logs"))
        Progress.step("fixture: registry-mirror up on \(mirror.host)")
        return MirrorFixture(work: work, seed: seed, upstream: upstream, multiLayout: multiLayout, singleLayout: singleLayout,
                             singleArchive: singleArchive, dataDirectory: dataDirectory, importMulti: importMulti,
                             importSingle: importSingle, mirror: mirror)
    }

    func tearDown() async {
        Progress.step("fixture: tearing down")
        await mirror.stop()
        await upstream.stop()
        work.remove()
        Progress.step("fixture: torn down")
    }

    // MARK: Helpers the tests share

    /// `skopeo inspect --raw` of `host/repository<reference>` (reference is `:tag` or `@digest`).
    func rawManifest(host: String, _ repository: String, _ reference: String) async throws -> [UInt8] {
        let result = try await Command.check("skopeo", [
            "inspect", "--raw", "--tls-verify=false", "docker://\(host)/\(repository)\(reference)",
        ])
        return [UInt8](result.stdoutData)
    }

    /// The bytes of a blob in a layout directory.
    static func blob(_ digest: Digest, in layout: URL) throws -> [UInt8] {
        try Files.read(layout.appendingPathComponent("blobs/\(digest.algorithm.rawValue)/\(digest.hex)"))
    }

    /// The digest `index.json` of a layout points at for `tag`.
    static func layoutRootDigest(_ layout: URL, tag: String) throws -> Digest {
        let data = try Data(contentsOf: layout.appendingPathComponent("index.json"))
        let index = try JSONDecoder().decode(ImageIndex.self, from: data)
        let tagged = index.manifests.filter { $0.annotations?[Descriptor.refNameAnnotation] == tag }
        guard tagged.count == 1 else { throw E2EError("\(layout.path)/index.json has \(tagged.count) entries tagged \(tag)") }
        return tagged[0].digest
    }
}

/// Runs a suite inside one `MirrorFixture`, torn down afterwards whatever happened.
struct MirrorEnvironmentTrait: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let fixture = try await MirrorFixture.setUp()
        do {
            try await MirrorFixture.$current.withValue(fixture) {
                try await function()
            }
        } catch {
            await fixture.tearDown()
            throw error
        }
        await fixture.tearDown()
    }
}

extension Trait where Self == MirrorEnvironmentTrait {
    /// Upstream registry + exported bundles + imported data directory + running mirror.
    static var mirrorEnvironment: Self { Self() }
}
