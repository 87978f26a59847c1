import ArgumentParser
import Foundation
import Logging
import MetadataIndex
import Mirror
import OCI
import RegistryMirror

/// Image references from the command line and, with `--file`, a list file.
enum ReferenceList {
    static func read(_ given: [String], file: String?) throws -> [String] {
        var wanted = given
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
            for line in text.split(whereSeparator: \.isNewline) {
                let entry = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0].trimmingCharacters(in: .whitespaces)
                if !entry.isEmpty { wanted.append(entry) }
            }
        }
        guard !wanted.isEmpty else { throw ValidationError("name at least one image, or --file LIST") }
        return wanted
    }
}

/// Platform flags shared by `seed` and `export`.
struct PlatformOptions: ParsableArguments {
    @Option(name: .customLong("platform"), help: ArgumentHelp("Copy this instance of a multi-platform image; repeatable.", valueName: "os/arch[/variant]"))
    var platforms: [String] = []
    @Flag(name: .customLong("all-platforms"), help: "Copy every instance of a multi-platform image.")
    var allPlatforms = false

    func selection(default fallback: PlatformSelection) throws -> PlatformSelection {
        if allPlatforms {
            guard platforms.isEmpty else { throw ValidationError("--platform and --all-platforms exclude each other") }
            return .all
        }
        guard !platforms.isEmpty else { return fallback }
        do {
            return .specific(try platforms.map { (text) throws(OCIError) in try Platform(parsing: text) })
        } catch {
            throw ValidationError(error.message)
        }
    }
}

struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pull images into the cache through the upstream, verified, for pre-seeding.",
        discussion: """
            Images are pulled exactly as a client's pull through the mirror would, and pinned (never \
            evicted) unless --no-pin is given. For a multi-platform image, only this machine's platform \
            is copied unless --platform or --all-platforms says otherwise; the index itself is always \
            kept byte-exact. What refers to each image goes along (OCI referrers such as signatures, \
            SBOMs and attestations, and cosign's sha256-<hex>.sig/.att/.sbom tags), pinned with it, \
            unless --no-referrers is given. Safe to run while `serve` uses the same data directory. \
            Exits 1 if any image failed, listing the failures at the end.
            """
    )

    @Argument(help: "Images to seed: [host/]name[:tag|@digest].")
    var references: [String] = []
    @Option(name: .customLong("file"), help: "Read more references from this file, one per line; # starts a comment.")
    var file: String?
    @Flag(name: .customLong("no-pin"), help: "Do not pin the seeded images: they may be evicted like any pulled image.")
    var noPin = false
    @Flag(name: .customLong("no-referrers"), help: "Do not copy the images' referrers (signatures, SBOMs, attestations) and cosign tags.")
    var noReferrers = false
    @OptionGroup var platform: PlatformOptions
    @OptionGroup var upstream: UpstreamOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let wanted = try ReferenceList.read(references, file: file)
        let selection = try platform.selection(default: .system)
        var configuration = try common.resolve()
        // Progress goes to stdout; keep the per-blob info logs out of its way unless asked.
        if common.logLevel == nil { configuration.logLevel = .warning }
        let logger = common.makeLogger("registry-mirror.seed", configuration)
        let settings = try upstream.settings(configuration)
        guard !settings.offline else { throw ValidationError("seed needs an upstream, but the configuration says offline") }
        let (_, content, _) = try settings.makeCache(logger: logger, seeding: true)
        let seeder = Seeder(registry: content, referrers: !noReferrers)
        let reporter = ProgressReporter(verb: "seed")
        var failures: [(String, String)] = []
        var seeded = 0
        var total: Int64 = 0
        for text in wanted {
            do throws(MirrorError) {
                let (repository, reference, name) = try settings.resolve(text)
                let result = try await seeder.seed(repository, reference, platforms: selection, pin: !noPin, name: name, progress: reporter.handler)
                reporter.handle(.imageFinished(image: name, error: nil))
                var line = "seeded \(name) \(result.digest) \(ByteCount(result.bytes))"
                if MediaType.isIndex(result.mediaType) { line += " (\(result.instances)/\(result.listed) platforms)" }
                if result.referrers > 0 { line += ", \(result.referrers) referrer\(result.referrers == 1 ? "" : "s")" }
                if !noPin { line += ", pinned" }
                print(line)
                seeded += 1
                total += result.bytes
            } catch {
                reporter.handle(.imageFinished(image: text, error: error.message))
                failures.append((text, error.message))
            }
        }
        print("seed: \(seeded) of \(wanted.count) images, \(ByteCount(total))")
        guard failures.isEmpty else {
            FileHandle.standardError.write(Data("seed: \(failures.count) image(s) failed:\n".utf8))
            for (name, message) in failures { FileHandle.standardError.write(Data("  \(name): \(message)\n".utf8)) }
            throw ExitCode(1)
        }
    }
}

