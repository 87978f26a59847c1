import Foundation
@testable import MetadataIndex
import Testing

/// Query plans that keep index work proportional to what it touches, not to the cache's size
/// (bench/scale.sh measures the same at 1M blobs).
@Suite struct IndexScaleTests {
    /// The plan of `sql` on an index at `path` (migrated by opening a store there first).
    func plan(_ path: String, _ sql: String, _ bindings: [SQLValue] = [.text("sha256:x")]) throws -> String {
        let db = try SQLiteConnection(path: path, readOnly: true)
        var details: [String] = []
        try db.query("EXPLAIN QUERY PLAN " + sql, bindings) { details.append($0.text(3)) }
        return details.joined(separator: "; ")
    }

    @Test func evictionFindsAnImagesTagsThroughAnIndex() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/index.sqlite"
        let index = try SQLiteMetadataStore(path: path)
        #expect(try await index.schemaVersion() == 4)
        // The three statements eviction runs per evicted image or child on tags.
        for sql in [
            "DELETE FROM tags WHERE digest = ?",
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE t.digest = ?",
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM tags WHERE digest = ?1)",
        ] {
            let plan = try plan(path, sql)
            #expect(plan.contains("tags_digest"), "\(sql): \(plan)")
            #expect(!plan.contains("SCAN t"), "\(sql): \(plan)")
        }
    }

    /// The pass reads candidates in LRU order from the covering `blobs_lru` index and stops at
    /// the cap: no scan of `blobs`, no sort of every candidate.
    @Test func evictionReadsCandidatesInOrderFromAnIndex() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/index.sqlite"
        _ = try SQLiteMetadataStore(path: path)
        let plan = try plan(path, EvictionPass.candidates, [.integer(0), .text(""), .integer(512)])
        #expect(plan.contains("COVERING INDEX blobs_lru"), "\(plan)")
        #expect(!plan.contains("SCAN"), "\(plan)")
        #expect(!plan.contains("TEMP B-TREE"), "\(plan)")
    }
}
