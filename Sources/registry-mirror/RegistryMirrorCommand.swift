import ArgumentParser
import Bundles
import ContentStore
import Foundation
import Logging
import Mirror
import OCI
import RegistryMirror
import Upstream

/// `registry-mirror`: a pull-through cache and mirror for container registries.
@main
struct RegistryMirrorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry-mirror",
        abstract: "A pull-through cache and mirror for container registries.",
        version: RegistryMirrorVersion.current,
        subcommands: [Serve.self, Seed.self, Export.self, Import.self, List.self, GC.self, Pin.self, Unpin.self, Verify.self, ConfigCommand.self]
    )
}

/// Options every command shares. Precedence: flags, then `REGISTRY_MIRROR_*`, then the file, then defaults.
struct CommonOptions: ParsableArguments {
    @Option(help: "YAML configuration file (see config/registry-mirror.yaml).")
    var config: String?
    @Option(name: .customLong("data-dir"), help: "Data directory (blobs and index.sqlite); created if missing. Default: ./data.")
    var dataDirectory: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. Default: info.")
    var logLevel: String?
    @Option(name: .customLong("log-format"), help: "text or json. Default: text.")
    var logFormat: String?

    func resolve() throws -> MirrorConfiguration {
        var configuration: MirrorConfiguration
        do {
            configuration = try MirrorConfiguration.load(file: config)
        } catch {
            FileHandle.standardError.write(Data("error: \(error.description)\n".utf8))
            throw ExitCode(2)
        }
        if let dataDirectory { configuration.dataDirectory = dataDirectory }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel.lowercased()) else { throw ValidationError("unknown log level \(logLevel)") }
            configuration.logLevel = level
        }
        if let logFormat {
            guard let format = LogFormat(rawValue: logFormat.lowercased()) else { throw ValidationError("--log-format must be text or json, got \(logFormat)") }
            configuration.logFormat = format
        }
        return configuration
    }

    func makeLogger(_ label: String, _ configuration: MirrorConfiguration) -> Logger {
        bootstrapLogging(format: configuration.logFormat)
        var logger = Logger(label: label)
        logger.logLevel = configuration.logLevel
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the Distribution API (/v2/) from the cache.")

    @Option(help: "Address to listen on, HOST:PORT. Default: 0.0.0.0:5000.")
    var listen: String?
    @Flag(name: .customLong("no-sendfile"), help: "Read blob files through buffers instead of sendfile(2).")
    var noSendfile = false
    @Flag(help: "Never contact an upstream; serve only what is cached.")
    var offline = false
    @Option(name: .customLong("max-size"), help: "Cap the store (500MiB, 20GiB): least recently used, unpinned images are evicted above it. Default: no cap.")
    var maxSize: String?
    @OptionGroup var upstream: UpstreamOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        var configuration = try common.resolve()
        if let listen {
            guard MirrorConfiguration.parseListen(listen) != nil else { throw ValidationError("--listen must be HOST:PORT, got \(listen)") }
            configuration.listen = listen
        }
        if noSendfile { configuration.sendfile = false }
        let logger = common.makeLogger("registry-mirror", configuration)
        var settings = try upstream.settings(configuration)
        if offline { settings.offline = true }
        if let maxSize { settings.maxBytes = try parseMaxSize(maxSize) }
        let host = settings.host
        let scheme = settings.tls == nil ? "http" : "https"
        try await runServer(settings, logger: logger) { channel in
            let port = channel.localAddress?.port ?? 0
            // Tests and scripts read this line to learn the port when listening on :0.
            FileHandle.standardOutput.write(Data("registry-mirror listening on \(scheme)://\(host):\(port)\n".utf8))
        }
    }
}

/// The `--upstream` flag: the upstreams, and so what a short image name means. Shared by every
/// command that takes image names, so `seed`, `serve`, `export`, `pin` and `unpin` resolve
/// `lab/app:1` to the same cached image.
struct UpstreamNameOptions: ParsableArguments {
    @Option(name: .customLong("upstream"), help: ArgumentHelp(
        "An upstream registry, URL or NAME=URL; repeatable. The first is the default. Default: Docker Hub.",
        valueName: "[NAME=]URL"))
    var upstreams: [String] = []

    /// The configuration's serve settings with `--upstream` applied over them.
    func settings(_ configuration: MirrorConfiguration) throws -> ServeSettings {
        var settings = configuration.serveSettings
        if !upstreams.isEmpty {
            do {
                settings.upstreams = try upstreams.map(UpstreamSpec.parse)
            } catch {
                throw ValidationError(error.description)
            }
            settings.defaultUpstream = settings.upstreams[0].name
        }
        return settings
    }
}

/// Upstream flags shared by `serve` and `seed`.
struct UpstreamOptions: ParsableArguments {
    @OptionGroup var names: UpstreamNameOptions
    @Option(name: .customLong("tag-ttl"), help: "How long a cached tag is served without asking the upstream (30s, 5m, 1h). Default: 5m.")
    var tagTTL: String?

