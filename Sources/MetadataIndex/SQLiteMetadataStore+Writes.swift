import Foundation
import OCI

/// Writes: all on the writer's thread, each call in one transaction.
extension SQLiteMetadataStore {
    public func record(_ batch: ContentBatch, now: Int64) async throws(IndexError) {
        try await write { db throws(IndexError) in
            try db.transaction { tx in try Self.record(batch, now: now, tx) }
        }
    }

    private static func record(_ batch: ContentBatch, now: Int64, _ tx: SQLiteConnection.Transaction) throws {
        let nowMilliseconds = now * 1000
        for blob in batch.blobs {
            try tx.run(
                """
                INSERT INTO blobs(digest, size, added_at, last_access_ms, pinned) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(digest) DO UPDATE SET pinned = MAX(pinned, excluded.pinned)
                """, [.text(blob.digest.description), .integer(blob.size), .integer(now), .integer(nowMilliseconds),
                      .integer(batch.pinned.contains(blob.digest) ? 1 : 0)])
        }
        for root in batch.pinned {
            try tx.run("UPDATE blobs SET pinned = 1 WHERE digest = ?", [.text(root.description)])
        }
        for m in batch.manifests {
            var annotations: SQLValue = .null
            if let a = m.annotations, let data = try? JSONEncoder().encode(a) { annotations = .text(String(decoding: data, as: UTF8.self)) }
            try tx.run(
                "INSERT OR IGNORE INTO manifests(digest, media_type, size, subject, artifact_type, annotations) VALUES (?, ?, ?, ?, ?, ?)",
                [.text(m.digest.description), .text(m.mediaType), .integer(m.size),
                 m.subject.map { .text($0.description) } ?? .null, m.artifactType.map { .text($0) } ?? .null, annotations])
            for blob in m.references {
                try tx.run("INSERT OR IGNORE INTO manifest_references(manifest, blob) VALUES (?, ?)",
                           [.text(m.digest.description), .text(blob.description)])
            }
            for (position, child) in m.children.enumerated() {
                let p = child.platform
                try tx.run(
                    """
                    INSERT OR IGNORE INTO index_children(index_digest, child, media_type, size, os, architecture, variant, position)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    [.text(m.digest.description), .text(child.digest.description), .text(child.mediaType), .integer(child.size),
                     p.map { .text($0.os) } ?? .null, p.map { .text($0.architecture) } ?? .null,
                     p?.variant.map { .text($0) } ?? .null, .integer(Int64(position))])
            }
        }
        var repositoryIDs: [RepositoryKey: Int64] = [:]
        func repositoryID(_ key: RepositoryKey) throws -> Int64 {
            if let id = repositoryIDs[key] { return id }
            try tx.run("INSERT OR IGNORE INTO upstreams(name) VALUES (?)", [.text(key.upstream)])
            try tx.run(
                "INSERT OR IGNORE INTO repositories(upstream_id, name) SELECT id, ? FROM upstreams WHERE name = ?",
                [.text(key.name.value), .text(key.upstream)])
            var id: Int64 = 0
            try tx.run(
                "SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?",
                [.text(key.upstream), .text(key.name.value)]) { id = $0.int(0) }
            repositoryIDs[key] = id
            return id
        }
        for link in batch.links {
            try tx.run("INSERT OR IGNORE INTO repository_blobs(repository_id, digest) VALUES (?, ?)",
                       [.integer(try repositoryID(link.repository)), .text(link.digest.description)])
        }
        for tag in batch.tags {
            try tx.run(
                """
                INSERT INTO tags(repository_id, name, digest, media_type, checked_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(repository_id, name) DO UPDATE SET digest = excluded.digest,
                  media_type = excluded.media_type, checked_at = excluded.checked_at
                """,
                [.integer(try repositoryID(tag.repository)), .text(tag.tag.value), .text(tag.digest.description),
                 .text(tag.mediaType), .integer(tag.checkedAt ?? now)])
        }
    }

    public func touchTag(_ repository: RepositoryKey, _ tag: Tag, checkedAt: Int64) async throws(IndexError) {
        try await write { db throws(IndexError) in
            try db.query(
                """
                UPDATE tags SET checked_at = ? WHERE name = ? AND repository_id =
                  (SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?)
                """, [.integer(checkedAt), .text(tag.value), .text(repository.upstream), .text(repository.name.value)])
        }
    }

    public func claimTagRevalidation(_ repository: RepositoryKey, _ tag: Tag, observedCheckedAt: Int64, checkedAt: Int64) async throws(IndexError) -> Bool {
        try await write { db throws(IndexError) in
            // One statement, under the write lock: of claims on one row, only the first matches.
            try db.transaction { tx in
                try tx.run(
                    """
                    UPDATE tags SET checked_at = ? WHERE name = ? AND checked_at = ? AND repository_id =
                      (SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?)
                    """, [.integer(checkedAt), .text(tag.value), .integer(observedCheckedAt), .text(repository.upstream), .text(repository.name.value)])
                return tx.changes == 1
            }
        }
    }

    public func forgetBlobs(_ digests: [Digest]) async throws(IndexError) {
        try await write { db throws(IndexError) in
            try db.transaction { tx in
                for digest in digests { try tx.run("DELETE FROM blobs WHERE digest = ?", [.text(digest.description)]) }
            }
        }
    }
}
