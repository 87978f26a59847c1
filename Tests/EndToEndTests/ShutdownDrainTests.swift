import Foundation
import OCI
import PostgresTestServer
import Testing

/// SIGTERM while a client reads a download through a slow upstream (`ThrottledUpstream`):
/// the drain (`ServeSettings.fillShutdownGrace`, 10 s) lets a download that can finish in it
/// finish, be committed and recorded before the process exits; one that cannot is cancelled
/// and leaves nothing (no file, no object, no open upload, no fleet lease). The stalled
/// single-node case is `ShutdownTests`.
@Suite("registry-mirror drains downloads on SIGTERM", .serialized)
struct ShutdownDrainTests {
    static let grace: Duration = .seconds(10)
    static let repository = "test/drain"
    static func path(_ digest: Digest) -> String { "/v2/\(repository)/blobs/\(digest)" }

    /// What a drain that cut a record half-way logs (the index's error for a cancelled call,
    /// or the fill's for a record that failed).
    static func expectNoCutRecord(_ log: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for text in ["was cancelled", "cannot record", "index closed"] {
            #expect(!log.contains(text), "the log says \"\(text)\":\n\(log.suffix(4000))", sourceLocation: sourceLocation)
        }
    }

    /// Starts a client GET of `path` and waits until it has streamed for `after`.
    static func readingClient(port: Int, path: String, after: Duration) async throws -> FaultRequest {
        let client = FaultRequest.start(port: port, path: path)
        try await waitUntil("the download's response head", timeout: .seconds(30)) { client.headersSeen }
        try await Task.sleep(for: after)
        try #require(!client.isFinished, "the download finished before SIGTERM: the upstream is not slow enough")
        return client
    }

    /// Sends SIGTERM (through `terminate`, which returns the exit status) and expects exit 0
    /// within the drain and a margin.
    static func expectCleanExit(_ what: String, log: () -> String, _ terminate: (Duration) async -> Int32?,
                                sourceLocation: SourceLocation = #_sourceLocation) async {
        let clock = ContinuousClock()
        let started = clock.now
        let status = await terminate(grace + .seconds(10))
        let took = clock.now - started
        Progress.step("\(what): exit status \(status.map(String.init) ?? "none") after \(took)")
        #expect(status == 0, "exit status \(status.map(String.init) ?? "none: still running")\n\(log().suffix(3000))", sourceLocation: sourceLocation)
        #expect(took < grace + .seconds(5), "it took \(took) to exit after SIGTERM", sourceLocation: sourceLocation)
    }

    /// One node on its data directory: the SQLite index, or (`postgres`) a PostgreSQL one,
    /// whose calls a cancelled task cuts short.
    @Test("one node: SIGTERM 4 s into a 6 s download: it finishes, the blob is stored and indexed, exit 0; a restart serves it without the upstream",
          arguments: ["sqlite", "postgres"])
    func singleNodeDrainFinishes(index: String) async throws {
        let postgres = index == "postgres" ? try await PostgresServer.start() : nil
        do {
            try await singleNodeDrainFinishes(postgres: postgres)
        } catch {
            await postgres?.stop()
            throw error
        }
        await postgres?.stop()
    }

