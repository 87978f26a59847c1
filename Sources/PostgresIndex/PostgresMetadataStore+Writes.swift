import Foundation
import MetadataIndex
import OCI
import PostgresNIO

/// Writes, each call in one transaction, and the cache's life: access times, pins, usage
/// and the eviction pass.
extension PostgresMetadataStore {
    public func record(_ batch: ContentBatch, now: Int64) async throws(IndexError) {
        try await transaction("record") { [logger] tx in
            try await tx.run("SELECT pg_advisory_xact_lock_shared(\(Self.contentLockKey))", logger: logger)
            try await Self.record(batch, now: now, tx, logger)
        }
    }

    /// Rows are written in digest order, so two replicas recording overlapping batches lock
    /// them in the same order and do not deadlock.
    private static func record(_ batch: ContentBatch, now: Int64, _ tx: PostgresConnection, _ logger: Logger) async throws {
        let nowMilliseconds = now * 1000
        for blob in batch.blobs.sorted(by: { $0.digest.description < $1.digest.description }) {
            try await tx.run("""
                INSERT INTO blobs(digest, size, added_at, last_access_ms, pinned)
                VALUES (\(blob.digest.description), \(blob.size), \(now), \(nowMilliseconds), \(batch.pinned.contains(blob.digest)))
                ON CONFLICT (digest) DO UPDATE SET pinned = blobs.pinned OR excluded.pinned
                """, logger: logger)
        }
        for root in batch.pinned.map(\.description).sorted() {
            try await tx.run("UPDATE blobs SET pinned = true WHERE digest = \(root)", logger: logger)
        }
        for m in batch.manifests.sorted(by: { $0.digest.description < $1.digest.description }) {
            let annotations = m.annotations.flatMap { try? JSONEncoder().encode($0) }.map { String(decoding: $0, as: UTF8.self) }
            try await tx.run("""
                INSERT INTO manifests(digest, media_type, size, subject, artifact_type, annotations)
                VALUES (\(m.digest.description), \(m.mediaType), \(m.size), \(m.subject?.description), \(m.artifactType), \(annotations))
                ON CONFLICT DO NOTHING
                """, logger: logger)
            for blob in m.references {
                try await tx.run("""
                    INSERT INTO manifest_references(manifest, blob) VALUES (\(m.digest.description), \(blob.description))
                    ON CONFLICT DO NOTHING
                    """, logger: logger)
            }
            for (position, child) in m.children.enumerated() {
                let p = child.platform
                try await tx.run("""
                    INSERT INTO index_children(index_digest, child, media_type, size, os, architecture, variant, position)
                    VALUES (\(m.digest.description), \(child.digest.description), \(child.mediaType), \(child.size),
                            \(p?.os), \(p?.architecture), \(p?.variant), \(Int32(position)))
                    ON CONFLICT DO NOTHING
                    """, logger: logger)
            }
        }
        var repositoryIDs: [RepositoryKey: Int64] = [:]
        func repositoryID(_ key: RepositoryKey) async throws -> Int64 {
            if let id = repositoryIDs[key] { return id }
            try await tx.run("INSERT INTO upstreams(name) VALUES (\(key.upstream)) ON CONFLICT DO NOTHING", logger: logger)
            try await tx.run("""
                INSERT INTO repositories(upstream_id, name) SELECT id, \(key.name.value) FROM upstreams WHERE name = \(key.upstream)
                ON CONFLICT DO NOTHING
                """, logger: logger)
            let id = try await tx.rows("""
                SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id
                WHERE u.name = \(key.upstream) AND r.name = \(key.name.value)
                """, logger: logger) { try $0.decode(Int64.self) }.first ?? 0
            repositoryIDs[key] = id
            return id
        }
        for link in batch.links.sorted(by: { $0.digest.description < $1.digest.description }) {
            let id = try await repositoryID(link.repository)
            try await tx.run("""
                INSERT INTO repository_blobs(repository_id, digest) VALUES (\(id), \(link.digest.description)) ON CONFLICT DO NOTHING
                """, logger: logger)
        }
        for tag in batch.tags {
            let id = try await repositoryID(tag.repository)
            try await tx.run("""
                INSERT INTO tags(repository_id, name, digest, media_type, checked_at)
                VALUES (\(id), \(tag.tag.value), \(tag.digest.description), \(tag.mediaType), \(tag.checkedAt ?? now))
                ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest,
                  media_type = excluded.media_type, checked_at = excluded.checked_at
                """, logger: logger)
        }
    }

