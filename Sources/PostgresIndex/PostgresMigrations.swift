import Logging
import MetadataIndex
import PostgresNIO

/// Versioned schema migrations, recorded in `schema_migrations` (one row per version).
///
/// Several replicas start at once against one database: all pending steps run in one
/// transaction that first takes a transaction-scoped advisory lock, so one replica migrates
/// and the others wait, then see the new version and do nothing. A crash mid-migration rolls
/// the whole transaction back. Append a step to add a version; never edit a released one.
///
/// The schema follows the SQLite one (`MetadataIndex/Migrations.swift`), with text keys in
/// the "C" collation so that names and digests sort bytewise, as SQLite sorts them, whatever
/// the database's locale.
enum PostgresMigrations {
    /// `pg_advisory_xact_lock` key for migrations ("rmigrate" in ASCII).
    static let lockKey: Int64 = 0x726D_6967_7261_7465
    /// Each step is a list of statements (the extended protocol takes one at a time).
    static let steps: [[String]] = [
        // 1: the schema of SQLite's version 4
        [
            #"CREATE TABLE upstreams(id BIGSERIAL PRIMARY KEY, name TEXT COLLATE "C" NOT NULL UNIQUE)"#,
            #"""
            CREATE TABLE repositories(
              id BIGSERIAL PRIMARY KEY,
              upstream_id BIGINT NOT NULL REFERENCES upstreams(id) ON DELETE CASCADE,
              name TEXT COLLATE "C" NOT NULL,
              UNIQUE(upstream_id, name))
            """#,
            #"""
            CREATE TABLE blobs(
              digest TEXT COLLATE "C" PRIMARY KEY,
              size BIGINT NOT NULL,
              added_at BIGINT NOT NULL,
              last_access_ms BIGINT NOT NULL,
              pinned BOOLEAN NOT NULL DEFAULT false)
            """#,
            // Eviction reads unpinned candidates in LRU order and stops at the cap.
            "CREATE INDEX blobs_lru ON blobs(last_access_ms, digest) WHERE NOT pinned",
            #"""
            CREATE TABLE manifests(
              digest TEXT COLLATE "C" PRIMARY KEY,
              media_type TEXT NOT NULL,
              size BIGINT NOT NULL,
              subject TEXT COLLATE "C",
              artifact_type TEXT,
              annotations TEXT)
            """#,
            "CREATE INDEX manifests_subject ON manifests(subject) WHERE subject IS NOT NULL",
            #"""
            CREATE TABLE manifest_references(
              manifest TEXT COLLATE "C" NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
              blob TEXT COLLATE "C" NOT NULL,
              PRIMARY KEY(manifest, blob))
            """#,
            "CREATE INDEX manifest_references_blob ON manifest_references(blob)",
            #"""
            CREATE TABLE index_children(
              index_digest TEXT COLLATE "C" NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
              child TEXT COLLATE "C" NOT NULL,
              media_type TEXT NOT NULL,
              size BIGINT NOT NULL,
              os TEXT, architecture TEXT, variant TEXT,
              position INTEGER NOT NULL,
              PRIMARY KEY(index_digest, child))
            """#,
            "CREATE INDEX index_children_child ON index_children(child)",
            #"""
            CREATE TABLE tags(
              repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
              name TEXT COLLATE "C" NOT NULL,
              digest TEXT COLLATE "C" NOT NULL,
              media_type TEXT NOT NULL,
              checked_at BIGINT NOT NULL,
              PRIMARY KEY(repository_id, name))
            """#,
            "CREATE INDEX tags_digest ON tags(digest)",
            #"""
            CREATE TABLE repository_blobs(
              repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
              digest TEXT COLLATE "C" NOT NULL,
              PRIMARY KEY(repository_id, digest))
            """#,
            "CREATE INDEX repository_blobs_digest ON repository_blobs(digest)",
        ],
        // 2: the fleet's fill leases and the replicas' heartbeats (FillLeaseStore)
        [
            #"""
            CREATE TABLE fill_leases(
              digest TEXT COLLATE "C" PRIMARY KEY,
              owner TEXT NOT NULL,
              peer_url TEXT NOT NULL,
              repository TEXT NOT NULL,
              expires_at TIMESTAMPTZ NOT NULL)
            """#,
            #"""
            CREATE TABLE fleet_replicas(
              owner TEXT COLLATE "C" PRIMARY KEY,
              replica TEXT NOT NULL,
              peer_url TEXT NOT NULL,
              seen_at TIMESTAMPTZ NOT NULL)
            """#,
        ],
    ]

    /// Applies pending steps on `connection`; returns the schema version after.
    static func apply(on connection: PostgresConnection, logger: Logger) async throws -> Int {
        try await connection.transaction(logger: logger) { tx in
            try await tx.run("SELECT pg_advisory_xact_lock(\(lockKey))", logger: logger)
            try await tx.run(
                "CREATE TABLE IF NOT EXISTS schema_migrations(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                logger: logger)
            let current = try await version(on: tx, logger: logger)
            guard current <= steps.count else {
                throw IndexError(.schema, "the index schema version \(current) is newer than this program knows (\(steps.count))")
            }
            for (i, statements) in steps.enumerated().dropFirst(current) {
                for sql in statements { try await tx.run(PostgresQuery(unsafeSQL: sql), logger: logger) }
                try await tx.run("INSERT INTO schema_migrations(version) VALUES (\(i + 1))", logger: logger)
                logger.info("index schema migrated", metadata: ["index.schema_version": "\(i + 1)"])
            }
            return steps.count
        }
    }

    static func version(on connection: PostgresConnection, logger: Logger) async throws -> Int {
        try await connection.rows("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", logger: logger) {
            Int(try $0.decode(Int32.self))
        }.first ?? 0
    }
}
