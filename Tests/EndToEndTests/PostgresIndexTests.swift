import Foundation
import OCI
import PostgresTestServer
import Testing

/// The mirror with `index.backend: postgres` (issue 12, item 3) against a real PostgreSQL 15
/// and a real docker-registry upstream: a cold pull through it lands in PostgreSQL, a second
/// pull is served warm with no upstream GET, and the warm manifest-by-digest path answers
/// from memory without a statement to PostgreSQL.
@Suite(.serialized) struct PostgresIndexTests {
    @Test("pull-through with the PostgreSQL index: cold pull recorded in PostgreSQL, warm pull and warm manifests without upstream or index round trips")
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
            let requests = 200
            for _ in 0..<requests {
                let response = try PullThroughHTTP.manifest(port: mirror.port, byDigest)
                #expect(response.status == 200 && response.header("Docker-Content-Digest") == image.rootDigest.description)
            }
            try await Task.sleep(for: .milliseconds(300))
            let duringDigest = Array(try Self.statements(in: log).dropFirst(before.count))
            let lookups = duringDigest.filter { !$0.contains("last_access_ms") }
            let flushes = duringDigest.count - lookups.count
            print("warm manifest by digest: \(requests) requests, \(lookups.count) index lookups, \(flushes) batched access-time writes")
            #expect(lookups.isEmpty, "the warm manifest-by-digest path queried PostgreSQL:\n\(lookups.prefix(5).joined(separator: "\n"))")
            #expect(flushes <= 2, "access times are batched, not written per request (\(flushes) writes)")

            let byTag = "/v2/test/img/manifests/v1"
            let tagBefore = try Self.statements(in: log).count
            for _ in 0..<requests { #expect(try PullThroughHTTP.manifest(port: mirror.port, byTag).status == 200) }
            try await Task.sleep(for: .milliseconds(300))
            let duringTag = Array(try Self.statements(in: log).dropFirst(tagBefore)).filter { !$0.contains("last_access_ms") }
            print("warm manifest by tag: \(requests) requests, \(duringTag.count) index lookups")
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
