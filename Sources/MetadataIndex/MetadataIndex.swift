import Foundation
import OCI

/// The SQLite index of what the cache holds: upstreams, repositories, tags, manifests,
/// index children with platforms, repository↔blob links, blob sizes, access times and pins.
///
/// Called by the mirror core (lookups on every request, records after verified fills), the
/// importer and the CLI. The bytes themselves live in the `BlobStore`; a row here is only
/// written after the bytes it describes were verified and published.
public final class MetadataIndex: Sendable {
    let db: SQLiteConnection

    /// Opens or creates the index at `path` and applies pending migrations.
    public init(path: String) throws(IndexError) {
        db = try SQLiteConnection(path: path)
        try Migrations.apply(to: db)
    }

    /// The schema version after migrations.
    public func schemaVersion() throws(IndexError) -> Int {
        var version = 0
        try db.query("PRAGMA user_version") { version = Int($0.int(0)) }
        return version
    }

    // MARK: Lookups (hot path)

    public func tag(_ repository: RepositoryKey, _ tag: Tag) throws(IndexError) -> TagRecord? {
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

    /// Tag names of a repository, sorted.
    public func tags(_ repository: RepositoryKey) throws(IndexError) -> [String] {
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

    public func repositoryExists(_ repository: RepositoryKey) throws(IndexError) -> Bool {
        var found = false
        try db.query(
            "SELECT 1 FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?",
            [.text(repository.upstream), .text(repository.name.value)]
        ) { _ in found = true }
        return found
    }

    public func manifest(_ digest: Digest) throws(IndexError) -> ManifestRecord? {
        var record: ManifestRecord?
        try db.query("SELECT media_type, size FROM manifests WHERE digest = ?", [.text(digest.description)]) { row in
            record = ManifestRecord(digest: digest, mediaType: row.text(0), size: row.int(1))
        }
        return record
    }

    /// A manifest and whether `repository` is known to hold it, in one query: the warm
    /// manifest-by-digest path asks both on every request.
    public func manifest(_ digest: Digest, in repository: RepositoryKey) throws(IndexError) -> (record: ManifestRecord, linked: Bool)? {
        var out: (ManifestRecord, Bool)?
        try db.query(
            """
            SELECT m.media_type, m.size, EXISTS (SELECT 1 FROM repository_blobs l
              JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
              WHERE u.name = ? AND r.name = ? AND l.digest = m.digest)
            FROM manifests m WHERE m.digest = ?
            """, [.text(repository.upstream), .text(repository.name.value), .text(digest.description)]
        ) { row in
            out = (ManifestRecord(digest: digest, mediaType: row.text(0), size: row.int(1)), row.int(2) != 0)
        }
        return out
    }

    /// True when `repository` is known to hold `digest`: it came through that repository,
    /// or one of its manifests names it. The rule that keeps one repository from reading
    /// another's private layers.
    public func isLinked(_ repository: RepositoryKey, _ digest: Digest) throws(IndexError) -> Bool {
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

    /// Cached manifests of `repository` that name `blob` (a few at most): their descriptors
    /// give the blob's size when an upstream sends it without one.
    public func manifests(naming blob: Digest, in repository: RepositoryKey, limit: Int = 4) throws(IndexError) -> [ManifestRecord] {
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

    /// Manifests in `repository` whose `subject` is `digest`.
    public func referrers(_ repository: RepositoryKey, subject: Digest) throws(IndexError) -> [ReferrerRecord] {
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

    /// Children of an index, in the index's order, with their platforms.
    public func children(ofIndex digest: Digest) throws(IndexError) -> [ChildRecord] {
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

    public func blobSize(_ digest: Digest) throws(IndexError) -> Int64? {
        var size: Int64?
        try db.query("SELECT size FROM blobs WHERE digest = ?", [.text(digest.description)]) { size = $0.int(0) }
        return size
    }

    /// Every tag with its digest and the total size of what the index knows it needs, for `ls`.
    public func listing() throws(IndexError) -> [ListingRow] {
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
        for i in rows.indices { rows[i].size = try totalSize(rows[i].digest) }
        return rows
    }

    /// Bytes of a manifest plus everything it reaches that is stored (children, configs, layers), counted once.
    public func totalSize(_ root: Digest) throws(IndexError) -> Int64 {
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

    // MARK: Writes

    /// Records that the upstream confirmed `tag` still points where it did.
    public func touchTag(_ repository: RepositoryKey, _ tag: Tag, checkedAt: Int64) throws(IndexError) {
        try db.query(
            """
            UPDATE tags SET checked_at = ? WHERE name = ? AND repository_id =
              (SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ? AND r.name = ?)
            """, [.integer(checkedAt), .text(tag.value), .text(repository.upstream), .text(repository.name.value)])
    }

    /// Records verified content in one transaction: blobs, manifests, links, tags.
    /// Call only after every blob in the batch is published in the store.
    public func record(_ batch: ContentBatch, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(IndexError) {
        let nowMilliseconds = now * 1000
        try db.transaction { tx in
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
    }
}

public struct TagRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    /// Unix seconds of the last time the upstream confirmed (or import set) this tag.
    public let checkedAt: Int64
}

public struct ManifestRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64
}

public struct ChildRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64
    public let platform: Platform?
}

public struct ReferrerRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64
    public let artifactType: String?
    public let annotations: [String: String]?
}

public struct ListingRow: Sendable {
    public let repository: RepositoryKey
    public let tag: String
    public let digest: Digest
    public let mediaType: String
    public let checkedAt: Int64
    public var size: Int64
}

/// Everything one verified fill or import adds, written in one transaction.
public struct ContentBatch: Sendable {
    public struct Blob: Sendable { public let digest: Digest; public let size: Int64 }
    public struct Manifest: Sendable {
        public let digest: Digest
        public let mediaType: String
        public let size: Int64
        public let subject: Digest?
        public let artifactType: String?
        public let annotations: [String: String]?
        /// Config and layers.
        public let references: [Digest]
        /// Index entries, in order.
        public let children: [Descriptor]

        /// The same entry, recorded under the media type the upstream served it as.
        public init(copying other: Manifest, mediaType: String) {
            self.digest = other.digest
            self.mediaType = mediaType
            self.size = other.size
            self.subject = other.subject
            self.artifactType = other.artifactType
            self.annotations = other.annotations
            self.references = other.references
            self.children = other.children
        }

        public init(digest: Digest, size: Int64, document: ManifestDocument) {
            self.digest = digest
            self.mediaType = document.mediaType
            self.size = size
            self.subject = document.subject?.digest
            // What a referrers index lists it as (its own, else its config's media type).
            self.artifactType = document.referrerArtifactType
            self.annotations = document.annotations
            self.references = document.blobs.map(\.digest)
            self.children = document.manifests
        }
    }
    public struct Link: Sendable { public let repository: RepositoryKey; public let digest: Digest }
    public struct TagEntry: Sendable {
        public let repository: RepositoryKey
        public let tag: Tag
        public let digest: Digest
        public let mediaType: String
        public let checkedAt: Int64?
    }

    public var blobs: [Blob] = []
    public var manifests: [Manifest] = []
    public var links: [Link] = []
    public var tags: [TagEntry] = []
    /// Images (root manifests) to pin. Eviction never removes a pinned image, nor the
    /// children, configs and layers it references; pinning the root alone keeps `unpin` exact.
    public var pinned: Set<Digest> = []

    public init() {}

    public mutating func addBlob(_ digest: Digest, size: Int64) { blobs.append(Blob(digest: digest, size: size)) }
    public mutating func link(_ repository: RepositoryKey, _ digest: Digest) { links.append(Link(repository: repository, digest: digest)) }
    public mutating func tag(_ repository: RepositoryKey, _ tag: Tag, _ digest: Digest, mediaType: String, checkedAt: Int64? = nil) {
        tags.append(TagEntry(repository: repository, tag: tag, digest: digest, mediaType: mediaType, checkedAt: checkedAt))
    }
}

/// Errors from the metadata index.
public struct IndexError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        let raw: String
        public static let io = Code(raw: "index error")
        public static let schema = Code(raw: "schema error")
    }
    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "\(code.raw): \(message)" }
}

extension MetadataIndex {
    /// Every blob row: digest and recorded size, for `verify`.
    public func allBlobs() throws(IndexError) -> [(digest: Digest, size: Int64)] {
        var out: [(Digest, Int64)] = []
        try db.query("SELECT digest, size FROM blobs ORDER BY digest") { row in
            out.append((try Digest(parsing: row.text(0)), row.int(1)))
        }
        return out
    }
}

extension MetadataIndex {
    /// Drops blob rows (not manifests, tags or links), for blobs removed from the store; a
    /// later fill records them again.
    public func forgetBlobs(_ digests: [Digest]) throws(IndexError) {
        try db.transaction { tx in
            for digest in digests { try tx.run("DELETE FROM blobs WHERE digest = ?", [.text(digest.description)]) }
        }
    }
}
