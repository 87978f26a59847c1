import Foundation
import OCI
import Synchronization

/// The metadata index in one SQLite file (WAL mode), for a single machine.
///
/// Threads and connections: a few read connections, each owned by a thread of its own, and
/// one write connection on another thread (`ConnectionThread`). Reads go round-robin to the
/// readers and never wait on the writer: in WAL mode a reader sees the last committed state
/// while a write transaction runs. Writes are serialised on the writer thread, so this
/// process never waits on its own write lock; the 10 s busy timeout covers another process
/// (a `seed`, `import` or `gc`) writing the same file. No SQLite call runs on the cooperative
/// pool: an eviction transaction of seconds blocks only the writer thread.
public final class SQLiteMetadataStore: MetadataStore {
    private let readers: [ConnectionThread]
    private let writer: ConnectionThread
    private let nextReader = Atomic<Int>(0)

    /// Opens or creates the index at `path` and applies pending migrations (on the calling
    /// thread, before any other connection opens). `readers` read connections (2 to 4 by
    /// default, by core count) serve lookups.
    public init(path: String, readers: Int? = nil) throws(IndexError) {
        let writeConnection = try SQLiteConnection(path: path)
        try Migrations.apply(to: writeConnection)
        // An eviction pass touches many pages in one transaction: 16 MiB (SQLite's default is
        // 2 MiB) keeps it from spilling to the WAL as it goes.
        try writeConnection.execute("PRAGMA cache_size=-16384")
        let count = readers ?? min(4, max(2, ProcessInfo.processInfo.activeProcessorCount))
        var pool: [ConnectionThread] = []
        do {
            for i in 0..<max(1, count) {
                pool.append(ConnectionThread(name: "index-read-\(i)", connection: try SQLiteConnection(path: path, readOnly: true)))
            }
        } catch {
            for reader in pool { reader.stop() }
            throw error
        }
        self.readers = pool
        self.writer = ConnectionThread(name: "index-write", connection: writeConnection)
    }

    deinit {
        for reader in readers { reader.stop() }
        writer.stop()
    }

