import Foundation
import Hummingbird
import Logging
import ContentStore
import MetadataIndex
import Prometheus
import Mirror
import NIOCore
import OCI
import RegistryAPI
import RegistryServer
import ServiceLifecycle
import Upstream

/// What `serve` runs with. Defaults are the embedded ones: listen on 0.0.0.0:5000, data in
/// `./data`, Docker Hub as the default upstream.
public struct ServeSettings: Sendable {
    public var host = "0.0.0.0"
    public var port = 5000
    public var dataDirectory = "data"
    /// `index.*`: SQLite in the data directory, or a PostgreSQL database.
    public var index = IndexConfiguration()
    /// Blobs in an S3-compatible bucket instead of the data directory (the index stays there).
    public var s3Storage: S3StorageSettings?
    /// `fleet.*`: a replica of a fleet on a shared S3 store and PostgreSQL index. Nil: one node.
    public var fleet: FleetSettings?
    /// Upstreams by name; requests route to them by `?ns=`, path prefix, or `defaultUpstream`.
    public var upstreams: [UpstreamConfiguration] = [.dockerHub]
    public var defaultUpstream = ImageReference.dockerHub
    public var policies: [String: UpstreamPolicy] = [:]
    /// `upstreams[].allow`, `deny`, `deny_status`, by upstream name; absent: every repository.
    public var access: [String: RepositoryAccess] = [:]
    /// Never contact an upstream; serve what is cached.
    public var offline = false
    /// Send blob files with sendfile(2). Off: read them through buffers (for filesystems
    /// where sendfile misbehaves, and for measuring the difference).
    public var zeroCopy = true
    /// Close keep-alive connections idle this long; a response in progress is never cut.
    public var idleTimeout: Duration = .seconds(75)
    /// `storage.max_size` in bytes: evict least recently used content above it. Nil: no cap.
    public var maxBytes: Int64?
    public var evictionInterval: Duration = .seconds(30)
    /// `http.max_connections`. Nil: `DescriptorLimit.defaultMaxConnections`.
    public var maxConnections: Int?
    /// `metrics.listen`: a second listener that serves only `/metrics`, without client auth.
    public var metricsListen: (host: String, port: Int)?
    /// `http.tls.*`: serve HTTPS with these files (re-read when they change). Nil: plain HTTP.
    public var tls: TLSFiles?
    /// `storage.min_free_space`: below it, `/readyz` answers 503.
    public var minFreeSpace: Int64 = 1 << 30
    /// `auth.htpasswd.path`: require HTTP Basic credentials from this file. Nil: open.
    public var htpasswdPath: String?
    public var htpasswdRealm = "registry-mirror"
    /// `auth.failures.*`: wrong passwords allowed per client address per window (0: no limit).
    public var authFailureLimit = 10
    public var authFailureWindow: Duration = .seconds(60)
    /// `auth.hashing.*`: the threads that run bcrypt, and how many logins may wait for them.
    public var hashingThreads = 1
    public var hashingMaxWaiting = 32
    /// `watch.*`: images kept fresh on a schedule, before any client asks (`WatchList`).
    public var watchImages: [WatchEntry] = []
    public var watchInterval = MirrorConfiguration.defaultWatchInterval
    /// On graceful shutdown (SIGTERM), how long running blob downloads may go on before they
    /// are cancelled (nothing partial is kept).
    public var fillShutdownGrace: Duration = .seconds(10)

    public init() {}