struct GC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Evict least recently used, unpinned images now, down to the size cap, and remove stray files.",
        discussion: """
            The same pass `serve` runs in the background when storage.max_size is set: images go \
            least recently used first, with their tags; a blob goes only when no remaining image \
            references it. Pinned images stay. Without a cap, nothing is evicted. Either way, store \
            files the index has no record of (left by a crash) and older than 6 hours are removed; \
            with storage.backend: s3, multipart uploads idle longer than \
            storage.s3.upload_sweep.older_than (left by a crashed replica) are aborted. \
            With --dry-run, reports what would be freed and changes nothing. Safe beside a running \
            server: a response already streaming a blob keeps its open file.
            """
    )

    @Flag(name: .customLong("dry-run"), help: "Report what would be evicted; change nothing.")
    var dryRun = false
    @Option(name: .customLong("max-size"), help: "Cap to evict down to (500MiB, 20GiB). Default: storage.max_size.")
    var maxSize: String?
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let configuration = try common.resolve()
        let logger = common.makeLogger("registry-mirror.gc", configuration)
        let cap = try maxSize.map(parseMaxSize) ?? configuration.maxSize
        // The store blobs live in: the data directory, or the bucket with storage.backend: s3.
        let data = try DataDirectory(path: configuration.dataDirectory, index: configuration.index, s3: configuration.s3Storage)
        let maintenance = CacheMaintenance(store: data.blobs, index: data.index, maxBytes: cap, logger: logger)
        let unindexed = try await maintenance.sweepUnindexed(dryRun: dryRun)
        print("\(dryRun ? "would remove" : "removed") \(unindexed.count) store files the index does not know, \(ByteCount(unindexed.reduce(0) { $0 + $1.size }))")
        if let s3 = configuration.s3Storage { try await sweepUploads(s3) }
        let plan = try await maintenance.evict(dryRun: dryRun)
        let verb = dryRun ? "would evict" : "evicted"
        for image in plan.images {
            print("\(verb) \(image.tags.isEmpty ? "(untagged)" : image.tags.joined(separator: ", ")) \(image.digest)")
        }
        guard let cap else {
            print("no size cap (--max-size or storage.max_size): nothing evicted; store \(ByteCount(plan.bytesAfter))")
            return
        }
        print("\(dryRun ? "would free" : "freed") \(ByteCount(plan.bytesFreed)) in \(plan.blobs.count) blobs; store \(ByteCount(plan.bytesBefore)) → \(ByteCount(plan.bytesAfter)), cap \(ByteCount(cap))")
        if plan.bytesAfter > cap { print("still over the cap: the rest is pinned") }
    }
}

extension GC {
    /// With `storage.backend: s3`: the multipart uploads idle longer than
    /// `storage.s3.upload_sweep.older_than`, which `serve` also aborts on its schedule.
    func sweepUploads(_ settings: S3StorageSettings) async throws {
        let count = try await settings.sweepIdleUploads(dryRun: dryRun)
        print("\(dryRun ? "would abort" : "aborted") \(count) multipart uploads in s3://\(settings.bucket) idle longer than \(settings.uploadSweepAge)")
    }
}

/// Resolves references in the cache to the digests of their root manifests, as `seed` resolved
/// them. Prints the error and exits 1 for one that is not cached. With `blobs`, the directory
/// also opens the bucket of `storage.backend: s3` (for `export`, which reads blobs).
func cachedRoots(_ texts: [String], _ common: CommonOptions, _ upstream: UpstreamNameOptions, blobs: Bool = false) async throws -> (DataDirectory, [(digest: Digest, name: String)]) {
    let configuration = try common.resolve()
    let settings = try upstream.settings(configuration)
    let data = try DataDirectory(path: configuration.dataDirectory, index: configuration.index, s3: blobs ? configuration.s3Storage : nil)
    do throws(MirrorError) {
        var roots: [(digest: Digest, name: String)] = []
        for text in texts {
            let found = try await settings.cachedRoot(text, in: data.index)
            roots.append((found.digest, found.name))
        }
        return (data, roots)
    } catch {
        FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
        throw ExitCode(1)
    }
}

struct Pin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pin cached images so eviction never removes them; with no argument, list the pins.")

    @Argument(help: "Cached images: [host/]name[:tag|@digest].")
    var references: [String] = []
    @OptionGroup var upstream: UpstreamNameOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        guard !references.isEmpty else {
            let configuration = try common.resolve()
            let data = try DataDirectory(path: configuration.dataDirectory, index: configuration.index)
            for pin in try await data.index.pinned() {
                print("\(pin.digest)  \(pin.references.isEmpty ? "(untagged)" : pin.references.joined(separator: ", "))")
            }
            return
        }
        let (data, roots) = try await cachedRoots(references, common, upstream)
        for (digest, name) in roots {
            try await data.index.setPinned(digest, true)
            print("pinned \(name) \(digest)")
        }
    }
}

struct Unpin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unpin cached images: eviction may remove them again.")

    @Argument(help: "Cached images: [host/]name[:tag|@digest].")
    var references: [String]
    @OptionGroup var upstream: UpstreamNameOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let (data, roots) = try await cachedRoots(references, common, upstream)
        for (digest, name) in roots {
            try await data.index.setPinned(digest, false)
            print("unpinned \(name) \(digest)")
        }
    }
}
