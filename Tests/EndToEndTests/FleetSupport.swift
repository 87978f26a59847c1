import Foundation
import OCI
import PostgresTestServer
import S3Store
import Synchronization
import Testing

// Support for the fleet's end-to-end tests (issue 12): real parts only. Every top-level name
// here starts with `Fleet` so that it cannot clash with the other suites' support files.

/// A fleet on real parts: one docker-registry upstream (its access log on), one moto S3
/// server, one PostgreSQL 15 cluster, and N `registry-mirror serve` replicas, each with its own
/// data directory and its own fixed loopback port, all on one bucket and prefix
/// (`storage.backend: s3`) and one database (`index.backend: postgres`).
///
/// `FleetHarness.run` starts all of it and stops all of it however the body ends. Replicas
/// keep their port and data directory across `stop`/`kill`/`restart`, so a peer list made
/// from `hosts` stays true.
final class FleetHarness: Sendable {
    static let credentials = S3Credentials(accessKeyID: "fleet-access-key", secretAccessKey: "fleet-secret-key")
    static let database = "mirror"

    /// Temporary files, skopeo push and pull, and the upstream's lifetime.
    let scope: PullThroughScope
    let upstream: DistributionRegistry
    let moto: MotoProcess
    let postgres: PostgresServer
    /// The bucket and prefix every replica shares.
    let location: S3Location
    /// The shared bucket, read directly (what is in it, uploads left open).
    let bucket: S3Store
    let replicas: [FleetReplica]
    /// `throttle`'s pacing proxy in front of the upstream, when one was asked for.
    let throttle: ThrottledUpstream?
    /// What every start of every replica gets: the shared store and index, then the test's extras.
    private let environment: [String: String]
    private let replicaEnvironment: @Sendable (_ index: Int, _ hosts: [String]) -> [String: String]
    private let arguments: [String]

    private init(scope: PullThroughScope, upstream: DistributionRegistry, moto: MotoProcess, postgres: PostgresServer,
                 location: S3Location, replicas: [FleetReplica], throttle: ThrottledUpstream?, environment: [String: String],
                 replicaEnvironment: @escaping @Sendable (Int, [String]) -> [String: String], arguments: [String]) {
        self.scope = scope
        self.upstream = upstream
        self.moto = moto
        self.postgres = postgres
        self.location = location
        bucket = S3Store(location: location, credentials: Self.credentials)
        self.replicas = replicas
        self.throttle = throttle
        self.environment = environment
        self.replicaEnvironment = replicaEnvironment
        self.arguments = arguments
    }

