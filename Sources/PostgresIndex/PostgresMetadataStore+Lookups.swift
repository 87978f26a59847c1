import Foundation
import MetadataIndex
import OCI
import PostgresNIO

/// Lookups: one statement each, on any pooled connection. The statements are those of
/// `SQLiteMetadataStore` in PostgreSQL's dialect; interpolated values become bind parameters.
extension PostgresMetadataStore {
    public func tag(_ repository: RepositoryKey, _ tag: Tag) async throws(IndexError) -> TagRecord? {
        try await rows("tag lookup", """
            SELECT t.digest, t.media_type, t.checked_at FROM tags t
            JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value) AND t.name = \(tag.value)
            """) { row in
            let (digest, mediaType, checkedAt) = try row.decode((String, String, Int64).self)
            return TagRecord(digest: try Digest(parsing: digest), mediaType: mediaType, checkedAt: checkedAt)
        }.first
    }

    public func tags(_ repository: RepositoryKey) async throws(IndexError) -> [String] {
        try await rows("tag list", """
            SELECT t.name FROM tags t
            JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value) ORDER BY t.name
            """) { try $0.decode(String.self) }
    }

    public func repositoryExists(_ repository: RepositoryKey) async throws(IndexError) -> Bool {
        try await !rows("repository lookup", """
            SELECT 1 FROM repositories r JOIN upstreams u ON u.id = r.upstream_id
            WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value)
            """) { _ in true }.isEmpty
    }

    public func manifest(_ digest: Digest) async throws(IndexError) -> ManifestRecord? {
        try await rows("manifest lookup", "SELECT media_type, size FROM manifests WHERE digest = \(digest.description)") { row in
            let (mediaType, size) = try row.decode((String, Int64).self)
            return ManifestRecord(digest: digest, mediaType: mediaType, size: size)
        }.first
    }

    public func manifest(_ digest: Digest, in repository: RepositoryKey) async throws(IndexError) -> (record: ManifestRecord, linked: Bool)? {
        let found = try await rows("manifest lookup", """
            SELECT m.media_type, m.size, EXISTS (SELECT 1 FROM repository_blobs l
              JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
              WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value) AND l.digest = m.digest)
            FROM manifests m WHERE m.digest = \(digest.description)
            """) { row in
            let (mediaType, size, linked) = try row.decode((String, Int64, Bool).self)
            return LinkedManifest(record: ManifestRecord(digest: digest, mediaType: mediaType, size: size), linked: linked)
        }.first
        return found.map { ($0.record, $0.linked) }
    }

    private struct LinkedManifest: Sendable {
        let record: ManifestRecord
        let linked: Bool
    }

    public func isLinked(_ repository: RepositoryKey, _ digest: Digest) async throws(IndexError) -> Bool {
        try await !rows("link lookup", """
            SELECT 1 FROM repository_blobs l
            JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value) AND l.digest = \(digest.description)
            """) { _ in true }.isEmpty
    }

    public func manifests(naming blob: Digest, in repository: RepositoryKey, limit: Int) async throws(IndexError) -> [ManifestRecord] {
        try await rows("manifests naming a blob", """
            SELECT m.digest, m.media_type, m.size FROM manifest_references x
            JOIN manifests m ON m.digest = x.manifest
            JOIN repository_blobs l ON l.digest = m.digest
            JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE x.blob = \(blob.description) AND u.name = \(repository.upstream) AND r.name = \(repository.name.value)
            LIMIT \(Int64(limit))
            """) { row in
            let (digest, mediaType, size) = try row.decode((String, String, Int64).self)
            return ManifestRecord(digest: try Digest(parsing: digest), mediaType: mediaType, size: size)
        }
    }

