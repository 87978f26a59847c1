import Foundation
import Mirror
import OCI
import Testing

@Suite struct VerifyTests {
    @Test func findsCorruptAndMissingBlobsAndRepairs() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [4000, 5000])
        try layout.add(image.manifest, refName: "docker.io/test/app:v1")
        _ = try await h.importer.importBundle(at: layout.root)
        let verifier = StoreVerifier(store: h.data.store, index: h.data.index)
        await #expect(try verifier.run(repair: false).isClean)
        await #expect(try verifier.run(repair: false).checked == 4, "config, two layers, manifest")

        // Flip a byte in one layer; delete another.
        let corrupt = image.blobs[1].digest, lost = image.blobs[2].digest
        let path = h.data.store.path(of: corrupt)
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[10] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try h.data.store.delete(lost)

        let found = try await verifier.run(repair: false)
        #expect(found.corrupt.map(\.digest) == [corrupt])
        #expect(found.missing == [lost])
        #expect(h.data.store.size(of: corrupt) != nil, "without repair nothing is removed")

        let repaired = try await verifier.run(repair: true)
        #expect(repaired.removed == [corrupt])
        #expect(h.data.store.size(of: corrupt) == nil)
        await #expect(try verifier.run(repair: false).isClean, "after repair the index matches the store")
    }
}