    /// The cache core these settings describe: store and index, the pull-through registry
    /// over them, and the maintenance (access times, eviction) that `serve` runs in the
    /// background. `seed` uses the same, so it pulls exactly as the server would.
    /// `seeding` turns off the background fetch of every child of an index, so a seed copies
    /// exactly the instances chosen.
    public func makeCache(logger: Logger, seeding: Bool = false, stats: MirrorStats? = nil,
                          fills: FillService? = nil) throws -> (data: DataDirectory, content: PullThroughRegistry, maintenance: CacheMaintenance) {
        let data = try DataDirectory(path: dataDirectory, index: index, s3: s3Storage, logger: logger)
        let maintenance = CacheMaintenance(store: data.blobs, index: data.index, maxBytes: maxBytes,
                                           checkInterval: evictionInterval, stats: stats, logger: logger)
        let local = LocalRegistry(store: data.blobs, index: data.index)
        let transport = CurlTransport()
        let registries = upstreams.map { UpstreamRegistry($0, transport: transport, observer: stats, logger: logger) }
        let member = try fleet.map { try fleetMember($0, data: data, transport: transport) }
        if let member { maintenance.share(SharedReads(store: member.leases, owner: member.owner, interval: FleetHeartbeatService.interval)) }
        let content = PullThroughRegistry(local: local, upstreams: registries, policies: policies, access: access, offline: offline,
                                          maintenance: maintenance, prefetchChildManifests: !seeding, stats: stats, fillService: fills,
                                          fleet: member, logger: logger)
        return (data, content, maintenance)
    }
}

extension ServeSettings {
    /// `--tag-ttl`: one TTL for every upstream, over what the configuration set; each
    /// upstream's other policies (stale-if-error, prefetch, the rate-limit reserve) stay.
    public mutating func overrideTagTTL(_ ttl: Duration) {
        for upstream in upstreams {
            var policy = policies[upstream.name] ?? UpstreamPolicy()
            policy.tagTTL = ttl
            policies[upstream.name] = policy
        }
    }
}

/// This replica's `FleetMember`: the shared index's lease table, and spools beside the S3 store.
func fleetMember(_ settings: FleetSettings, data: DataDirectory, transport: CurlTransport) throws -> FleetMember {
    guard let leases = data.index as? any FillLeaseStore else {
        throw MirrorSetupError("fleet: the index must be PostgreSQL (index.backend: postgres) for replicas to share downloads")
    }
    guard let spooling = data.blobs as? any SpoolingBlobStore else {
        throw MirrorSetupError("fleet: the blob store must be S3 (storage.backend: s3) for replicas to share blobs")
    }
    return FleetMember(replica: settings.replicaID, peerURL: settings.advertise, secret: settings.secret, leases: leases,
                       leaseTTL: settings.leaseTTL, peerWait: settings.peerWait, transport: transport) { digest throws(StoreError) in
        try spooling.makeSpool(expecting: digest)
    }
}

/// The fleet's peer endpoint on `fleet.listen` (`FleetPeerRoutes`), and this replica's
/// heartbeat in the index, which lists it among the peers. A service of the main application.
func peerApplication(_ member: FleetMember, content: PullThroughRegistry, maintenance: CacheMaintenance, settings: FleetSettings,
                     zeroCopy: Bool, idleTimeout: Duration, logger: Logger) -> some Service {
    let router = Router(context: RegistryRequestContext.self)
    FleetPeerRoutes(secret: settings.secret) { digest in content.peerBlob(digest) }.add(to: router)
    var app = Application(
        router: router,
        server: RegistryPipeline.http1(zeroCopy: zeroCopy, idleTimeout: idleTimeout, parseErrorAnswer: RegistryError.parseErrorAnswer),
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
        onServerRunning: { channel in
            logger.info("fleet peer endpoint listening", metadata: [
                "fleet.listen": "\(settings.host):\(channel.localAddress?.port ?? settings.port)", "fleet.advertise": "\(member.peerURL)",
                "fleet.replica": "\(member.replica)", "fleet.owner": "\(member.owner)"])
        },
        logger: logger
    )
    app.addServices(FleetHeartbeatService(member: member, maintenance: maintenance, logger: logger))
    return app
}

