import Logging
import MetadataIndex
import OCI
import PostgresNIO

/// One eviction pass inside a PostgreSQL transaction: the same order and rules as SQLite's
/// `EvictionPass` (read its comment for the why), as round trips instead of calls into an
/// embedded library.
///
/// Candidates come in LRU order a chunk at a time from the partial `blobs_lru` index until
/// the recorded total is at most the cap. An image is a root manifest; evicting it removes
/// its tags, the manifest, children that only it listed, then every blob no remaining
/// manifest references. A root is as recent as its most recently used child, so a root whose
/// child was used later waits in `deferred` until the stream reaches that time.
struct PostgresEvictionPass {
    let tx: PostgresConnection
    let logger: Logger
    let maxBytes: Int64
    let inUse: (Digest) -> Bool
    var plan = EvictionPlan()
    private var total: Int64 = 0
    /// Roots waiting for their (later) last-used time, sorted by (used, digest).
    private var deferred: [(used: Int64, digest: String)] = []
    /// Rows this pass deleted or kept for an open response: not candidates again.
    private var done: Set<String> = []
    /// Blobs other replicas of a fleet read or download (`blob_readers`, `fill_leases`).
    private var fleetInUse: Set<String> = []
    static let chunk: Int64 = 512

    init(tx: PostgresConnection, logger: Logger, maxBytes: Int64, inUse: @escaping (Digest) -> Bool) {
        self.tx = tx
        self.logger = logger
        self.maxBytes = maxBytes
        self.inUse = inUse
    }

    private struct Candidate {
        let digest: String
        let used: Int64
        let isManifest: Bool
        let isChild: Bool
        let referenced: Bool
        let childrenUsed: Int64?
    }

    /// The next chunk of unpinned candidates after (time, digest), classified in one statement.
    private func candidates(after: (ms: Int64, digest: String)) async throws -> [Candidate] {
        try await tx.rows("""
            SELECT b.digest, b.last_access_ms,
              EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest),
              EXISTS (SELECT 1 FROM index_children c WHERE c.child = b.digest),
              EXISTS (SELECT 1 FROM manifest_references r WHERE r.blob = b.digest),
              (SELECT MAX(cb.last_access_ms) FROM index_children c JOIN blobs cb ON cb.digest = c.child
                WHERE c.index_digest = b.digest)
            FROM blobs b WHERE NOT b.pinned AND (b.last_access_ms, b.digest) > (\(after.ms), \(after.digest))
            ORDER BY b.last_access_ms, b.digest LIMIT \(Self.chunk)
            """, logger: logger) { row in
            let (digest, used, isManifest, isChild, referenced, childrenUsed) = try row.decode((String, Int64, Bool, Bool, Bool, Int64?).self)
            return Candidate(digest: digest, used: used, isManifest: isManifest, isChild: isChild, referenced: referenced,
                             childrenUsed: childrenUsed)
        }
    }

    mutating func run() async throws {
        // What any replica streams or downloads now (published every few seconds): in use too.
        fleetInUse = Set(try await tx.rows("""
            SELECT digest FROM blob_readers WHERE expires_at >= now() UNION SELECT digest FROM fill_leases WHERE expires_at >= now()
            """, logger: logger) { try $0.decode(String.self) })
        plan.bytesBefore = try await tx.rows("SELECT COALESCE(SUM(size), 0)::bigint FROM blobs", logger: logger) {
            try $0.decode(Int64.self)
        }.first ?? 0
        total = plan.bytesBefore
        var after: (ms: Int64, digest: String) = (Int64.min, "")
        stream: while total > maxBytes {
            let rows = try await candidates(after: after)
            guard let last = rows.last else { break }
            after = (last.used, last.digest)
            for row in rows {
                while let first = deferred.first, (first.used, first.digest) <= (row.used, row.digest) {
                    guard total > maxBytes else { break stream }
                    deferred.removeFirst()
                    try await evictRoot(first.digest)
                }
                guard total > maxBytes else { break stream }
                guard !done.contains(row.digest) else { continue }
                if row.isManifest {
                    guard !row.isChild else { continue }
                    if let children = row.childrenUsed, children > row.used {
                        let at = deferred.firstIndex { ($0.used, $0.digest) > (children, row.digest) } ?? deferred.endIndex
                        deferred.insert((children, row.digest), at: at)
                    } else {
                        try await evictRoot(row.digest)
                    }
                } else if !row.referenced {
                    try await dropUnreferenced([row.digest])
                }
            }
        }
        while total > maxBytes, !deferred.isEmpty {
            try await evictRoot(deferred.removeFirst().digest)
        }
        plan.bytesAfter = total
    }