    /// The configuration's serve settings with these flags applied over them.
    func settings(_ configuration: MirrorConfiguration) throws -> ServeSettings {
        var settings = try names.settings(configuration)
        if let tagTTL {
            guard let ttl = UpstreamSpec.duration(tagTTL) else { throw ValidationError("--tag-ttl must look like 30s, 5m or 1h, got \(tagTTL)") }
            settings.overrideTagTTL(ttl)
        }
        return settings
    }
}

func parseMaxSize(_ text: String) throws -> Int64 {
    guard let size = ByteSize.parse(text), size > 0 else { throw ValidationError("--max-size must look like 500MiB or 20GiB, got \(text)") }
    return size
}

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import an OCI image layout or a docker save archive (a directory, or a .tar of one) into the cache.",
        discussion: "Every blob is verified. Images become visible only once all their blobs are in. A bad bundle leaves nothing behind."
    )

    @Argument(help: "OCI layout directory or .tar (as skopeo's oci: and oci-archive: write them), or a docker save archive.")
    var path: String
    @Option(name: .customLong("as"), help: "Reference to import as, [host/]name[:tag]; overrides the layout's ref names.")
    var reference: String?
    @Flag(help: "Pin the imported images so eviction never removes them.")
    var pin = false
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let configuration = try common.resolve()
        let logger = common.makeLogger("registry-mirror.import", configuration)
        let dir = try DataDirectory(path: configuration.dataDirectory, index: configuration.index, s3: configuration.s3Storage)
        // With storage.backend: s3, straight into the bucket the fleet serves from: no spool,
        // and no copy in this machine's disk tier.
        let importer = BundleImporter(store: dir.s3 ?? dir.blobs, index: dir.index, logger: logger)
        do {
            let progress = ProgressReporter(verb: "import").handler
            let images = try await importer.importBundle(at: path, options: .init(reference: reference, pin: pin, progress: progress))
            for image in images {
                var line = "imported \(image.reference) \(image.digest) \(image.mediaType) \(ByteCount(image.bytes))"
                if MediaType.isIndex(image.mediaType) { line += " (\(image.platformsPresent)/\(image.platformsListed) platforms)" }
                print(line)
            }
        } catch {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List cached repositories, tags, digests and sizes.")

    @OptionGroup var common: CommonOptions

    func run() async throws {
        let configuration = try common.resolve()
        let dir = try DataDirectory(path: configuration.dataDirectory, index: configuration.index)
        let rows = try await dir.index.listing()
        guard !rows.isEmpty else {
            print("(the cache is empty)")
            return
        }
        let width = rows.map { "\($0.repository):\($0.tag)".count }.max() ?? 0
        for row in rows {
            let name = "\(row.repository):\(row.tag)"
            print(name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(row.digest)  \(ByteCount(row.size))")
        }
    }
}

/// Human-readable byte counts: 1.5 MiB.
struct ByteCount: CustomStringConvertible {
    let bytes: Int64
    init(_ bytes: Int64) { self.bytes = bytes }
    var description: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes), unit = 0
        while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Work with configuration files.",
                                                    subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a configuration file and list every problem.")
        @Argument(help: "The YAML file to check.")
        var file: String

        func run() async throws {
            do {
                let configuration = try MirrorConfiguration.load(file: file, environment: [:])
                // As `serve` would start with this file alone: watched images name its upstreams.
                _ = try configuration.serveSettings.resolvedWatchImages()
                print("\(file): ok")
            } catch {
                FileHandle.standardError.write(Data("\(file): \(error.description)\n".utf8))
                throw ExitCode(2)
            }
        }
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-hash every cached blob and report corrupt and missing ones.",
        discussion: "With --repair, corrupt blobs are removed and the index forgets removed and missing blobs; a pull-through mirror fetches them again on the next request. Without --repair, exits 1 if anything is wrong."
    )

    @Flag(help: "Remove corrupt blobs so they are fetched again.")
    var repair = false
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let configuration = try common.resolve()
        let dir = try DataDirectory(path: configuration.dataDirectory, index: configuration.index, s3: configuration.s3Storage)
        // With blobs in S3, the bucket is what counts (not a local disk tier's copies).
        let store: any BlobStore = dir.s3 ?? dir.blobs
        let report = try await StoreVerifier(store: store, index: dir.index).run(repair: repair)
        for (digest, reason) in report.corrupt {
            print("corrupt \(digest): \(reason)\(report.removed.contains(digest) ? " (removed)" : "")")
        }
        for digest in report.missing { print("missing \(digest): indexed, but not in the store") }
        print("checked \(report.checked) blobs, \(ByteCount(report.bytes)): \(report.corrupt.count) corrupt, \(report.missing.count) missing\(repair ? ", \(report.removed.count) removed" : "")")
        if !repair, !report.isClean { throw ExitCode(1) }
    }
}