    public func referrers(_ repository: RepositoryKey, subject: Digest) async throws(IndexError) -> [ReferrerRecord] {
        try await rows("referrers", """
            SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m
            JOIN repository_blobs l ON l.digest = m.digest
            JOIN repositories r ON r.id = l.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE u.name = \(repository.upstream) AND r.name = \(repository.name.value) AND m.subject = \(subject.description)
            ORDER BY m.digest
            """) { row in
            let (digest, mediaType, size, artifactType, annotations) = try row.decode((String, String, Int64, String?, String?).self)
            return ReferrerRecord(
                digest: try Digest(parsing: digest), mediaType: mediaType, size: size, artifactType: artifactType,
                annotations: annotations.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) })
        }
    }

    public func children(ofIndex digest: Digest) async throws(IndexError) -> [ChildRecord] {
        try await rows("index children", """
            SELECT child, media_type, size, os, architecture, variant FROM index_children
            WHERE index_digest = \(digest.description) ORDER BY position
            """) { row in
            let (child, mediaType, size, os, architecture, variant) = try row.decode((String, String, Int64, String?, String?, String?).self)
            var platform: Platform?
            if let os, let architecture { platform = Platform(os: os, architecture: architecture, variant: variant) }
            return ChildRecord(digest: try Digest(parsing: child), mediaType: mediaType, size: size, platform: platform)
        }
    }

    public func blobSize(_ digest: Digest) async throws(IndexError) -> Int64? {
        try await rows("blob size", "SELECT size FROM blobs WHERE digest = \(digest.description)") { try $0.decode(Int64.self) }.first
    }

    public func listing() async throws(IndexError) -> [ListingRow] {
        try await withConnection("listing") { [logger] connection in
            var rows = try await connection.rows("""
                SELECT u.name, r.name, t.name, t.digest, t.media_type, t.checked_at FROM tags t
                JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                ORDER BY u.name, r.name, t.name
                """, logger: logger, Self.listingRow)
            for i in rows.indices { rows[i].size = try await Self.totalSize(rows[i].digest, connection, logger) }
            return rows
        }
    }

    public func totalSize(_ root: Digest) async throws(IndexError) -> Int64 {
        try await withConnection("total size") { [logger] connection in try await Self.totalSize(root, connection, logger) }
    }

    static func totalSize(_ root: Digest, _ connection: PostgresConnection, _ logger: Logger) async throws -> Int64 {
        try await connection.rows("""
            WITH RECURSIVE reach(d) AS (
              SELECT \(root.description)::text COLLATE "C" UNION
              SELECT c.child FROM index_children c JOIN reach ON c.index_digest = reach.d
            ), everything(d) AS (
              SELECT d FROM reach UNION SELECT mr.blob FROM manifest_references mr JOIN reach ON mr.manifest = reach.d
            )
            SELECT COALESCE(SUM(b.size), 0)::bigint FROM blobs b JOIN everything e ON e.d = b.digest
            """, logger: logger) { try $0.decode(Int64.self) }.first ?? 0
    }

    public func taggedRepositories(named names: [RepositoryName]) async throws(IndexError) -> [ListingRow] {
        guard !names.isEmpty else { return [] }
        return try await rows("tagged repositories", """
            SELECT u.name, r.name, t.name, t.digest, t.media_type, t.checked_at FROM tags t
            JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
            WHERE r.name = ANY(\(names.map(\.value))) ORDER BY u.name, r.name, t.name
            """, Self.listingRow)
    }

    @Sendable static func listingRow(_ row: PostgresRow) throws -> ListingRow {
        let (upstream, repository, tag, digest, mediaType, checkedAt) = try row.decode((String, String, String, String, String, Int64).self)
        return ListingRow(repository: RepositoryKey(upstream: upstream, name: try RepositoryName(parsing: repository)),
                          tag: tag, digest: try Digest(parsing: digest), mediaType: mediaType, checkedAt: checkedAt, size: 0)
    }

    public func allBlobs() async throws(IndexError) -> [(digest: Digest, size: Int64)] {
        try await rows("all blobs", "SELECT digest, size FROM blobs ORDER BY digest") { row in
            let (digest, size) = try row.decode((String, Int64).self)
            return EvictionPlan.Blob(digest: try Digest(parsing: digest), size: size)
        }.map { ($0.digest, $0.size) }
    }
}
