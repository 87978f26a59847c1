import Foundation
import OCI

/// The index side of the cache's life: access times, pins, and eviction.
///
/// Eviction works on images, not files. An image is a root manifest (one no cached index
/// lists as a child); evicting it removes its tags, the manifest, its children that nothing
/// else lists, and then every blob no remaining manifest references, so shared base layers
/// stay while any image still uses them. Blobs no manifest references at all ("loose",
/// e.g. fetched by digest alone) are evicted on their own. Pinned roots and pinned blobs
/// are never candidates.
extension MetadataIndex {
    /// Bytes and objects the index records as stored.
    public func usage() throws(IndexError) -> (bytes: Int64, objects: Int) {
        var out: (Int64, Int) = (0, 0)
        try db.query("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs") { out = ($0.int(0), Int($0.int(1))) }
        return out
    }

    /// Writes batched access times (Unix milliseconds), keeping the later of old and new.
    public func recordAccess(_ times: [Digest: Int64]) throws(IndexError) {
        guard !times.isEmpty else { return }
        try db.transaction { tx in
            for (digest, ms) in times {
                try tx.run("UPDATE blobs SET last_access_ms = MAX(last_access_ms, ?) WHERE digest = ?",
                           [.integer(ms), .text(digest.description)])
            }
        }
    }

    /// Pins or unpins a manifest (an image root). Returns false when it is not cached.
    @discardableResult
    public func setPinned(_ digest: Digest, _ pinned: Bool) throws(IndexError) -> Bool {
        var found = false
        try db.transaction { tx in
            try tx.run("UPDATE blobs SET pinned = ? WHERE digest = ?", [.integer(pinned ? 1 : 0), .text(digest.description)])
            try tx.run("SELECT 1 FROM blobs WHERE digest = ?", [.text(digest.description)]) { _ in found = true }
        }
        return found
    }

    /// Pinned roots, with the tags that point at them.
    public func pinned() throws(IndexError) -> [(digest: Digest, references: [String])] {
        var out: [(Digest, [String])] = []
        try db.query(
            """
            SELECT b.digest, (SELECT GROUP_CONCAT(u.name || '/' || r.name || ':' || t.name, ' ') FROM tags t
              JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id WHERE t.digest = b.digest)
            FROM blobs b WHERE b.pinned = 1 ORDER BY b.digest
            """
        ) { row in
            out.append((try Digest(parsing: row.text(0)), row.optionalText(1)?.split(separator: " ").map(String.init) ?? []))
        }
        return out
    }

    /// Evicts least-recently-used content until the recorded total is at most `maxBytes`.
    /// Index rows go in one transaction; the caller deletes the returned blobs' files after.
    /// `inUse` blobs (open responses) keep their row and file: a later pass takes them.
    /// With `dryRun` nothing changes and the plan is returned.
    public func evict(toAtMost maxBytes: Int64, dryRun: Bool = false, inUse: (Digest) -> Bool = { _ in false }) throws(IndexError) -> EvictionPlan {
        try db.transaction(commit: !dryRun) { tx in
            var plan = EvictionPlan()
            try tx.run("SELECT COALESCE(SUM(size), 0) FROM blobs") { plan.bytesBefore = $0.int(0) }
            var total = plan.bytesBefore
            guard total > maxBytes else {
                plan.bytesAfter = total
                return plan
            }
            var candidates: [(digest: String, isManifest: Bool)] = []
            // Roots: the later of the root's and its children's access (a pull of one
            // platform uses the index and one child). Loose blobs: their own access.
            try tx.run(
                """
                SELECT m.digest, 1, MAX(b.last_access_ms, COALESCE((SELECT MAX(cb.last_access_ms) FROM index_children c
                  JOIN blobs cb ON cb.digest = c.child WHERE c.index_digest = m.digest), 0)) AS used
                FROM manifests m JOIN blobs b ON b.digest = m.digest
                WHERE b.pinned = 0 AND NOT EXISTS (SELECT 1 FROM index_children c WHERE c.child = m.digest)
                UNION ALL
                SELECT b.digest, 0, b.last_access_ms FROM blobs b
                WHERE b.pinned = 0 AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
                  AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.blob = b.digest)
                ORDER BY used, 1
                """
            ) { candidates.append(($0.text(0), $0.int(1) == 1)) }
            for candidate in candidates where total > maxBytes {
                let digest = try Digest(parsing: candidate.digest)
                if candidate.isManifest {
                    var tags: [String] = []
                    try tx.run(
                        """
                        SELECT u.name || '/' || r.name || ':' || t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
                        JOIN upstreams u ON u.id = r.upstream_id WHERE t.digest = ? ORDER BY 1
                        """, [.text(candidate.digest)]) { tags.append($0.text(0)) }
                    plan.images.append(EvictionPlan.Image(digest: digest, tags: tags))
                    try tx.run("DELETE FROM tags WHERE digest = ?", [.text(candidate.digest)])
                    let released = try Self.dropManifestTree(candidate.digest, tx)
                    total -= try Self.dropUnreferenced(released, tx, inUse: inUse, plan: &plan)
                } else {
                    total -= try Self.dropUnreferenced([candidate.digest], tx, inUse: inUse, plan: &plan)
                }
            }
            plan.bytesAfter = total
            return plan
        }
    }

