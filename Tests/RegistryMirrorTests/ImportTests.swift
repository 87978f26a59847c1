@testable import Bundles
import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
import RegistryMirror
import Testing

/// A data directory with an importer, for import tests.
struct ImportHarness {
    let dir: TemporaryDirectory
    let data: DataDirectory
    let importer: BundleImporter

    init() throws {
        dir = try TemporaryDirectory()
        data = try DataDirectory(path: dir.path + "/data")
        importer = BundleImporter(store: data.store, index: data.index, logger: Logger(label: "test"))
    }

    var storedBlobs: [String] { regularFiles(under: dir.path + "/data/blobs") }

    /// `tar -cf` of a layout directory, as `skopeo copy … oci-archive:` would make it.
    func tar(_ root: String) throws -> String {
        let tar = dir.path + "/bundle.tar"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/tar")
        process.arguments = ["-cf", tar, "-C", root, "."]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return tar
    }
}

@Suite struct ImportTests {
    @Test func importsImagesAndIndexesWithAllChildren() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let single = try layout.image(layers: [100, 200])
        let children = try [
            layout.image(layers: [50], platform: .init(os: "linux", architecture: "amd64")),
            layout.image(layers: [60], platform: .init(os: "linux", architecture: "arm64", variant: "v8")),
            layout.image(layers: [70], platform: .init(os: "linux", architecture: "arm", variant: "v7")),
        ]
        let index = try layout.index(children.map(\.manifest))
        try layout.add(single.manifest, refName: "docker.io/test/single:v1")
        try layout.add(index, refName: "ghcr.io/test/multi:v1")

        let imported = try await h.importer.importBundle(at: layout.root)
        #expect(imported.map(\.reference.description) == ["docker.io/test/single:v1", "ghcr.io/test/multi:v1"])
        #expect(imported[1].platformsPresent == 3 && imported[1].platformsListed == 3)

        let multi = RepositoryKey(upstream: "ghcr.io", name: try RepositoryName(parsing: "test/multi"))
        #expect(try await h.data.index.tag(multi, Tag(parsing: "v1"))?.digest == index.digest)
        #expect(try await h.data.index.children(ofIndex: index.digest).map(\.platform?.architecture) == ["amd64", "arm64", "arm"])
        for child in children {
            #expect(try await h.data.index.isLinked(multi, child.manifest.digest))
            for blob in child.blobs { #expect(try await h.data.index.isLinked(multi, blob.digest)) }
        }
        let singleKey = RepositoryKey(upstream: "docker.io", name: try RepositoryName(parsing: "test/single"))
        await #expect(try !h.data.index.isLinked(singleKey, children[0].blobs[1].digest), "repositories do not share links")
        #expect(try h.data.store.read(index.digest, limit: 1 << 20) == Array(Data(contentsOf: URL(fileURLWithPath: layout.path(of: index.digest)))))
    }

    @Test func bareTagNeedsAReference() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [10])
        try layout.add(image.manifest, refName: "v1")
        await #expect(throws: BundleError.self) { try await h.importer.importBundle(at: layout.root) }
        #expect(h.storedBlobs.isEmpty, "a refused import leaves nothing behind")
        let imported = try await h.importer.importBundle(at: layout.root, options: .init(reference: "test/app"))
        #expect(imported.first?.reference.description == "docker.io/test/app:v1")
    }

    @Test func tamperedBlobIsNamedAndNothingIsLeft() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [1000, 2000])
        try layout.add(image.manifest, refName: "docker.io/test/app:v1")
        let victim = image.blobs[2]
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: layout.path(of: victim.digest))))
        bytes[500] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: layout.path(of: victim.digest)))

        do {
            _ = try await h.importer.importBundle(at: layout.root)
            Issue.record("a tampered bundle was imported")
        } catch {
            #expect(error.message.contains(victim.digest.description))
        }
        #expect(h.storedBlobs.isEmpty)
        #expect(try await h.data.index.listing().isEmpty)
    }

    @Test func missingLayerIsIncomplete() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [10, 20])
        try layout.add(image.manifest, refName: "docker.io/test/app:v1")
        try FileManager.default.removeItem(atPath: layout.path(of: image.blobs[1].digest))
        do {
            _ = try await h.importer.importBundle(at: layout.root)
            Issue.record("an incomplete bundle was imported")
        } catch {
            #expect(error.message.contains("incomplete"))
            #expect(error.message.contains(image.blobs[1].digest.description))
        }
        #expect(h.storedBlobs.isEmpty)
    }

    @Test func indexMayLackChildrenThatWereNotExported() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let amd = try layout.image(layers: [10], platform: .init(os: "linux", architecture: "amd64"))
        let arm = try layout.image(layers: [20], platform: .init(os: "linux", architecture: "arm64"))
        let index = try layout.index([amd.manifest, arm.manifest])
        try layout.add(index, refName: "docker.io/test/multi:v1")
        for blob in [amd.manifest] + amd.blobs { try FileManager.default.removeItem(atPath: layout.path(of: blob.digest)) }
        let imported = try await h.importer.importBundle(at: layout.root)
        #expect(imported.first?.platformsPresent == 1)
        #expect(imported.first?.platformsListed == 2)
    }

    @Test func importsATarOfALayout() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [3000, 70_000])
        try layout.add(image.manifest, refName: "docker.io/test/tarred:v1")
        let tar = try h.tar(layout.root)
        let imported = try await h.importer.importBundle(at: tar)
        #expect(imported.first?.digest == image.manifest.digest)
        for blob in image.blobs { #expect(h.data.store.size(of: blob.digest) == blob.size) }
    }

    @Test func truncatedTarIsRefused() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [100_000])
        try layout.add(image.manifest, refName: "docker.io/test/tarred:v1")
        let tar = try h.tar(layout.root)
        let full = try Data(contentsOf: URL(fileURLWithPath: tar))
        try full.prefix(full.count / 2).write(to: URL(fileURLWithPath: tar))
        await #expect(throws: BundleError.self) { try await h.importer.importBundle(at: tar) }
        #expect(h.storedBlobs.isEmpty)
    }
}
