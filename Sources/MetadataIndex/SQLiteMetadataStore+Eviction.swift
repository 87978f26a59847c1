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
extension SQLiteMetadataStore {
    public func usage() async throws(IndexError) -> (bytes: Int64, objects: Int) {
        let usage: Usage = try await read { db throws(IndexError) in
            var out = Usage()
            try db.query("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs") { out = Usage(bytes: $0.int(0), objects: Int($0.int(1))) }
            return out
        }
        return (usage.bytes, usage.objects)
    }

    private struct Usage: Sendable {
        var bytes: Int64 = 0
        var objects = 0
    }

    public func recordAccess(_ times: [Digest: Int64]) async throws(IndexError) {
        guard !times.isEmpty else { return }
        try await write { db throws(IndexError) in
            try db.transaction { tx in
                for (digest, ms) in times {
                    try tx.run("UPDATE blobs SET last_access_ms = MAX(last_access_ms, ?) WHERE digest = ?",
                               [.integer(ms), .text(digest.description)])
                }
            }
        }
    }

    @discardableResult
    public func setPinned(_ digest: Digest, _ pinned: Bool) async throws(IndexError) -> Bool {
        try await write { db throws(IndexError) in
            try db.transaction { tx in
                var found = false
                try tx.run("UPDATE blobs SET pinned = ? WHERE digest = ?", [.integer(pinned ? 1 : 0), .text(digest.description)])
                try tx.run("SELECT 1 FROM blobs WHERE digest = ?", [.text(digest.description)]) { _ in found = true }
                return found
            }
        }
    }

    public func pinned() async throws(IndexError) -> [(digest: Digest, references: [String])] {
        let images: [EvictionPlan.Image] = try await read { db throws(IndexError) in
            var out: [EvictionPlan.Image] = []
            try db.query(
                """
                SELECT b.digest, (SELECT GROUP_CONCAT(u.name || '/' || r.name || ':' || t.name, ' ') FROM tags t
                  JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id WHERE t.digest = b.digest)
                FROM blobs b WHERE b.pinned = 1 ORDER BY b.digest
                """
            ) { row in
                out.append(EvictionPlan.Image(digest: try Digest(parsing: row.text(0)),
                                              tags: row.optionalText(1)?.split(separator: " ").map(String.init) ?? []))
            }
            return out
        }
        return images.map { ($0.digest, $0.tags) }
    }

    public func evict(toAtMost maxBytes: Int64, dryRun: Bool, inUse: @escaping @Sendable (Digest) -> Bool) async throws(IndexError) -> EvictionPlan {
        try await write { db throws(IndexError) in
            try db.transaction(commit: !dryRun) { tx in
                var pass = EvictionPass(tx: tx, maxBytes: maxBytes, inUse: inUse)
                try pass.run()
                return pass.plan
            }
        }
    }
}
