import Hummingbird
import Logging
import Mirror
import NIOCore
import OCI
import RegistryAPI
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

    public init() {}
}

/// The composition root: builds the whole server from settings.
public func buildApplication(
    _ settings: ServeSettings,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let data = try DataDirectory(path: settings.dataDirectory)
    let local = LocalRegistry(store: data.store, index: data.index)
    let transport = CurlTransport()
    let upstreams = settings.upstreams.map { UpstreamRegistry($0, transport: transport, logger: logger) }
    let content = PullThroughRegistry(local: local, upstreams: upstreams, policies: settings.policies,
                                      offline: settings.offline, logger: logger)
    let router = Router(context: RegistryRequestContext.self)
    RegistryRoutes(content: content, router: UpstreamRouter(names: settings.upstreams.map(\.name), defaultUpstream: settings.defaultUpstream))
        .add(to: router)
    router.get("/") { _, _ in "registry-mirror: a pull-through cache for container registries. The API is at /v2/.\n" }
    router.get("/healthz") { _, _ in "ok\n" }
    router.get("/readyz") { _, _ -> Response in
        // Ready when the index answers a query.
        _ = try data.index.schemaVersion()
        return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
    }
    return Application(
        router: router,
        server: RegistryServer.http1(zeroCopy: settings.zeroCopy),
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
        onServerRunning: onServerRunning,
        logger: logger
    )
}