/// Says every few seconds, in the index, that this replica is alive (the status page's
/// peers), and which blobs its responses stream (other replicas' eviction leaves them).
struct FleetHeartbeatService: Service {
    let member: FleetMember
    let maintenance: CacheMaintenance
    let logger: Logger
    static let interval: Duration = .seconds(2)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await member.heartbeat()
                } catch {
                    logger.debug("fleet heartbeat failed", metadata: ["error": "\(error)"])
                }
                do {
                    try await maintenance.publishReads()
                } catch {
                    logger.warning("publishing this replica's reads failed; other replicas' eviction may not see them", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: Self.interval)
            }
        }
    }
}

/// Copies blobs read from the bucket into the local disk tier (`TieredStore.run`).
struct TierCopyService: Service {
    let tier: TieredStore
    func run() async throws {
        await cancelWhenGracefulShutdown { await tier.run() }
    }
}

/// Runs the cache maintenance loop as a service, so it stops (and flushes access times)
/// with the server. Stopped, not cancelled: the last flush must reach the index.
struct MaintenanceService: Service {
    let maintenance: CacheMaintenance
    func run() async throws {
        await withGracefulShutdownHandler {
            await maintenance.run()
        } onGracefulShutdown: {
            maintenance.stop()
        }
    }
}

/// Runs blob fills and prefetches (`FillService`) as a service. On graceful shutdown it takes
/// no new ones and gives running fills `grace` to finish, then cancels them cleanly.
struct FillsService: Service {
    let fills: FillService
    let grace: Duration
    func run() async throws {
        await withGracefulShutdownHandler {
            await fills.run(grace: grace)
        } onGracefulShutdown: {
            fills.shutDown()
        }
    }
}

/// The composition root: builds the whole server from settings, its fills and prefetches
/// owned by a `FillsService` among the application's services.
public func buildApplication(
    _ settings: ServeSettings,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let fills = FillService(logger: logger)
    var app = try makeApplication(settings, logger: logger, fills: fills, onServerRunning: onServerRunning)
    app.addServices(FillsService(fills: fills, grace: settings.fillShutdownGrace))
    return app
}

