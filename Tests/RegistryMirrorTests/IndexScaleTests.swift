import Foundation
@testable import MetadataIndex
import Testing

/// Query plans that keep index work proportional to what it touches, not to the cache's size
/// (bench/scale.sh measures the same at 1M blobs).
@Suite struct IndexScaleTests {
    func plan(_ index: MetadataIndex, _ sql: String) throws -> String {
        var details: [String] = []
        try index.db.query("EXPLAIN QUERY PLAN " + sql, [.text("sha256:x")]) { details.append($0.text(3)) }
        return details.joined(separator: "; ")
    }

    @Test func evictionFindsAnImagesTagsThroughAnIndex() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let index = try MetadataIndex(path: dir.path + "/index.sqlite")
        #expect(try index.schemaVersion() == 3)
        // The three statements eviction runs per evicted image or child on tags.
        for sql in [
            "DELETE FROM tags WHERE digest = ?",
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE t.digest = ?",
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM tags WHERE digest = ?1)",
        ] {
            let plan = try plan(index, sql)
            #expect(plan.contains("tags_digest"), "\(sql): \(plan)")
            #expect(!plan.contains("SCAN t"), "\(sql): \(plan)")
        }
    }
}
