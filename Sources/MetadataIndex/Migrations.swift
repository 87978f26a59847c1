/// Versioned schema migrations, tracked in `PRAGMA user_version`.
///
/// Append a new entry to add a version; never edit a released one. Each runs in one
/// transaction, so a crash mid-migration leaves the previous version intact.
enum Migrations {
    static let steps: [String] = [
        // 1: the initial schema
        """
        CREATE TABLE upstreams(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE repositories(
          id INTEGER PRIMARY KEY,
          upstream_id INTEGER NOT NULL REFERENCES upstreams(id) ON DELETE CASCADE,
          name TEXT NOT NULL,
          UNIQUE(upstream_id, name));
        CREATE TABLE blobs(
          digest TEXT PRIMARY KEY,
          size INTEGER NOT NULL,
          added_at INTEGER NOT NULL,
          last_access INTEGER NOT NULL,
          pinned INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
        CREATE TABLE manifests(
          digest TEXT PRIMARY KEY,
          media_type TEXT NOT NULL,
          size INTEGER NOT NULL,
          subject TEXT,
          artifact_type TEXT,
          annotations TEXT) WITHOUT ROWID;
        CREATE INDEX manifests_subject ON manifests(subject) WHERE subject IS NOT NULL;
        CREATE TABLE manifest_references(
          manifest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
          blob TEXT NOT NULL,
          PRIMARY KEY(manifest, blob)) WITHOUT ROWID;
        CREATE INDEX manifest_references_blob ON manifest_references(blob);
        CREATE TABLE index_children(
          index_digest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
          child TEXT NOT NULL,
          media_type TEXT NOT NULL,
          size INTEGER NOT NULL,
          os TEXT, architecture TEXT, variant TEXT,
          position INTEGER NOT NULL,
          PRIMARY KEY(index_digest, child)) WITHOUT ROWID;
        CREATE TABLE tags(
          repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
          name TEXT NOT NULL,
          digest TEXT NOT NULL,
          media_type TEXT NOT NULL,
          checked_at INTEGER NOT NULL,
          PRIMARY KEY(repository_id, name)) WITHOUT ROWID;
        CREATE TABLE repository_blobs(
          repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
          digest TEXT NOT NULL,
          PRIMARY KEY(repository_id, digest)) WITHOUT ROWID;
        CREATE INDEX repository_blobs_digest ON repository_blobs(digest);
        """,
        // 2: access times in milliseconds, so LRU order holds within a second
        """
        ALTER TABLE blobs RENAME COLUMN last_access TO last_access_ms;
        UPDATE blobs SET last_access_ms = last_access_ms * 1000;
        CREATE INDEX index_children_child ON index_children(child);
        """,
        // 3: eviction finds and deletes an image's tags by digest; without this index each
        // evicted image scanned the whole tags table twice (bench/scale.sh, docs/benchmarks.md)
        """
        CREATE INDEX tags_digest ON tags(digest);
        """,
        // 4: an eviction pass reads candidates in LRU order and stops at the cap, instead of
        // sorting every unpinned blob (bench/scale.sh, docs/benchmarks.md). Covering (the
        // digest is the key), so reading it never visits the table.
        """
        CREATE INDEX blobs_lru ON blobs(pinned, last_access_ms);
        """,
    ]

    static func apply(to db: SQLiteConnection) throws(IndexError) {
        try db.transaction { tx in
            var version = 0
            try tx.run("PRAGMA user_version") { version = Int($0.int(0)) }
            guard version <= steps.count else {
                throw IndexError(.schema, "the index schema version \(version) is newer than this program knows (\(steps.count))")
            }
            for (i, sql) in steps.enumerated().dropFirst(version) {
                try tx.execute(sql)
                try tx.execute("PRAGMA user_version = \(i + 1)")
            }
        }
    }
}