    /// Starts a fleet of `replicas` replicas and runs `body` on it, then stops everything.
    /// - `arguments`: extra `serve` flags for every replica (`--tag-ttl 2s`, say).
    /// - `extraEnvironment`: extra environment for every replica (fleet keys, say).
    /// - `replicaEnvironment`: environment for replica `index`, given every replica's
    ///   `127.0.0.1:PORT` (known before any starts), for per-replica keys such as a peer list.
    /// - `throttle`: the replicas reach the upstream through `ThrottledUpstream` at this many
    ///   bytes per second (all connections together), so a download lasts long enough to act in.
    /// - `startReplicas`: false leaves them stopped, for the body to `start` one by one.
    static func run<T: Sendable>(
        replicas count: Int = 3, arguments: [String] = [], extraEnvironment: [String: String] = [:],
        replicaEnvironment: @escaping @Sendable (_ index: Int, _ hosts: [String]) -> [String: String] = { _, _ in [:] },
        startReplicas: Bool = true, throttle bytesPerSecond: Int? = nil,
        _ body: (FleetHarness) async throws -> T
    ) async throws -> T {
        precondition(count >= 1)
        for tool in ["skopeo", "docker-registry", "timeout"] { _ = try TestPaths.executable(tool) }
        return try await PullThroughScope.run("fleet of \(count)") { scope in
            let moto = try await MotoProcess.start(logDirectory: scope.unique("moto-logs"))
            let postgres: PostgresServer
            do {
                postgres = try await PostgresServer.start()
            } catch {
                await moto.process.stop()
                throw error
            }
            var fleet: FleetHarness?
            do {
                try await postgres.createDatabase(database)
                let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "fleet-e2e", prefix: "fleet", pathStyle: true)
                let upstream = try await scope.registry()
                var throttle: ThrottledUpstream?
                if let bytesPerSecond {
                    throttle = try await ThrottledUpstream.start(to: upstream.port, bytesPerSecond: bytesPerSecond, in: scope.unique("throttle"))
                }
                var ports: [Int] = []
                while ports.count < count {
                    let port = try LoopbackPort.free()
                    if !ports.contains(port) { ports.append(port) }
                }
                let replicas = try ports.enumerated().map { index, port in
                    FleetReplica(index: index, port: port, dataDirectory: scope.unique("replica-\(index)").appendingPathComponent("data"),
                                 logRoot: try scope.work.subdirectory("replica-\(index)-logs"))
                }
                let environment = [
                    "REGISTRY_MIRROR_STORAGE_BACKEND": "s3",
                    "REGISTRY_MIRROR_STORAGE_S3_ENDPOINT": moto.endpoint.absoluteString,
                    "REGISTRY_MIRROR_STORAGE_S3_REGION": location.region,
                    "REGISTRY_MIRROR_STORAGE_S3_BUCKET": location.bucket,
                    "REGISTRY_MIRROR_STORAGE_S3_PREFIX": location.prefix,
                    "REGISTRY_MIRROR_STORAGE_S3_PATH_STYLE": "true",
                    "AWS_ACCESS_KEY_ID": credentials.accessKeyID,
                    "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey,
                    "REGISTRY_MIRROR_INDEX_BACKEND": "postgres",
                    "REGISTRY_MIRROR_INDEX_POSTGRES_DSN": postgres.dsn(database: database),
                    "REGISTRY_MIRROR_INDEX_POSTGRES_CONNECT_TIMEOUT": "1s",
                ].merging(extraEnvironment) { $1 }
                let started = FleetHarness(
                    scope: scope, upstream: upstream, moto: moto, postgres: postgres, location: location, replicas: replicas,
                    throttle: throttle, environment: environment, replicaEnvironment: replicaEnvironment,
                    arguments: ["--upstream", "http://\(throttle?.host ?? upstream.host)", "--log-level", "debug"] + arguments)
                fleet = started
                try await started.bucket.createBucket()
                if startReplicas { try await started.startAll() }
                Progress.step("fleet: \(count) replicas on \(replicas.map(\.host).joined(separator: ", ")), upstream \(upstream.host), S3 \(moto.endpoint), PostgreSQL :\(postgres.port)")
                let result = try await body(started)
                await started.tearDown()
                return result
            } catch {
                if let fleet {
                    Progress.step("fleet failed: \(error)\n\(fleet.logTails())")
                    await fleet.tearDown()
                } else {
                    await postgres.stop()
                    await moto.process.stop()
                }
                throw error
            }
        }
    }

    private func tearDown() async {
        for replica in replicas { await replica.stop() }
        await throttle?.stop()
        await postgres.stop()
        await moto.process.stop()
    }

    /// Every replica's `127.0.0.1:PORT`, in order.
    var hosts: [String] { replicas.map(\.host) }

    // MARK: Replicas

    /// Starts every replica that is not running, at once (the index's migrations take an
    /// advisory lock, so concurrent first starts are safe).
    func startAll() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in replicas.indices where !replicas[index].isRunning {
                group.addTask { try await self.start(index) }
            }
            try await group.waitForAll()
        }
    }

    /// Starts replica `index` on its port and data directory; `extraEnvironment` and
    /// `extraArguments` apply to this start only.
    func start(_ index: Int, extraEnvironment: [String: String] = [:], extraArguments: [String] = []) async throws {
        let replica = replicas[index]
        let environment = environment.merging(replicaEnvironment(index, hosts)) { $1 }.merging(extraEnvironment) { $1 }
        try await replica.start(arguments: arguments + extraArguments, environment: environment)
    }

    /// SIGTERM, as a service manager stops it (it drains, then exits).
    func stop(_ index: Int) async { await replicas[index].stop() }

    /// SIGKILL: a crash.
    func kill(_ index: Int) async { await replicas[index].kill() }

    /// Stopped (SIGTERM) and started again on the same port and data directory.
    func restart(_ index: Int, extraEnvironment: [String: String] = [:], extraArguments: [String] = []) async throws {
        await stop(index)
        try await start(index, extraEnvironment: extraEnvironment, extraArguments: extraArguments)
    }

    // MARK: The CLI

    /// Runs a one-shot `registry-mirror` subcommand (`import`, `export`, `verify`…) with the
    /// configuration replica `index` gets (the shared bucket and index), on a data directory of
    /// its own: nothing the fleet serves is on that machine's disk.
    func cli(_ arguments: [String], as index: Int = 0, extraEnvironment: [String: String] = [:]) async throws -> CommandResult {
        let environment = environment.merging(replicaEnvironment(index, hosts)) { $1 }.merging(extraEnvironment) { $1 }
        return try await Command.run(try TestPaths.requireMirrorBinary(), arguments + ["--data-dir", scope.unique("cli-data").path],
                                     environment: environment)
    }

    // MARK: The bucket

    /// Waits until the bucket holds every one of `digests`: a client has a blob's last byte
    /// once it is verified, and its upload completes just after. False if it never did.
    func waitUntilPublished(_ digests: Set<Digest>, timeout: Duration = .seconds(20)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if Set(try await bucket.allDigests()).isSuperset(of: digests) { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return Set(try await bucket.allDigests()).isSuperset(of: digests)
    }

    // MARK: The upstream

    /// The upstream's access-log position now, for `upstreamRequests(since:)` and friends.
    func mark() async -> Int { await PullThroughTests.mark(upstream) }

    func upstreamRequests(since mark: Int) async -> [DistributionRegistry.Request] {
        await upstream.requests(since: mark)
    }

    /// GETs of blobs (not uploads) the upstream answered since `mark`.
    func upstreamBlobGets(since mark: Int) async -> [DistributionRegistry.Request] {
        await upstreamRequests(since: mark).filter { $0.method == "GET" && $0.path.contains("/blobs/") && !$0.path.contains("/uploads/") }
    }

    /// HEADs and GETs of manifests the upstream answered since `mark`.
    func upstreamManifestRequests(since mark: Int, method: String) async -> [DistributionRegistry.Request] {
        await upstreamRequests(since: mark).filter { $0.method == method && $0.path.contains("/manifests/") }
    }

    /// `skopeo copy` of a layout into the upstream.
    func push(_ image: SyntheticImage, _ repository: String, tag: String? = nil) async throws {
        try await scope.push(image, to: upstream.host, repository, tag: tag)
    }

    /// `skopeo copy` of `reference` (`repo:tag` or `repo@digest`) through replica `index`, not checked.
    func pull(_ reference: String, through index: Int) async throws -> (result: CommandResult, layout: URL) {
        try await scope.pull("\(replicas[index].host)/\(reference)")
    }

    /// Runs SQL in the fleet's database; what psql printed.
    @discardableResult
    func sql(_ statement: String) async throws -> String {
        try await postgres.psql(statement, database: Self.database)
    }

    /// The tail of every replica's log, for failure messages.
    func logTails(_ characters: Int = 3000) -> String {
        replicas.map { "--- replica \($0.index) (\($0.host)) stderr, tail ---\n\($0.log.suffix(characters))" }.joined(separator: "\n")
    }
}