    public func touchTag(_ repository: RepositoryKey, _ tag: Tag, checkedAt: Int64) async throws(IndexError) {
        _ = try await rows("tag touch", """
            UPDATE tags SET checked_at = \(checkedAt) WHERE name = \(tag.value) AND repository_id =
              (SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id
               WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value))
            """) { _ in () }
    }

    public func claimTagRevalidation(_ repository: RepositoryKey, _ tag: Tag, observedCheckedAt: Int64, checkedAt: Int64) async throws(IndexError) -> Bool {
        // Under READ COMMITTED a second UPDATE of the row waits for the first to commit, then
        // re-checks `checked_at = observed` against the new row and matches nothing: one winner.
        let claimed = try await rows("tag revalidation claim", """
            UPDATE tags SET checked_at = \(checkedAt) WHERE name = \(tag.value) AND checked_at = \(observedCheckedAt) AND repository_id =
              (SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id
               WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value))
            RETURNING 1
            """) { _ in () }
        return claimed.count == 1
    }

    public func forgetBlobs(_ digests: [Digest]) async throws(IndexError) {
        guard !digests.isEmpty else { return }
        _ = try await rows("forget blobs", "DELETE FROM blobs WHERE digest = ANY(\(digests.map(\.description)))") { _ in () }
    }

    // MARK: The cache's life

    public func usage() async throws(IndexError) -> (bytes: Int64, objects: Int) {
        let usage = try await rows("usage", "SELECT COALESCE(SUM(size), 0)::bigint, COUNT(*) FROM blobs") { row in
            let (bytes, objects) = try row.decode((Int64, Int64).self)
            return Usage(bytes: bytes, objects: Int(objects))
        }.first ?? Usage(bytes: 0, objects: 0)
        return (usage.bytes, usage.objects)
    }

    private struct Usage: Sendable {
        let bytes: Int64
        let objects: Int
    }

    /// One statement for the whole batch (arrays unnested on the server), keeping the later
    /// of the stored and the new time: replicas flush their batches in any order.
    public func recordAccess(_ times: [Digest: Int64]) async throws(IndexError) {
        guard !times.isEmpty else { return }
        let sorted = times.map { ($0.key.description, $0.value) }.sorted { $0.0 < $1.0 }
        let digests = sorted.map(\.0), milliseconds = sorted.map(\.1)
        try await transaction("access times") { [logger] tx in
            try await tx.run("""
                UPDATE blobs b SET last_access_ms = GREATEST(b.last_access_ms, v.ms)
                FROM unnest(\(digests)::text[], \(milliseconds)::bigint[]) AS v(digest, ms)
                WHERE b.digest = v.digest AND b.last_access_ms < v.ms
                """, logger: logger)
        }
    }

    @discardableResult
    public func setPinned(_ digest: Digest, _ pinned: Bool) async throws(IndexError) -> Bool {
        try await !rows("pin", "UPDATE blobs SET pinned = \(pinned) WHERE digest = \(digest.description) RETURNING 1") { _ in true }.isEmpty
    }

    public func pinned() async throws(IndexError) -> [(digest: Digest, references: [String])] {
        try await rows("pinned", """
            SELECT b.digest, (SELECT string_agg(u.name || '/' || r.name || ':' || t.name, ' ' ORDER BY u.name, r.name, t.name)
              FROM tags t JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
              WHERE t.digest = b.digest)
            FROM blobs b WHERE b.pinned ORDER BY b.digest
            """) { row in
            let (digest, references) = try row.decode((String, String?).self)
            return EvictionPlan.Image(digest: try Digest(parsing: digest), tags: references?.split(separator: " ").map(String.init) ?? [])
        }.map { ($0.digest, $0.tags) }
    }

    /// The pass holds the content lock exclusively: one replica evicts at a time, and no
    /// record batch lands in the middle of it.
    public func evict(toAtMost maxBytes: Int64, dryRun: Bool, inUse: @escaping @Sendable (Digest) -> Bool) async throws(IndexError) -> EvictionPlan {
        try await transaction("eviction", commit: !dryRun) { [logger] tx in
            try await tx.run("SELECT pg_advisory_xact_lock(\(Self.contentLockKey))", logger: logger)
            var pass = PostgresEvictionPass(tx: tx, logger: logger, maxBytes: maxBytes, inUse: inUse)
            try await pass.run()
            return pass.plan
        }
    }
}
