import OCI

extension SQLiteMetadataStore {
    /// Every tag of a repository called `names` (any of them) on any upstream, for the CLI's
    /// "not in the cache, but cached as …" hints. Sizes are not computed (they are 0).
    public func taggedRepositories(named names: [RepositoryName]) async throws(IndexError) -> [ListingRow] {
        guard !names.isEmpty else { return [] }
        return try await read { db throws(IndexError) in
            var rows: [ListingRow] = []
            let marks = Array(repeating: "?", count: names.count).joined(separator: ", ")
            try db.query(
                """
                SELECT u.name, r.name, t.name, t.digest, t.media_type, t.checked_at FROM tags t
                JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                WHERE r.name IN (\(marks)) ORDER BY u.name, r.name, t.name
                """, names.map { .text($0.value) }
            ) { row in
                rows.append(ListingRow(
                    repository: RepositoryKey(upstream: row.text(0), name: try RepositoryName(parsing: row.text(1))),
                    tag: row.text(2), digest: try Digest(parsing: row.text(3)), mediaType: row.text(4), checkedAt: row.int(5), size: 0))
            }
            return rows
        }
    }
}
