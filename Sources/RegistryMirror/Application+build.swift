import Hummingbird
import Logging
import Mirror
import NIOCore
import OCI
import RegistryAPI
import ServiceLifecycle
import Upstream

/// What `serve` runs with. Defaults are the embedded ones: listen on 0.0.0.0:5000, data in
/// `./data`, Docker Hub as the default upstream.
public struct ServeSettings: Sendable {
    public var host = "0.0.0.0"
    public var port = 5000
    public var dataDirectory = "data"
    /// Upstreams by name; requests route to them by `?ns=`, path prefix, or `defaultUpstream`.
    public var upstreams: [UpstreamConfiguration] = [.dockerHub]
    public var defaultUpstream = ImageReference.dockerHub
    public var policies: [String: UpstreamPolicy] = [:]
    /// Never contact an upstream; serve what is cached.
    public var offline = false
    /// Send blob files with sendfile(2). Off: read them through buffers (for filesystems
    /// where sendfile misbehaves, and for measuring the difference).
    public var zeroCopy = true
    /// `storage.max_size` in bytes: evict least recently used content above it. Nil: no cap.
    public var maxBytes: Int64?
    public var evictionInterval: Duration = .seconds(30)

    public init() {}

    /// The cache core these settings describe: store and index, the pull-through registry
    /// over them, and the maintenance (access times, eviction) that `serve` runs in the
    /// background. `seed` uses the same, so it pulls exactly as the server would.
    /// `seeding` turns off the background fetch of every child of an index, so a seed copies
    /// exactly the instances chosen.
    public func makeCache(logger: Logger, seeding: Bool = false) throws -> (data: DataDirectory, content: PullThroughRegistry, maintenance: CacheMaintenance) {
        let data = try DataDirectory(path: dataDirectory)
        let maintenance = CacheMaintenance(store: data.store, index: data.index, maxBytes: maxBytes,
                                           checkInterval: evictionInterval, logger: logger)
        let local = LocalRegistry(store: data.store, index: data.index)
        let transport = CurlTransport()
        let registries = upstreams.map { UpstreamRegistry($0, transport: transport, logger: logger) }
        let content = PullThroughRegistry(local: local, upstreams: registries, policies: policies,
                                          offline: offline, maintenance: maintenance, prefetchChildManifests: !seeding, logger: logger)
        return (data, content, maintenance)
    }
}

/// Runs the cache maintenance loop as a service, so it stops (and flushes access times)
/// with the server.
struct MaintenanceService: Service {
    let maintenance: CacheMaintenance
    func run() async throws {
        await cancelWhenGracefulShutdown { await maintenance.run() }
    }
}

/// The composition root: builds the whole server from settings.
public func buildApplication(
    _ settings: ServeSettings,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let (data, content, maintenance) = try settings.makeCache(logger: logger)
    let router = Router(context: RegistryRequestContext.self)
    RegistryRoutes(content: content, router: settings.upstreamRouter, maintenance: maintenance)
        .add(to: router)
    router.get("/") { _, _ in "registry-mirror: a pull-through cache for container registries. The API is at /v2/.\n" }
    router.get("/healthz") { _, _ in "ok\n" }
    router.get("/readyz") { _, _ -> Response in
        // Ready when the index answers a query.
        _ = try data.index.schemaVersion()
        return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
    }
    var app = Application(
        router: router,
        server: RegistryServer.http1(zeroCopy: settings.zeroCopy),
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
        onServerRunning: onServerRunning,
        logger: logger
    )
    app.addServices(MaintenanceService(maintenance: maintenance))
    return app
}

extension ServeSettings {
    public var upstreamRouter: UpstreamRouter {
        UpstreamRouter(names: upstreams.map(\.name), defaultUpstream: defaultUpstream)
    }
}

extension ServeSettings {
    /// Resolves an image reference typed on the command line to the cache's key, the way a
    /// pull through this mirror would: an explicit registry host must be one of the
    /// upstreams; without one, the default upstream (with Docker Hub's `library/` rule).
    /// `anyHost` accepts hosts that are not configured upstreams (for content imported from
    /// elsewhere, as `pin` and `export` see it).
    public func resolve(_ text: String, anyHost: Bool = false) throws(MirrorError) -> (repository: RepositoryKey, reference: ManifestReference, name: String) {
        let first = text.split(separator: "/", maxSplits: 1).first ?? ""
        let explicitHost = text.contains("/") && (first.contains(".") || first.contains(":") || first == "localhost")
        let spelled = explicitHost || defaultUpstream == ImageReference.dockerHub ? text : "\(defaultUpstream)/\(text)"
        let parsed: ImageReference
        do {
            parsed = try ImageReference(parsing: spelled)
        } catch {
            throw MirrorError(.nameInvalid, error.message)
        }
        guard anyHost || upstreams.contains(where: { $0.name == parsed.host }) || parsed.host == defaultUpstream else {
            let known = upstreams.map(\.name).joined(separator: ", ")
            throw MirrorError(.nameUnknown, "\(text): no upstream is named \(parsed.host) (configured: \(known)); add --upstream \(parsed.host)=URL")
        }
        return (RepositoryKey(upstream: parsed.host, name: parsed.repository), parsed.manifestReference, parsed.description)
    }
}