    private func singleNodeDrainFinishes(postgres: PostgresServer?) async throws {
        try await PullThroughScope.run("drain finishes (\(postgres == nil ? "sqlite" : "postgres"))") { scope in
            let registry = try await scope.registry()
            let bytes = try LazyPullTests.randomBytes(48 << 20)
            let digest = try PullThroughHTTP.uploadBlob(port: registry.port, Self.repository, bytes)
            let proxy = try await ThrottledUpstream.start(to: registry.port, bytesPerSecond: 8 << 20, in: scope.unique("throttle"))
            do {
                var arguments = ["--upstream", "http://\(proxy.host)"]
                if let postgres {
                    try await postgres.createDatabase("mirror")
                    let config = scope.unique("config").appendingPathExtension("yaml")
                    try "index:\n  backend: postgres\n  postgres:\n    dsn: \(postgres.dsn(database: "mirror"))\n"
                        .write(to: config, atomically: true, encoding: .utf8)
                    arguments += ["--config", config.path]
                }
                let data = scope.unique("mirror").appendingPathComponent("data")
                let mirror = try await scope.mirrorOn(data, arguments)
                let client = try await Self.readingClient(port: mirror.port, path: Self.path(digest), after: .seconds(4))

                await Self.expectCleanExit("drain", log: { mirror.stderr }) { await mirror.terminate(timeout: $0) }
                let response = try await client.result()
                #expect(response.isCompleteOK && response.body.sha256 == digest, "the drained download: \(response)")
                Self.expectNoCutRecord(mirror.stderr)
                #expect(FileManager.default.fileExists(atPath: data.appendingPathComponent("blobs/\(digest.shardedPath)").path),
                        "the drained blob is not in the store")
                let parts = Files.regularFiles(under: data.appendingPathComponent("tmp")).filter { $0.hasSuffix(".part") }
                #expect(parts.isEmpty, "partial files left under DATA/tmp: \(parts)")

                // Recorded: the next start serves it from the cache.
                let restarted = try await scope.mirrorOn(data, arguments)
                let again = try RawHTTP.get(port: restarted.port, path: Self.path(digest))
                #expect(again.status == 200 && again.body.sha256 == digest && again.header("X-Cache") == "HIT",
                        "after the restart: HTTP \(again.status), \(again.body.count) bytes, X-Cache \(again.header("X-Cache") ?? "-")")
                #expect(proxy.requests(for: Self.path(digest)).count == 1, "the upstream was asked again: \(proxy.requests)")
                if postgres == nil {
                    let verify = try await MirrorCLI.verify(dataDirectory: data)
                    #expect(verify.succeeded && verify.stdout.contains(" 0 corrupt, 0 missing"), "verify: \(verify.summary)")
                }
            } catch {
                await proxy.stop()
                throw error
            }
            await proxy.stop()
        }
    }

    /// A one-replica fleet (S3 bucket, PostgreSQL index, a fill lease per download) behind a
    /// throttled upstream (the lease outlives the test unless it is released), and a client 4 s
    /// into a download of a new `size`-byte blob through it.
    static func withFleetDownload(size: Int, bytesPerSecond: Int,
                                  _ body: (FleetHarness, Digest, FaultRequest) async throws -> Void) async throws {
        let peers = try FleetLeaseTests.peerPorts(1)
        try await FleetHarness.run(replicas: 1, replicaEnvironment: FleetLeaseTests.fleetEnvironment(peerPorts: peers, leaseTTL: "120s"),
                                   throttle: bytesPerSecond) { fleet in
            let digest = try PullThroughHTTP.uploadBlob(port: fleet.upstream.port, repository, try LazyPullTests.randomBytes(size))
            let client = try await readingClient(port: fleet.replicas[0].port, path: path(digest), after: .seconds(4))
            try await body(fleet, digest, client)
        }
    }

    /// Every object in the bucket has its index row.
    static func expectIndexedBucket(_ fleet: FleetHarness, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let rows = Set(try await fleet.sql("SELECT digest FROM blobs").split(whereSeparator: \.isWhitespace).map(String.init))
        for digest in try await fleet.bucket.allDigests() {
            #expect(rows.contains(digest.description), "\(digest) is in the bucket without an index row", sourceLocation: sourceLocation)
        }
    }

    @Test("fleet: SIGTERM 4 s into a 6 s download: it finishes, the object is indexed, the lease released, exit 0; a restart serves it without the upstream")
    func fleetDrainFinishes() async throws {
        try await Self.withFleetDownload(size: 48 << 20, bytesPerSecond: 8 << 20) { fleet, digest, client in
            let replica = fleet.replicas[0]

            await Self.expectCleanExit("fleet drain", log: { fleet.logTails() }) { await replica.terminate(timeout: $0) }
            let response = try await client.result()
            #expect(response.isCompleteOK && response.body.sha256 == digest, "the drained download: \(response)")
            Self.expectNoCutRecord(replica.log)

            #expect(try await fleet.bucket.allDigests().contains(digest), "the drained blob is not in the bucket")
            #expect(try await fleet.sql("SELECT count(*) FROM blobs WHERE digest = '\(digest)'").trimmingCharacters(in: .whitespacesAndNewlines) == "1",
                    "the drained blob has no index row\n\(fleet.logTails())")
            try await Self.expectIndexedBucket(fleet)
            #expect(try await fleet.sql("SELECT count(*) FROM fill_leases").trimmingCharacters(in: .whitespacesAndNewlines) == "0", "a fill lease was left")

            try await fleet.start(0)
            let again = try RawHTTP.get(port: replica.port, path: Self.path(digest))
            #expect(again.status == 200 && again.body.sha256 == digest, "after the restart: HTTP \(again.status), \(again.body.count) bytes")
            #expect(fleet.throttle?.requests(for: Self.path(digest)).count == 1, "the upstream was asked again: \(fleet.throttle?.requests ?? [])")
        }
    }

    @Test("fleet: SIGTERM 4 s into a 24 s download: cancelled at the end of the drain, exit 0; no object, no open upload, no lease, no spool left")
    func fleetDrainRunsOut() async throws {
        try await Self.withFleetDownload(size: 96 << 20, bytesPerSecond: 4 << 20) { fleet, digest, client in
            let replica = fleet.replicas[0]
            #expect(try await !fleet.bucket.pendingUploads().isEmpty, "no multipart upload is open: is the download under way?")

            await Self.expectCleanExit("fleet drain out", log: { fleet.logTails() }) { await replica.terminate(timeout: $0) }
            let response = try await client.result()
            #expect(!response.isCompleteOK, "the client got a complete body from a download that was cancelled: \(response)")

            #expect(try await !fleet.bucket.allDigests().contains(digest), "the cancelled blob is in the bucket")
            try await Self.expectIndexedBucket(fleet)
            #expect(try await fleet.sql("SELECT count(*) FROM fill_leases").trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                    "the cancelled download's lease was not released\n\(fleet.logTails())")
            #expect(try await fleet.bucket.pendingUploads().isEmpty, "the cancelled download's multipart upload is still open")
            let left = ["spool", "tmp"].flatMap { Files.regularFiles(under: replica.dataDirectory.appendingPathComponent($0)) }.filter { !$0.hasSuffix(".lock") }
            #expect(left.isEmpty, "files left in the data directory: \(left)")
        }
    }
}
