import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Mirror
import OCI
import RegistryMirror

/// `registry-mirror`: a pull-through cache and mirror for container registries.
@main
struct RegistryMirrorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry-mirror",
        abstract: "A pull-through cache and mirror for container registries.",
        subcommands: [Serve.self, Import.self, List.self]
    )
}

struct DataOptions: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "Data directory (blobs and index.sqlite); created if missing.")
    var dataDirectory: String = ProcessInfo.processInfo.environment["REGISTRY_MIRROR_DATA_DIR"] ?? "data"
}

struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var level: String = "info"

    func makeLogger(_ label: String) throws -> Logger {
        guard let level = Logger.Level(rawValue: level) else {
            throw ValidationError("unknown log level \(self.level)")
        }
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the Distribution API (/v2/) from the cache.")

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen: String = "0.0.0.0:5000"
    @Flag(name: .customLong("no-sendfile"), help: "Read blob files through buffers instead of sendfile(2).")
    var noSendfile = false
    @OptionGroup var data: DataOptions
    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = try log.makeLogger("registry-mirror")
        var settings = ServeSettings()
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT, got \(listen)")
        }
        settings.host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        settings.port = port
        settings.dataDirectory = data.dataDirectory
        settings.zeroCopy = !noSendfile
        let host = settings.host
        let app = try buildApplication(settings, logger: logger) { channel in
            let port = channel.localAddress?.port ?? 0
            // Tests and scripts read this line to learn the port when listening on :0.
            FileHandle.standardOutput.write(Data("registry-mirror listening on http://\(host):\(port)\n".utf8))
        }
        try await app.runService()
    }
}

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import an OCI image layout (a directory, or a .tar of one) into the cache.",
        discussion: "Every blob is verified. Images become visible only once all their blobs are in. A bad bundle leaves nothing behind."
    )

    @Argument(help: "OCI layout directory or .tar (as skopeo's oci: and oci-archive: write them).")
    var path: String
    @Option(name: .customLong("as"), help: "Reference to import as, [host/]name[:tag]; overrides the layout's ref names.")
    var reference: String?
    @Flag(help: "Pin the imported images so eviction never removes them.")
    var pin = false
    @OptionGroup var data: DataOptions
    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = try log.makeLogger("registry-mirror.import")
        let dir = try DataDirectory(path: data.dataDirectory)
        let importer = BundleImporter(store: dir.store, index: dir.index, logger: logger)
        do {
            let images = try importer.importBundle(at: path, options: .init(reference: reference, pin: pin))
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

    @OptionGroup var data: DataOptions

    func run() async throws {
        let dir = try DataDirectory(path: data.dataDirectory)
        let rows = try dir.index.listing()
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