    private mutating func evictRoot(_ root: String) async throws {
        guard !done.contains(root) else { return }
        let tags = try await tx.rows("""
            SELECT u.name || '/' || r.name || ':' || t.name AS reference FROM tags t JOIN repositories r ON r.id = t.repository_id
            JOIN upstreams u ON u.id = r.upstream_id WHERE t.digest = \(root) ORDER BY reference
            """, logger: logger) { try $0.decode(String.self) }
        plan.images.append(EvictionPlan.Image(digest: try Digest(parsing: root), tags: tags))
        try await tx.run("DELETE FROM tags WHERE digest = \(root)", logger: logger)
        try await dropUnreferenced(try await dropManifestTree(root))
    }

    /// Deletes a manifest and the child manifests only it listed (untagged, unpinned);
    /// returns every digest whose last reference may have gone.
    private func dropManifestTree(_ root: String) async throws -> [String] {
        var released: [String] = []
        var queue = [root]
        while let manifest = queue.popLast() {
            let children = try await tx.rows("SELECT child FROM index_children WHERE index_digest = \(manifest)", logger: logger) {
                try $0.decode(String.self)
            }
            released += try await tx.rows("SELECT blob FROM manifest_references WHERE manifest = \(manifest)", logger: logger) {
                try $0.decode(String.self)
            }
            // Cascades to its manifest_references and index_children rows.
            try await tx.run("DELETE FROM manifests WHERE digest = \(manifest)", logger: logger)
            released.append(manifest)
            for child in children {
                let keep = try await tx.rows("""
                    SELECT EXISTS (SELECT 1 FROM index_children WHERE child = \(child))
                      OR EXISTS (SELECT 1 FROM tags WHERE digest = \(child))
                      OR EXISTS (SELECT 1 FROM blobs WHERE digest = \(child) AND pinned)
                      OR NOT EXISTS (SELECT 1 FROM manifests WHERE digest = \(child))
                    """, logger: logger) { try $0.decode(Bool.self) }.first ?? true
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
    private mutating func dropUnreferenced(_ digests: [String]) async throws {
        for digest in Set(digests).sorted() where !done.contains(digest) {
            let parsed = try Digest(parsing: digest)
            if inUse(parsed) || fleetInUse.contains(digest) {
                let size = try await tx.rows("""
                    SELECT size FROM blobs WHERE digest = \(digest) AND NOT pinned
                      AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = \(digest))
                      AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE blob = \(digest))
                    """, logger: logger) { try $0.decode(Int64.self) }.first
                guard let size else { continue }
                // Counted as freed: it goes on a later pass, once its response ends.
                plan.skippedInUse.append(parsed)
                done.insert(digest)
                total -= size
                continue
            }
            let size = try await tx.rows("""
                DELETE FROM blobs WHERE digest = \(digest) AND NOT pinned
                  AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = \(digest))
                  AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE blob = \(digest))
                RETURNING size
                """, logger: logger) { try $0.decode(Int64.self) }.first
            guard let size else { continue }
            try await tx.run("DELETE FROM repository_blobs WHERE digest = \(digest)", logger: logger)
            plan.blobs.append(EvictionPlan.Blob(digest: parsed, size: size))
            done.insert(digest)
            total -= size
        }
    }
}
