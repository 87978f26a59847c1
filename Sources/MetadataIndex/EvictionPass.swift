import OCI

/// One eviction pass inside the writer's transaction: candidates in LRU order, read a chunk
/// at a time from the `blobs_lru` index, until the recorded total is at most the cap.
///
/// The work is proportional to what is evicted, not to the store: the pass stops reading
/// candidates once it is under the cap, each chunk is classified by one statement (manifest?
/// an index's child? referenced?), and each blob is dropped by one `DELETE … RETURNING`
/// that checks it is unreferenced.
///
/// A root's "last used" is the later of its own and its children's access times (a pull of
/// one platform touches the index and one child). The stream is ordered by a blob's own
/// time, so a root whose child was used later is set aside in `deferred` and evicted when
/// the stream reaches that later time: the order is the same as sorting every candidate.
struct EvictionPass {
    let tx: SQLiteConnection.Transaction
    let maxBytes: Int64
    let inUse: (Digest) -> Bool
    var plan = EvictionPlan()
    private var total: Int64 = 0
    /// Roots waiting for their (later) last-used time, sorted by (used, digest).
    private var deferred: [(used: Int64, digest: String)] = []
    /// Rows this pass deleted or kept for an open response: not candidates again.
    private var done: Set<String> = []
    static let chunk = 512
    /// The next chunk of candidates after (time, digest), classified. Reads only the
    /// covering `blobs_lru` index and primary-key or index probes (`IndexScaleTests`).
    static let candidates = """
        SELECT b.digest, b.last_access_ms,
          EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest),
          EXISTS (SELECT 1 FROM index_children c WHERE c.child = b.digest),
          EXISTS (SELECT 1 FROM manifest_references r WHERE r.blob = b.digest),
          (SELECT MAX(cb.last_access_ms) FROM index_children c JOIN blobs cb ON cb.digest = c.child
            WHERE c.index_digest = b.digest)
        FROM blobs b WHERE b.pinned = 0 AND (b.last_access_ms, b.digest) > (?, ?)
        ORDER BY b.last_access_ms, b.digest LIMIT ?
        """

    init(tx: SQLiteConnection.Transaction, maxBytes: Int64, inUse: @escaping (Digest) -> Bool) {
        self.tx = tx
        self.maxBytes = maxBytes
        self.inUse = inUse
    }

    mutating func run() throws {
        try tx.run("SELECT COALESCE(SUM(size), 0) FROM blobs") { plan.bytesBefore = $0.int(0) }
        total = plan.bytesBefore
        var after: (ms: Int64, digest: String) = (Int64.min, "")
        stream: while total > maxBytes {
            var rows: [Candidate] = []
            try tx.run(Self.candidates, [.integer(after.ms), .text(after.digest), .integer(Int64(Self.chunk))]) { row in
                rows.append(Candidate(digest: row.text(0), used: row.int(1), isManifest: row.int(2) != 0,
                                      isChild: row.int(3) != 0, referenced: row.int(4) != 0, childrenUsed: row.optionalInt(5)))
            }
            guard let last = rows.last else { break }
            after = (last.used, last.digest)
            for row in rows {
                while let first = deferred.first, (first.used, first.digest) <= (row.used, row.digest) {
                    guard total > maxBytes else { break stream }
                    deferred.removeFirst()
                    try evictRoot(first.digest)
                }
                guard total > maxBytes else { break stream }
                guard !done.contains(row.digest) else { continue }
                if row.isManifest {
                    guard !row.isChild else { continue }
                    if let children = row.childrenUsed, children > row.used {
                        let at = deferred.firstIndex { ($0.used, $0.digest) > (children, row.digest) } ?? deferred.endIndex
                        deferred.insert((children, row.digest), at: at)
                    } else {
                        try evictRoot(row.digest)
                    }
                } else if !row.referenced {
                    try dropUnreferenced([row.digest])
                }
            }
        }
        while total > maxBytes, !deferred.isEmpty {
            try evictRoot(deferred.removeFirst().digest)
        }
        plan.bytesAfter = total
    }

    private struct Candidate {
        let digest: String
        let used: Int64
        let isManifest: Bool
        let isChild: Bool
        let referenced: Bool
        let childrenUsed: Int64?
    }

    private mutating func evictRoot(_ root: String) throws {
        guard !done.contains(root) else { return }
        var tags: [String] = []
        try tx.run(
            """
            SELECT u.name || '/' || r.name || ':' || t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
            JOIN upstreams u ON u.id = r.upstream_id WHERE t.digest = ? ORDER BY 1
            """, [.text(root)]) { tags.append($0.text(0)) }
        plan.images.append(EvictionPlan.Image(digest: try Digest(parsing: root), tags: tags))
        try tx.run("DELETE FROM tags WHERE digest = ?", [.text(root)])
        try dropUnreferenced(try dropManifestTree(root))
    }

    /// Deletes a manifest and the child manifests only it listed (untagged, unpinned);
    /// returns every digest whose last reference may have gone.
    private func dropManifestTree(_ root: String) throws -> [String] {
        var released: [String] = []
        var queue = [root]
        while let manifest = queue.popLast() {
            var children: [String] = []
            try tx.run("SELECT child FROM index_children WHERE index_digest = ?", [.text(manifest)]) { children.append($0.text(0)) }
            try tx.run("SELECT blob FROM manifest_references WHERE manifest = ?", [.text(manifest)]) { released.append($0.text(0)) }
            // Cascades to its manifest_references and index_children rows.
            try tx.run("DELETE FROM manifests WHERE digest = ?", [.text(manifest)])
            released.append(manifest)
            for child in children {
                var keep = false
                try tx.run(
                    """
                    SELECT 1 WHERE EXISTS (SELECT 1 FROM index_children WHERE child = ?1)
                      OR EXISTS (SELECT 1 FROM tags WHERE digest = ?1)
                      OR EXISTS (SELECT 1 FROM blobs WHERE digest = ?1 AND pinned = 1)
                      OR NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?1)
                    """, [.text(child)]) { _ in keep = true }
                if keep {
                    released.append(child)
                } else {
                    queue.append(child)
                }
            }
        }
        return released
    }

    /// Deletes the rows of blobs nothing references any more (not pinned, not a manifest,
    /// not in use), and counts the bytes freed.
    private mutating func dropUnreferenced(_ digests: [String]) throws {
        for digest in Set(digests).sorted() where !done.contains(digest) {
            let parsed = try Digest(parsing: digest)
            var size: Int64?
            if inUse(parsed) {
                try tx.run(
                    """
                    SELECT size FROM blobs WHERE digest = ?1 AND pinned = 0
                      AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?1)
                      AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE blob = ?1)
                    """, [.text(digest)]) { size = $0.int(0) }
                guard let size else { continue }
                // Counted as freed: it goes on a later pass, once its response ends, and
                // evicting more images meanwhile would free nothing sooner.
                plan.skippedInUse.append(parsed)
                done.insert(digest)
                total -= size
                continue
            }
            try tx.run(
                """
                DELETE FROM blobs WHERE digest = ?1 AND pinned = 0
                  AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?1)
                  AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE blob = ?1)
                RETURNING size
                """, [.text(digest)]) { size = $0.int(0) }
            guard let size else { continue }
            try tx.run("DELETE FROM repository_blobs WHERE digest = ?", [.text(digest)])
            plan.blobs.append(EvictionPlan.Blob(digest: parsed, size: size))
            done.insert(digest)
            total -= size
        }
    }
}
