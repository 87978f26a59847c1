import ArgumentParser
import Bundles
import Foundation
import OCI
import RegistryMirror

/// `registry-mirror export`: cached images to an OCI layout bundle, for `import` or skopeo elsewhere.
struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write cached images to an OCI image layout (a directory, or a .tar of one).",
        discussion: """
            Reads only the cache: the data directory, or with storage.backend: s3 the bucket \
            (and the PostgreSQL index of index.backend: postgres). The data directory must exist \
            unless both are remote. Short names resolve as `seed` \
            resolves them, against --upstream or the configuration's upstreams. Each image is named in index.json by its full reference \
            (docker.io/library/alpine:3.20), which is what `skopeo copy oci:DIR:REF` and \
            `oci-archive:FILE.tar:REF` take. Every blob is re-hashed as it is written; a damaged \
            cached blob fails the export. The bundle is written beside its final path under a temporary \
            name and renamed at the end, so a failed export leaves nothing. An existing file or \
            non-empty directory there is never overwritten.
            Multi-platform images: by default every platform that is fully cached is written; \
            --platform and --all-platforms demand the named platforms, and fail if one is not cached. \
            The index itself is always written byte-exact. \
            What refers to each image goes along as entries of its own: cosign's sha256-<hex>.sig/.att/.sbom \
            tags by tag, and OCI referrers (signatures, SBOMs, attestations) by digest (name@sha256:...); \
            --no-referrers leaves them out, as `podman load` of a one-image bundle needs.
            """
    )

    @Argument(help: ArgumentHelp("Images to export, as cached: [host/]name[:tag|@digest].", valueName: "ref"))
    var references: [String] = []
    @Option(name: .customLong("file"), help: "Read more references from this file, one per line; # starts a comment (the list `seed` took).")
    var file: String?
    @Option(name: .shortAndLong, help: ArgumentHelp("Bundle to write: a directory, or a tar if it ends in .tar.", valueName: "bundle"))
    var output: String
    @Flag(name: .customLong("no-referrers"), help: "Write only the images, not their referrers and cosign tag artifacts.")
    var noReferrers = false
    @OptionGroup var platform: PlatformOptions
    @OptionGroup var upstream: UpstreamNameOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let references = try ReferenceList.read(references, file: file)
        // nil: every fully cached instance (what `seed` chose); the flags demand instances.
        let selection: PlatformSelection? = platform.allPlatforms || !platform.platforms.isEmpty ? try platform.selection(default: .all) : nil
        let configuration = try common.resolve()
        let logger = common.makeLogger("registry-mirror.export", configuration)
        var isDirectory: ObjCBool = false
        // A fleet's cache (blobs in S3, index in PostgreSQL) needs no local data directory.
        let local = configuration.s3Storage == nil || configuration.index.backend == .sqlite
        guard !local || FileManager.default.fileExists(atPath: configuration.dataDirectory, isDirectory: &isDirectory) && isDirectory.boolValue else {
            // Opening it would create an empty cache, and every image would be "not cached".
            FileHandle.standardError.write(Data("error: data directory \(configuration.dataDirectory) does not exist\n".utf8))
            throw ExitCode(1)
        }
        // Short names mean what they meant to `seed`: resolved against the same upstreams.
        let (dir, roots) = try await cachedRoots(references, common, upstream, blobs: true)
        // With blobs in S3, the bucket itself, as `verify` reads it: not a local disk tier's copies.
        let exporter = BundleExporter(store: dir.s3 ?? dir.blobs, index: dir.index, logger: logger)
        let reporter = ProgressReporter(verb: "export")
        do {
            let summary = try await exporter.export(roots.map(\.name), to: output, options: .init(platforms: selection, progress: reporter.handler, referrers: !noReferrers))
            for image in summary.images {
                var line = "exported \(image.name) \(image.digest) \(image.mediaType) \(ByteCount(image.bytes))"
                if let subject = image.referrerOf {
                    line += " (refers to \(subject))"
                } else if MediaType.isIndex(image.mediaType) {
                    line += " (\(image.platformsWritten)/\(image.platformsListed) platforms)"
                }
                print(line)
            }
            let images = summary.images.count == 1 ? "1 image" : "\(summary.images.count) images"
            print("wrote \(images), \(summary.blobs) blobs, \(ByteCount(summary.bytes)) to \(summary.output)")
        } catch {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }
}
