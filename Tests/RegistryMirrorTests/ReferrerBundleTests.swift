import Bundles
import Foundation
import Logging
import MetadataIndex
import OCI
import RegistryMirror
import Testing

/// Referrers and cosign tag artifacts go into a bundle beside their image and come back out.
@Suite struct ReferrerBundleTests {
    struct Signed {
        let harness: ImportHarness
        let image: Descriptor
        let referrer: Descriptor
        let cosign: Descriptor
        static let name = "docker.io/test/signed"

        init() async throws {
            harness = try ImportHarness()
            var layout = try LayoutFixture(root: harness.dir.path + "/layout", seed: 11)
            image = try layout.image(layers: [2000]).manifest
            referrer = try layout.image(layers: [40], subject: image, artifactType: "application/spdx+json").manifest
            cosign = try layout.image(layers: [30]).manifest  // cosign's kind: no subject, found by tag
            try layout.add(image, refName: "\(Self.name):v1")
            try layout.add(referrer, refName: "\(Self.name)@\(referrer.digest)")
            try layout.add(cosign, refName: "\(Self.name):sha256-\(image.digest.hex).sig")
            _ = try await harness.importer.importBundle(at: layout.root)
        }
    }

    @Test func exportCarriesReferrersAndImportRecordsThemWithTheirSubject() async throws {
        let f = try await Signed()
        defer { f.harness.dir.remove() }
        let exporter = BundleExporter(store: f.harness.data.store, index: f.harness.data.index, logger: Logger(label: "test"))
        let output = f.harness.dir.path + "/out"
        let summary = try await exporter.export(["\(Signed.name):v1"], to: output)
        let sigName = "\(Signed.name):sha256-\(f.image.digest.hex).sig"
        #expect(summary.images.map(\.name) == ["\(Signed.name):v1", sigName, "\(Signed.name)@\(f.referrer.digest)"])
        #expect(summary.images.dropFirst().allSatisfy { $0.referrerOf == f.image.digest })

        let data = try DataDirectory(path: f.harness.dir.path + "/site")
        let imported = try await BundleImporter(store: data.store, index: data.index, logger: Logger(label: "test")).importBundle(at: output)
        #expect(imported.count == 3)
        let repository = RepositoryKey(upstream: "docker.io", name: try RepositoryName(parsing: "test/signed"))
        #expect(try await data.index.referrers(repository, subject: f.image.digest).map(\.digest) == [f.referrer.digest])
        #expect(try await data.index.referrers(repository, subject: f.image.digest).first?.artifactType == "application/spdx+json")
        #expect(try await data.index.tag(repository, Tag(parsing: "sha256-\(f.image.digest.hex).sig"))?.digest == f.cosign.digest)
        // Recorded under its digest only: no tag for the OCI referrer.
        #expect(try await data.index.tags(repository).sorted() == ["sha256-\(f.image.digest.hex).sig", "v1"])
    }

    @Test func noReferrersWritesTheImageAlone() async throws {
        let f = try await Signed()
        defer { f.harness.dir.remove() }
        let exporter = BundleExporter(store: f.harness.data.store, index: f.harness.data.index, logger: Logger(label: "test"))
        let summary = try await exporter.export(["\(Signed.name):v1"], to: f.harness.dir.path + "/out", options: .init(referrers: false))
        #expect(summary.images.map(\.name) == ["\(Signed.name):v1"])
    }
}