/// Runs `serve` until SIGTERM or SIGINT.
///
/// The fills service runs beside the application, after it, so a graceful shutdown reaches
/// it first: it takes no new downloads, gives running ones `fillShutdownGrace`, and cancels the
/// rest (their clients' bodies are cut; nothing partial is kept). Only then does the HTTP
/// server drain its connections, which no stalled download holds open any more. Inside the
/// application, services are shut down after the server, which would wait for those clients.
public func runServer(
    _ settings: ServeSettings,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) async throws {
    let fills = FillService(logger: logger)
    let app = try makeApplication(settings, logger: logger, fills: fills, onServerRunning: onServerRunning)
    let group = ServiceGroup(configuration: .init(
        services: [app, FillsService(fills: fills, grace: settings.fillShutdownGrace)],
        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
}

func makeApplication(
    _ settings: ServeSettings,
    logger: Logger,
    fills: FillService,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void
) throws -> Application<RouterResponder<RegistryRequestContext>> {
    // Metrics go to a registry of this application's own, not a process-wide bootstrap,
    // so several applications (tests) can live in one process.
    let prometheus = PrometheusCollectorRegistry()
    let stats = MirrorStats(factory: PrometheusMetricsFactory(registry: prometheus))
    let (data, content, maintenance) = try settings.makeCache(logger: logger, stats: stats, fills: fills)
    let watch = try makeWatchList(settings, content: content, logger: logger)
    stats.register(upstreams: settings.upstreams.map(\.name))
    let router = Router(context: RegistryRequestContext.self)
    router.add(middleware: RequestLogMiddleware(stats: stats))
    let routes = RegistryRoutes(content: content, router: settings.upstreamRouter, forwarding: settings.credentialForwarding)
    if let path = settings.htpasswdPath {
        let htpasswd = try Htpasswd(path: path, hashing: CryptThreads(threads: settings.hashingThreads, maxWaiting: settings.hashingMaxWaiting))
        let throttle = LoginThrottle(limit: settings.authFailureLimit, window: settings.authFailureWindow)
        // Requests for an upstream that forwards client credentials are checked there, not here.
        router.add(middleware: BasicAuthMiddleware(htpasswd: htpasswd, realm: settings.htpasswdRealm, throttle: throttle,
                                                   delegated: { routes.delegatesAuthentication($0) }))
    } else if settings.credentialForwarding != nil {
        let throttle = LoginThrottle(limit: settings.authFailureLimit, window: settings.authFailureWindow)
        router.add(middleware: DelegatedLoginThrottleMiddleware(throttle: throttle, delegated: { routes.delegatesAuthentication($0) }))
    }
    routes.add(to: router)
    let upstreamList = settings.upstreams.map { (name: $0.name, url: $0.url.absoluteString) }
    router.get("/") { _, _ -> Response in
        let fills = content.activeFills.map { StatusPage.Fill(upstream: $0.upstream, digest: $0.digest, written: $0.written, size: $0.size) }
        var fleet: StatusPage.Fleet?
        if let member = content.fleet {
            fleet = StatusPage.Fleet(replica: member.replica, owner: member.owner, activity: member.activity, peers: try? await member.peers())
        }
        let html = StatusPage.render(stats.snapshot, upstreams: upstreamList, fills: fills, offline: settings.offline, version: RegistryMirrorVersion.userAgent,
                                     watch: await watch?.liveSnapshot(), fleet: fleet)
        return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                        body: .init(byteBuffer: ByteBuffer(string: html)))
    }
    // A fleet replica's counts are atomics on its fill path; they reach the gauges at each scrape.
    let refreshFleetMetrics: @Sendable () -> Void = { [member = content.fleet] in
        if let member { stats.fleet(member.activity, replica: member.replica) }
    }
    router.get("/metrics") { _, _ in
        refreshFleetMetrics()
        return metricsResponse(prometheus)
    }
    router.get("/healthz") { _, _ in "ok\n" }
    let readiness = Readiness(data: data, minFreeSpace: settings.minFreeSpace)
    router.get("/readyz") { _, _ -> Response in
        guard let reason = await readiness.check() else {
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
        }
        return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "not ready: \(reason)\n")))
    }
    let maxConnections = settings.connectionLimit(logger: logger)
    var server = RegistryPipeline.http1(zeroCopy: settings.zeroCopy, idleTimeout: settings.idleTimeout, parseErrorAnswer: RegistryError.parseErrorAnswer)
    if let tls = settings.tls {
        let identity = try TLSIdentity(files: tls, logger: logger)
        server = RegistryPipeline.https(identity: identity, idleTimeout: settings.idleTimeout, parseErrorAnswer: RegistryError.parseErrorAnswer)
    }
    var app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
        onServerRunning: { channel in
            do {
                try await RegistryPipeline.guardConnections(of: channel, maxConnections: maxConnections, logger: logger)
            } catch {
                logger.error("cannot guard the listening socket against running out of descriptors: \(error)")
            }
            await onServerRunning(channel)
        },
        logger: logger
    )
    app.addServices(MaintenanceService(maintenance: maintenance))
    if let tier = data.blobs as? TieredStore { app.addServices(TierCopyService(tier: tier)) }
    if let metrics = settings.metricsListen {
        app.addServices(metricsApplication(prometheus, host: metrics.host, port: metrics.port, refresh: refreshFleetMetrics, logger: logger))
    }
    if let fleet = settings.fleet, let member = content.fleet {
        app.addServices(peerApplication(member, content: content, maintenance: maintenance, settings: fleet, zeroCopy: settings.zeroCopy,
                                        idleTimeout: settings.idleTimeout, logger: logger))
    }
    if let watch { app.addServices(WatchService(watch: watch)) }
    if let s3 = data.s3, let settings = settings.s3Storage, settings.uploadSweepInterval > .zero {
        app.addServices(UploadSweepService(store: s3, age: settings.uploadSweepAge, interval: settings.uploadSweepInterval, logger: logger))
    }
    return app
}