    /// Deletes a manifest and the child manifests only it listed (untagged, unpinned);
    /// returns every digest whose last reference may have gone.
    private static func dropManifestTree(_ root: String, _ tx: SQLiteConnection.Transaction) throws -> [String] {
        var released: [String] = []
        var queue = [root]
        while let manifest = queue.popLast() {
            var children: [String] = []
            try tx.run("SELECT child FROM index_children WHERE index_digest = ?", [.text(manifest)]) { children.append($0.text(0)) }
            try tx.run("SELECT blob FROM manifest_references WHERE manifest = ?", [.text(manifest)]) { released.append($0.text(0)) }
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
    /// not in use). Returns the bytes freed.
    private static func dropUnreferenced(_ digests: [String], _ tx: SQLiteConnection.Transaction,
                                         inUse: (Digest) -> Bool, plan: inout EvictionPlan) throws -> Int64 {
        var freed: Int64 = 0
        for digest in Set(digests).sorted() {
            var size: Int64?
            try tx.run(
                """
                SELECT size FROM blobs b WHERE digest = ?1 AND pinned = 0
                  AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?1)
                  AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE blob = ?1)
                """, [.text(digest)]) { size = $0.int(0) }
            guard let size else { continue }
            let parsed = try Digest(parsing: digest)
            if inUse(parsed) {
                // Counted as freed: it goes on a later pass, once its response ends, and
                // evicting more images meanwhile would free nothing sooner.
                plan.skippedInUse.append(parsed)
                freed += size
                continue
            }
            try tx.run("DELETE FROM blobs WHERE digest = ?", [.text(digest)])
            try tx.run("DELETE FROM repository_blobs WHERE digest = ?", [.text(digest)])
            plan.blobs.append(EvictionPlan.Blob(digest: parsed, size: size))
            freed += size
        }
        return freed
    }
}

/// What an eviction pass removed (or, in a dry run, would remove).
public struct EvictionPlan: Sendable {
    public struct Image: Sendable { public let digest: Digest; public let tags: [String] }
    public struct Blob: Sendable {
        public let digest: Digest
        public let size: Int64
        public init(digest: Digest, size: Int64) {
            self.digest = digest
            self.size = size
        }
    }
    public var images: [Image] = []
    /// Blobs (manifests included) whose files are to be deleted.
    public var blobs: [Blob] = []
    /// Unreferenced blobs kept because a response is streaming them.
    public var skippedInUse: [Digest] = []
    public var bytesBefore: Int64 = 0
    /// What remains once in-use blobs are released too.
    public var bytesAfter: Int64 = 0
    public var bytesFreed: Int64 { blobs.reduce(0) { $0 + $1.size } }

    public init() {}
}