    /// Runs `body` on a read connection's thread.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws(IndexError) -> T) async throws(IndexError) -> T {
        let i = nextReader.wrappingAdd(1, ordering: .relaxed).oldValue
        return try await readers[Int(UInt(bitPattern: i) % UInt(readers.count))].run(body)
    }

    /// Runs `body` on the writer's thread.
    func write<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws(IndexError) -> T) async throws(IndexError) -> T {
        try await writer.run(body)
    }

    public func schemaVersion() async throws(IndexError) -> Int {
        try await read { db throws(IndexError) in
            var version = 0
            try db.query("PRAGMA user_version") { version = Int($0.int(0)) }
            return version
        }
    }

    // MARK: Lookups (hot path)

    public func tag(_ repository: RepositoryKey, _ tag: Tag) async throws(IndexError) -> TagRecord? {
        try await read { db throws(IndexError) in
            var record: TagRecord?
            try db.query(
                """
                SELECT t.digest, t.media_type, t.checked_at FROM tags t
                JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE u.name = ? AND r.name = ? AND t.name = ?
                """, [.text(repository.upstream), .text(repository.name.value), .text(tag.value)]
            ) { row in
                record = TagRecord(digest: try Digest(parsing: row.text(0)), mediaType: row.text(1), checkedAt: row.int(2))
            }
            return record
        }
    }

    public func tags(_ repository: RepositoryKey) async throws(IndexError) -> [String] {
        try await read { db throws(IndexError) in
            var names: [String] = []
            try db.query(
                """
                SELECT t.name FROM tags t
                JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE u.name = ? AND r.name = ? ORDER BY t.name
                """, [.text(repository.upstream), .text(repository.name.value)]
            ) { names.append($0.text(0)) }
            return names
        }
    }

    public func repositoryExists(_ repository: RepositoryKey) async throws(IndexError) -> Bool {
        try await read { db throws(IndexError) in
            var found = false
            try db.query(
                "SELECT 1 FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?",
                [.text(repository.upstream), .text(repository.name.value)]
            ) { _ in found = true }
            return found
        }
    }

    public func manifest(_ digest: Digest) async throws(IndexError) -> ManifestRecord? {
        try await read { db throws(IndexError) in
            var record: ManifestRecord?
            try db.query("SELECT media_type, size FROM manifests WHERE digest = ?", [.text(digest.description)]) { row in
                record = ManifestRecord(digest: digest, mediaType: row.text(0), size: row.int(1))
            }
            return record
        }
    }

    public func manifest(_ digest: Digest, in repository: RepositoryKey) async throws(IndexError) -> (record: ManifestRecord, linked: Bool)? {
        let found: LinkedManifest? = try await read { db throws(IndexError) in
            var out: LinkedManifest?
            try db.query(
                """
                SELECT m.media_type, m.size, EXISTS (SELECT 1 FROM repository_blobs l
                  JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
                  WHERE u.name = ? AND r.name = ? AND l.digest = m.digest)
                FROM manifests m WHERE m.digest = ?
                """, [.text(repository.upstream), .text(repository.name.value), .text(digest.description)]
            ) { row in
                out = LinkedManifest(record: ManifestRecord(digest: digest, mediaType: row.text(0), size: row.int(1)), linked: row.int(2) != 0)
            }
            return out
        }
        return found.map { ($0.record, $0.linked) }
    }

    private struct LinkedManifest: Sendable {
        let record: ManifestRecord
        let linked: Bool
    }

    public func isLinked(_ repository: RepositoryKey, _ digest: Digest) async throws(IndexError) -> Bool {
        try await read { db throws(IndexError) in
            var found = false
            try db.query(
                """
                SELECT 1 FROM repository_blobs l
                JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE u.name = ? AND r.name = ? AND l.digest = ?
                """, [.text(repository.upstream), .text(repository.name.value), .text(digest.description)]
            ) { _ in found = true }
            return found
        }
    }

    public func manifests(naming blob: Digest, in repository: RepositoryKey, limit: Int) async throws(IndexError) -> [ManifestRecord] {
        try await read { db throws(IndexError) in
            var out: [ManifestRecord] = []
            try db.query(
                """
                SELECT m.digest, m.media_type, m.size FROM manifest_references x
                JOIN manifests m ON m.digest = x.manifest
                JOIN repository_blobs l ON l.digest = m.digest
                JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE x.blob = ? AND u.name = ? AND r.name = ? LIMIT ?
                """, [.text(blob.description), .text(repository.upstream), .text(repository.name.value), .integer(Int64(limit))]
            ) { row in
                out.append(ManifestRecord(digest: try Digest(parsing: row.text(0)), mediaType: row.text(1), size: row.int(2)))
            }
            return out
        }
    }

    public func referrers(_ repository: RepositoryKey, subject: Digest) async throws(IndexError) -> [ReferrerRecord] {
        try await read { db throws(IndexError) in
            var out: [ReferrerRecord] = []
            try db.query(
                """
                SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m
                JOIN repository_blobs l ON l.digest = m.digest
                JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE u.name = ? AND r.name = ? AND m.subject = ? ORDER BY m.digest
                """, [.text(repository.upstream), .text(repository.name.value), .text(subject.description)]
            ) { row in
                let annotations = row.optionalText(4).flatMap {
                    try? JSONDecoder().decode([String: String].self, from: Data($0.utf8))
                }
                out.append(ReferrerRecord(
                    digest: try Digest(parsing: row.text(0)), mediaType: row.text(1), size: row.int(2),
                    artifactType: row.optionalText(3), annotations: annotations))
            }
            return out
        }
    }

    public func children(ofIndex digest: Digest) async throws(IndexError) -> [ChildRecord] {
        try await read { db throws(IndexError) in
            var out: [ChildRecord] = []
            try db.query(
                "SELECT child, media_type, size, os, architecture, variant FROM index_children WHERE index_digest = ? ORDER BY position",
                [.text(digest.description)]
            ) { row in
                var platform: Platform?
                if let os = row.optionalText(3), let arch = row.optionalText(4) {
                    platform = Platform(os: os, architecture: arch, variant: row.optionalText(5))
                }
                out.append(ChildRecord(digest: try Digest(parsing: row.text(0)), mediaType: row.text(1), size: row.int(2), platform: platform))
            }
            return out
        }
    }

    public func blobSize(_ digest: Digest) async throws(IndexError) -> Int64? {
        try await read { db throws(IndexError) in
            var size: Int64?
            try db.query("SELECT size FROM blobs WHERE digest = ?", [.text(digest.description)]) { size = $0.int(0) }
            return size
        }
    }

    public func listing() async throws(IndexError) -> [ListingRow] {
        try await read { db throws(IndexError) in
            var rows: [ListingRow] = []
            try db.query(
                """
                SELECT u.name, r.name, t.name, t.digest, t.media_type, t.checked_at FROM tags t
                JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                ORDER BY u.name, r.name, t.name
                """
            ) { row in
                rows.append(ListingRow(
                    repository: RepositoryKey(upstream: row.text(0), name: try RepositoryName(parsing: row.text(1))),
                    tag: row.text(2), digest: try Digest(parsing: row.text(3)), mediaType: row.text(4), checkedAt: row.int(5), size: 0))
            }
            for i in rows.indices { rows[i].size = try Self.totalSize(rows[i].digest, db) }
            return rows
        }
    }

    public func totalSize(_ root: Digest) async throws(IndexError) -> Int64 {
        try await read { db throws(IndexError) in try Self.totalSize(root, db) }
    }

    static func totalSize(_ root: Digest, _ db: SQLiteConnection) throws(IndexError) -> Int64 {
        var total: Int64 = 0
        try db.query(
            """
            WITH RECURSIVE reach(d) AS (
              SELECT ? UNION
              SELECT c.child FROM index_children c JOIN reach ON c.index_digest = reach.d
            ), everything(d) AS (
              SELECT d FROM reach UNION SELECT mr.blob FROM manifest_references mr JOIN reach ON mr.manifest = reach.d
            )
            SELECT COALESCE(SUM(b.size), 0) FROM blobs b JOIN everything e ON e.d = b.digest
            """, [.text(root.description)]
        ) { total = $0.int(0) }
        return total
    }

    public func allBlobs() async throws(IndexError) -> [(digest: Digest, size: Int64)] {
        let blobs: [EvictionPlan.Blob] = try await read { db throws(IndexError) in
            var out: [EvictionPlan.Blob] = []
            try db.query("SELECT digest, size FROM blobs ORDER BY digest") { row in
                out.append(EvictionPlan.Blob(digest: try Digest(parsing: row.text(0)), size: row.int(1)))
            }
            return out
        }
        return blobs.map { ($0.digest, $0.size) }
    }
}