/// The Prometheus text of `registry`.
func metricsResponse(_ registry: PrometheusCollectorRegistry) -> Response {
    var text: [UInt8] = []
    registry.emit(into: &text)
    return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: text)))
}

/// `metrics.listen`: a listener of its own that serves `/metrics` and nothing else, without
/// client auth, so a scraper needs no password and the status page, the API and the main
/// listener's `/metrics` stay behind `auth.htpasswd`. No request log: a scrape every few
/// seconds would drown it. A service of the main application, so it stops with it.
func metricsApplication(_ registry: PrometheusCollectorRegistry, host: String, port: Int, refresh: @escaping @Sendable () -> Void = {},
                        logger: Logger) -> some Service {
    let router = Router()
    router.get("/metrics") { _, _ in
        refresh()
        return metricsResponse(registry)
    }
    return Application(
        router: router,
        configuration: .init(address: .hostname(host, port: port), serverName: nil),
        onServerRunning: { channel in
            logger.info("metrics listening on http://\(host):\(channel.localAddress?.port ?? port)/metrics",
                        metadata: ["metrics.listen": "\(host):\(channel.localAddress?.port ?? port)"])
        },
        logger: logger
    )
}

extension ServeSettings {
    /// Raises the open-file limit to its hard limit and settles the connection cap, saying both.
    func connectionLimit(logger: Logger) -> Int {
        let limit = DescriptorLimit.raiseToHard()
        let cap = maxConnections ?? limit.defaultMaxConnections
        logger.info("file descriptor limit \(limit.soft) (soft limit was \(limit.initialSoft), hard limit \(limit.hard)); http.max_connections \(cap)\(maxConnections == nil ? ", derived from the limit" : "")",
                    metadata: ["fd.limit": "\(limit.soft)", "fd.initial_soft_limit": "\(limit.initialSoft)", "fd.hard_limit": "\(limit.hard)",
                               "http.max_connections": "\(cap)"])
        if cap > limit.defaultMaxConnections {
            logger.warning("http.max_connections \(cap) leaves fewer than a quarter of the \(limit.soft) file descriptors for blob files, downloads and the index; when they run out, new connections are closed at once")
        }
        return cap
    }
}

extension ServeSettings {
    public var upstreamRouter: UpstreamRouter {
        UpstreamRouter(names: upstreams.map(\.name), defaultUpstream: defaultUpstream)
    }

    /// The upstreams that forward client credentials (`forward_client_credentials`); nil if none.
    public var credentialForwarding: CredentialForwarding? {
        let names = Set(upstreams.filter(\.forwardClientCredentials).map(\.name))
        return names.isEmpty ? nil : CredentialForwarding(upstreams: names, realm: htpasswdRealm)
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
            throw MirrorError(.nameInvalid, error.message, cause: error)
        }
        guard anyHost || upstreams.contains(where: { $0.name == parsed.host }) || parsed.host == defaultUpstream else {
            let known = upstreams.map(\.name).joined(separator: ", ")
            throw MirrorError(.nameUnknown, "\(text): no upstream is named \(parsed.host) (configured: \(known)); add --upstream \(parsed.host)=URL")
        }
        let repository = RepositoryKey(upstream: parsed.host, name: parsed.repository)
        // Said here with the rule that refuses it, for the operator; `PullThroughRegistry` would
        // refuse it anyway, telling only what a client is told.
        if !anyHost, let reason = access[parsed.host]?.explain(repository) {
            throw MirrorError(.accessDenied, "\(text): \(reason)")
        }
        return (repository, parsed.manifestReference, parsed.description)
    }
}
