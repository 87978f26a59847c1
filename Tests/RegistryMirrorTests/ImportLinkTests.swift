@testable import Bundles
import Foundation
import OCI
import Testing

/// A directory bundle must not reach outside itself through symbolic links (issue 10,
/// item 6): a blob linked to a secret file would be hashed and, with the right digest,
/// become a served blob. Every link target here holds exactly the bytes the layout
/// expects, so only the link itself can be the reason for a refusal.
@Suite struct ImportLinkTests {
    /// What is replaced by a link to a copy outside the layout.
    enum Linked: String, CaseIterable, Sendable {
        case blobFile, sha256Folder, blobsFolder, indexFile, layoutFile
    }

    /// A layout under the harness holding one image, tagged `docker.io/test/app:v1`.
    static func taggedImage(in h: ImportHarness, layers: [Int]) throws -> (LayoutFixture, (manifest: Descriptor, blobs: [Descriptor])) {
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: layers)
        try layout.add(image.manifest, refName: "docker.io/test/app:v1")
        return (layout, image)
    }

    @Test("a directory layout with a link to outside is refused, naming the link, and nothing is stored", arguments: Linked.allCases)
    func linkToOutsideIsRefused(_ linked: Linked) async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let (layout, image) = try Self.taggedImage(in: h, layers: [1000, 2000])
        let victim = image.blobs[2]
        let inside: String = switch linked {
        case .blobFile: layout.path(of: victim.digest)
        case .sha256Folder: layout.root + "/blobs/sha256"
        case .blobsFolder: layout.root + "/blobs"
        case .indexFile: layout.root + "/index.json"
        case .layoutFile: layout.root + "/oci-layout"
        }
        let outside = h.dir.path + "/outside-\(linked.rawValue)"
        try FileManager.default.moveItem(atPath: inside, toPath: outside)
        try FileManager.default.createSymbolicLink(atPath: inside, withDestinationPath: outside)

        do {
            let imported = try await h.importer.importBundle(at: layout.root)
            Issue.record("a layout with \(inside) linked to \(outside) was imported: \(imported.map(\.reference))")
        } catch {
            #expect(error.message.contains(inside), "the error does not name the link: \(error.message)")
            #expect(error.message.contains("symbolic link"), "\(error.message)")
        }
        #expect(h.storedBlobs.isEmpty, "a refused import stored \(h.storedBlobs)")
        #expect(try await h.data.index.listing().isEmpty)
    }

    @Test("a blob linked to another file inside the layout is refused too: links are not followed at all")
    func linkInsideIsRefused() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let (layout, image) = try Self.taggedImage(in: h, layers: [1000])
        let victim = layout.path(of: image.blobs[1].digest)
        try FileManager.default.moveItem(atPath: victim, toPath: layout.root + "/moved")
        try FileManager.default.createSymbolicLink(atPath: victim, withDestinationPath: "../../moved")
        await #expect { try await h.importer.importBundle(at: layout.root) } throws: { error in
            (error as? BundleError)?.message.contains(victim) == true
        }
        #expect(h.storedBlobs.isEmpty)
    }

    @Test("a docker save folder whose layer links outside it is refused, naming the layer; links inside still work")
    func dockerFolderLinkToOutsideIsRefused() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: ["busybox:1"])
        // The third layer is already a link to the first, inside the folder; point it outside instead.
        let linked = archive.root + "/" + archive.layerFiles[2]
        let outside = h.dir.path + "/outside-layer.tar"
        try FileManager.default.copyItem(atPath: archive.root + "/" + archive.layerFiles[0], toPath: outside)
        try FileManager.default.removeItem(atPath: linked)
        try FileManager.default.createSymbolicLink(atPath: linked, withDestinationPath: outside)
        do {
            _ = try await h.importer.importBundle(at: archive.root)
            Issue.record("a docker save folder with \(linked) linked to \(outside) was imported")
        } catch {
            #expect(error.message.contains(linked), "the error does not name the link: \(error.message)")
            #expect(error.message.contains("outside the bundle"), "\(error.message)")
        }
        #expect(h.storedBlobs.isEmpty, "a refused import stored \(h.storedBlobs)")
    }

    @Test("a docker save folder whose manifest.json is a link is refused, naming it")
    func dockerManifestLinkIsRefused() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: ["busybox:1"])
        let linked = archive.root + "/manifest.json"
        let outside = h.dir.path + "/outside-manifest.json"
        try FileManager.default.moveItem(atPath: linked, toPath: outside)
        try FileManager.default.createSymbolicLink(atPath: linked, withDestinationPath: outside)
        await #expect { try await h.importer.importBundle(at: archive.root) } throws: { error in
            (error as? BundleError)?.message.contains("\(linked) is a symbolic link") == true
        }
        #expect(h.storedBlobs.isEmpty, "a refused import stored \(h.storedBlobs)")
    }
}
