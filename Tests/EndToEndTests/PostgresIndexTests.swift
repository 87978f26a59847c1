import Foundation
import OCI
import PostgresTestServer
import Testing

/// The mirror with `index.backend: postgres` (issue 12, item 3) against a real PostgreSQL 15
/// and a real docker-registry upstream: a cold pull through it lands in PostgreSQL, a second
/// pull is served warm with no upstream GET, warm manifests by digest cost PostgreSQL at most
/// about one lookup a second (not one per request), and a PostgreSQL that goes away and comes back
/// costs a 503 on what needs the index, never a restart.
@Suite(.serialized) struct PostgresIndexTests {
    @Test("pull-through with the PostgreSQL index: cold pull recorded in PostgreSQL, warm pull without upstream, warm manifests not a query each, 503 while PostgreSQL is down")
    func pullThroughWithThePostgresIndex() async throws {
        let server = try await PostgresServer.start()
        do {
            try await run(server)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    private func run(_ server: PostgresServer) async throws {
        try await server.createDatabase("mirror")
        try await PullThroughScope.run("postgres index") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: PullThroughTests.seed()), to: upstream.host, "test/img", tag: "v1")
            let image = try PullThroughHTTP.upstreamImage(port: upstream.port, "test/img", tag: "v1")

            let config = scope.unique("config").appendingPathExtension("yaml")
            try """
            index:
              backend: postgres
              postgres:
                dsn: \(server.dsn(database: "mirror"))
                connect_timeout: 1s
            """.write(to: config, atomically: true, encoding: .utf8)
            let data = scope.unique("mirror").appendingPathComponent("data")
            let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(upstream.host)", "--config", config.path])

            // Cold: through to the upstream, recorded in PostgreSQL (and no SQLite file beside the blobs).
            let (cold, coldLayout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(cold.succeeded, "\(cold.summary)\(PullThroughTests.mirrorLog(mirror))")
            try PullThroughTests.expectLayout(coldLayout, holds: image, "cold pull")
            let tagged = try await server.psql("SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = 'test/img' AND t.name = 'v1'", database: "mirror")
            #expect(tagged.trimmingCharacters(in: .whitespacesAndNewlines) == image.rootDigest.description, "the tag is in PostgreSQL")
            let blobs = try await server.psql("SELECT count(*) FROM blobs", database: "mirror")
            #expect(Int(blobs.trimmingCharacters(in: .whitespacesAndNewlines)) == image.blobs.count + 1, "every blob and the manifest")
            #expect(!FileManager.default.fileExists(atPath: data.appendingPathComponent("index.sqlite").path))

            // Warm: the whole image again, with no blob or manifest GET upstream.
            let mark = await PullThroughTests.mark(upstream)
            let (warm, warmLayout) = try await scope.pull("\(mirror.host)/test/img:v1")
            try #require(warm.succeeded, "\(warm.summary)\(PullThroughTests.mirrorLog(mirror))")
            try PullThroughTests.expectLayout(warmLayout, holds: image, "warm pull")
            let upstreamGets = await upstream.requests(since: mark).filter { $0.method == "GET" }
            #expect(upstreamGets.isEmpty, "a warm pull went upstream: \(PullThroughLog.describe(upstreamGets))")

            // Warm manifests: count the statements PostgreSQL runs meanwhile (log_statement).
            try await server.psql("ALTER SYSTEM SET log_statement = 'all'")
            try await server.psql("SELECT pg_reload_conf()")
            let byDigest = "/v2/test/img/manifests/\(image.rootDigest)"
            #expect(try PullThroughHTTP.manifest(port: mirror.port, byDigest).status == 200)  // fills the memory cache
            try await Task.sleep(for: .milliseconds(300))
            let log = server.directory + "/server.log"
            let before = try Self.statements(in: log)
            // For 2.5 s: the memory cache reuses the index's "this repository holds it" for a
            // second, so PostgreSQL sees at most about one lookup a second, whatever the rate.
            var requests = 0
            let started = ContinuousClock.now
            while ContinuousClock.now - started < .milliseconds(2500) {
                let response = try PullThroughHTTP.manifest(port: mirror.port, byDigest)
                #expect(response.status == 200 && response.header("Docker-Content-Digest") == image.rootDigest.description)
                requests += 1
            }
            try await Task.sleep(for: .milliseconds(300))
            let duringDigest = Array(try Self.statements(in: log).dropFirst(before.count))
            let lookups = duringDigest.filter { !$0.contains("last_access_ms") }
            let flushes = duringDigest.count - lookups.count
            print("warm manifest by digest: \(requests) requests in 2.5 s, \(lookups.count) index lookups, \(flushes) batched access-time writes")
            #expect(requests >= 100, "\(requests) requests")
            #expect(lookups.count <= 4, "the warm manifest-by-digest path queried PostgreSQL per request:\n\(lookups.prefix(5).joined(separator: "\n"))")
            #expect(flushes <= 3, "access times are batched, not written per request (\(flushes) writes)")

            let byTag = "/v2/test/img/manifests/v1"
            let tagBefore = try Self.statements(in: log).count
            for _ in 0..<200 { #expect(try PullThroughHTTP.manifest(port: mirror.port, byTag).status == 200) }
            try await Task.sleep(for: .milliseconds(300))
            let duringTag = Array(try Self.statements(in: log).dropFirst(tagBefore)).filter { !$0.contains("last_access_ms") }
            print("warm manifest by tag: 200 requests, \(duringTag.count) index lookups")

            // PostgreSQL goes away: what needs the index is a clear 503 in the error envelope
            // (a warm digest too, once its verdict is a second old), never a 500, and all of it
            // comes back with the database.
            try await server.halt()
            try await Task.sleep(for: .milliseconds(1100))
            #expect(try PullThroughHTTP.manifest(port: mirror.port, byDigest).status == 503)
            let blob = try RawHTTP.request("GET", port: mirror.port, path: "/v2/test/img/blobs/\(image.layers[0])", headers: [])
            #expect(blob.status == 503, "\(blob.status)")
            let down = try PullThroughHTTP.manifest(port: mirror.port, byTag)
            let envelope = String(decoding: down.body, as: UTF8.self)
            #expect(down.status == 503 && envelope.contains(#""code":"UNAVAILABLE""#), "\(down)")
            #expect(!envelope.contains("127.0.0.1"), "the database's address stays out of the envelope: \(envelope)")
            try await server.restart()
            var back = false
            for _ in 0..<40 where !back {
                back = try PullThroughHTTP.manifest(port: mirror.port, byTag).status == 200
                if !back { try await Task.sleep(for: .milliseconds(250)) }
            }
            #expect(back, "the mirror recovers without a restart\(PullThroughTests.mirrorLog(mirror))")
        }
    }

    /// The statements PostgreSQL logged so far (extended protocol: `execute <unnamed>: …`),
    /// without the pool's keep-alive `SELECT 1`.
    static func statements(in log: String) throws -> [String] {
        try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
            .filter { ($0.contains("LOG:  execute") || $0.contains("LOG:  statement:")) && !$0.hasSuffix("SELECT 1;") }
            .map(String.init)
    }
}