/// One replica of a `FleetHarness`: a fixed port and data directory, and the `serve` process
/// running on them now, if any. Its log is every run's stderr, oldest first.
final class FleetReplica: Sendable {
    let index: Int
    let port: Int
    let dataDirectory: URL
    private let logRoot: URL
    private let runs = Mutex<[MirrorProcess]>([])
    private let running = Mutex<MirrorProcess?>(nil)

    init(index: Int, port: Int, dataDirectory: URL, logRoot: URL) {
        self.index = index
        self.port = port
        self.dataDirectory = dataDirectory
        self.logRoot = logRoot
    }

    var host: String { "127.0.0.1:\(port)" }
    var isRunning: Bool { running.withLock { $0 } != nil }
    /// The process running now.
    var process: MirrorProcess? { running.withLock { $0 } }
    /// Every run's stderr (the mirror's log), oldest first.
    var log: String {
        runs.withLock { $0 }.enumerated().map { "--- run \($0.offset + 1) ---\n\($0.element.stderr)" }.joined(separator: "\n")
    }

    func start(arguments: [String], environment: [String: String]) async throws {
        guard !isRunning else { throw E2EError("replica \(index) is already running") }
        let run = runs.withLock { $0.count + 1 }
        let process = try await MirrorProcess.start(
            dataDirectory: dataDirectory, logDirectory: logRoot.appendingPathComponent("run-\(run)"),
            extraArguments: arguments, environment: environment, listen: host)
        runs.withLock { $0.append(process) }
        running.withLock { $0 = process }
    }

    func stop() async {
        guard let process = running.withLock({ current in defer { current = nil }; return current }) else { return }
        await process.stop()
    }

    func kill() async {
        guard let process = running.withLock({ current in defer { current = nil }; return current }) else { return }
        await process.kill()
    }

    /// SIGTERM, then up to `timeout` to exit: its exit status (nil: it was still running, and killed).
    func terminate(timeout: Duration) async -> Int32? {
        guard let process = running.withLock({ current in defer { current = nil }; return current }) else { return nil }
        return await process.terminate(timeout: timeout)
    }
}
