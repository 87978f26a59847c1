import Foundation
import MetadataIndex
import OCI
import PostgresIndex
import PostgresTestServer
import Synchronization
import Testing

/// The PostgreSQL index against a real PostgreSQL 15 (a cluster made by `initdb` for the
/// suite): the shared conformance suite, then what only a server database adds: replicas
/// migrating at once, a database that goes away and comes back, batched access times.
@Suite(.serialized) struct PostgresMetadataStoreTests {
    @Test func passesTheMetadataStoreConformanceSuite() async throws {
        try await withPostgres { server in
            let databases = DatabaseNames()
            let started = ContinuousClock.now
            try await MetadataStoreConformance { name in
                if databases.isNew(name) { try await server.createDatabase(name) }
                return PostgresMetadataStore(try PostgresIndexSettings(dsn: server.dsn(database: name)))
            }.run()
            print("PostgreSQL conformance suite: \(ContinuousClock.now - started)")
        }
    }

    @Test("replicas starting at once migrate the schema once, under the advisory lock")
    func concurrentMigrationsApplyOnce() async throws {
        try await withPostgres { server in
            try await server.createDatabase("fleet")
            let settings = try PostgresIndexSettings(dsn: server.dsn(database: "fleet"))
            let stores = (0..<6).map { _ in PostgresMetadataStore(settings) }
            let versions = try await withThrowingTaskGroup(of: Int.self) { group in
                for store in stores { group.addTask { try await store.schemaVersion() } }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(versions.count == 6 && Set(versions).count == 1 && versions[0] > 0)
            let rows = try await server.psql("SELECT count(*), max(version) FROM schema_migrations", database: "fleet")
            #expect(rows.trimmingCharacters(in: .whitespacesAndNewlines) == "\(versions[0])|\(versions[0])",
                    "one row per version: no replica applied a step twice")
            for store in stores { await store.close() }
        }
    }

    @Test("a database that goes away is reported unavailable, and the store recovers when it is back")
    func unavailableThenRecovers() async throws {
        try await withPostgres { server in
            try await server.createDatabase("gone")
            let store = PostgresMetadataStore(try PostgresIndexSettings(dsn: server.dsn(database: "gone"), connectTimeout: .seconds(2)))
            _ = try await store.schemaVersion()
            try await server.halt()
            let started = ContinuousClock.now
            do throws(IndexError) {
                _ = try await store.schemaVersion()
                Issue.record("a halted database answered")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
            #expect(ContinuousClock.now - started < .seconds(10), "the call fails within the connect timeout, not the pool's minute")
            try await server.restart()
            var answered = false
            for _ in 0..<50 where !answered {
                answered = (try? await store.schemaVersion()) != nil
                if !answered { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(answered, "the pool reconnects without a new store")
            await store.close()
        }
    }

    @Test("access times for many blobs are written in one round trip")
    func accessTimesAreOneStatement() async throws {
        try await withPostgres { server in
            try await server.createDatabase("access")
            let store = PostgresMetadataStore(try PostgresIndexSettings(dsn: server.dsn(database: "access")))
            var batch = ContentBatch()
            let digests = (0..<200).map { MetadataStoreConformance.blob("b\($0)") }
            for digest in digests { batch.addBlob(digest, size: 1) }
            try await store.record(batch, now: 1_000)
            let before = store.roundTrips
            try await store.recordAccess(Dictionary(uniqueKeysWithValues: digests.enumerated().map { ($1, 2_000_000 + Int64($0)) }))
            #expect(store.roundTrips == before + 1)
            #expect(try await store.evict(toAtMost: 199, dryRun: true).blobs.map(\.digest) == [digests[0]], "the oldest access goes first")
            await store.close()
        }
    }

    @Test func settingsParseDSNs() throws {
        let tcp = try PostgresIndexSettings(dsn: "postgres://mirror:inline@db.example:6432/cache?sslmode=require", password: "from-file")
        #expect(tcp.host == "db.example" && tcp.port == 6432 && tcp.user == "mirror" && tcp.database == "cache")
        #expect(tcp.password == "from-file", "a password from a file or the environment wins over one in the URL")
        #expect(tcp.tls == .require)
        #expect(!tcp.endpoint.contains("inline") && !tcp.endpoint.contains("from-file"))
        let socket = try PostgresIndexSettings(dsn: "postgresql://mirror@/cache?host=/run/postgresql")
        #expect(socket.socketPath == "/run/postgresql/.s.PGSQL.5432" && socket.tls == .prefer)
        for bad in ["mysql://u@h/db", "postgres://h/db", "postgres://u@h/", "postgres://u@h/db?sslmode=maybe", "postgres://u@h/db?pool=3"] {
            #expect(throws: IndexError.self, "\(bad)") { try PostgresIndexSettings(dsn: bad) }
        }
    }
}

/// Runs `body` with a fresh PostgreSQL cluster, stopped and removed afterwards.
func withPostgres(_ body: (PostgresServer) async throws -> Void) async throws {
    let server = try await PostgresServer.start()
    do {
        try await body(server)
    } catch {
        await server.stop()
        throw error
    }
    await server.stop()
}

/// Database names already created, so a reopen reuses the data.
final class DatabaseNames: Sendable {
    private let names = Mutex<Set<String>>([])
    func isNew(_ name: String) -> Bool { names.withLock { $0.insert(name).inserted } }
}
