@testable import Bundles
import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
import RegistryMirror
import Synchronization
import Testing

/// A cache with two images in it (one single-platform, one three-platform index), and an exporter.
struct ExportHarness {
    let h: ImportHarness
    let exporter: BundleExporter
    let single: (manifest: Descriptor, blobs: [Descriptor])
    let children: [(manifest: Descriptor, blobs: [Descriptor])]
    let index: Descriptor
    static let singleName = "docker.io/test/single:v1"
    static let multiName = "ghcr.io/test/multi:v1"

    init() async throws {
        h = try ImportHarness()
        var layout = try LayoutFixture(root: h.dir.path + "/layout", seed: 7)
        single = try layout.image(layers: [3000, 70_000])
        children = try [
            layout.image(layers: [500], platform: .init(os: "linux", architecture: "amd64")),
            layout.image(layers: [600], platform: .init(os: "linux", architecture: "arm64", variant: "v8")),
            layout.image(layers: [700], platform: .init(os: "linux", architecture: "arm", variant: "v7")),
        ]
        index = try layout.index(children.map(\.manifest))
        try layout.add(single.manifest, refName: Self.singleName)
        try layout.add(index, refName: Self.multiName)
        _ = try await h.importer.importBundle(at: layout.root)
        exporter = BundleExporter(store: h.data.store, index: h.data.index, logger: Logger(label: "test"))
    }

    /// A fresh data directory with an importer, beside this one.
    func freshImporter() throws -> (data: DataDirectory, importer: BundleImporter) {
        let data = try DataDirectory(path: h.dir.path + "/data-" + UUID().uuidString.prefix(8).lowercased())
        return (data, BundleImporter(store: data.store, index: data.index, logger: Logger(label: "test")))
    }

    /// Everything in the parent of `output` whose name starts with `output`'s name (the bundle and any temporary).
    func leftovers(of output: String) -> [String] {
        let name = URL(fileURLWithPath: output).lastPathComponent
        return ((try? FileManager.default.contentsOfDirectory(atPath: h.dir.path)) ?? []).filter { $0.hasPrefix(name) }
    }
}

/// Records progress events (they may come from any thread).
final class EventLog: Sendable {
    private let events = Mutex<[TransferEvent]>([])
    var handler: ProgressHandler { { [self] event in events.withLock { $0.append(event) } } }
    var all: [TransferEvent] { events.withLock { $0 } }
    var finishedBlobs: [Digest] {
        all.compactMap { if case .blobFinished(_, let digest, _, false) = $0 { return digest } else { return nil } }
    }
}

@Suite struct TarWriterTests {
    @Test func writtenArchiveReadsBackWithTarReaderAndGNUTar() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var generator = SeededGenerator(seed: 3)
        let longName = "blobs/sha512/" + String(repeating: "ab", count: 64)  // 141 bytes: needs a PAX path
        let files: [(String, [UInt8])] = [
            ("oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8)),
            ("blobs/sha256/empty", []),
            ("blobs/sha256/one", [7]),
            ("blobs/sha256/block", (0..<512).map { _ in UInt8.random(in: 0...255, using: &generator) }),
            ("blobs/sha256/block-and-one", (0..<513).map { _ in UInt8.random(in: 0...255, using: &generator) }),
            ("blobs/sha256/big", (0..<((1 << 20) + 3)).map { _ in UInt8.random(in: 0...255, using: &generator) }),
            (longName, Array("long".utf8)),
        ]
        let path = dir.path + "/out.tar"
        var writer = try TarWriter(creating: path)
        try writer.addDirectory("blobs")
        for (name, bytes) in files { try writer.addFile(name, bytes: bytes) }
        try writer.finish()
        writer.close()
        #expect(throws: BundleError.self) { _ = try TarWriter(creating: path) }

        var reader = try TarReader(path: path)
        defer { reader.close() }
        var read: [(String, [UInt8])] = []
        try reader.forEach { (entry, pump) throws(BundleError) in
            var bytes: [UInt8] = []
            try pump { (chunk) throws(BundleError) in bytes.append(contentsOf: chunk) }
            read.append((entry.path, bytes))
        }
        #expect(read.map(\.0) == files.map(\.0))
        #expect(read.map(\.1) == files.map(\.1))

        // GNU tar agrees, long name and directory included.
        let list = Process()
        list.executableURL = URL(fileURLWithPath: "/bin/tar")
        list.arguments = ["-tf", path]
        let pipe = Pipe()
        list.standardOutput = pipe
        try list.run()
        let listed = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        list.waitUntilExit()
        #expect(list.terminationStatus == 0)
        #expect(listed.split(separator: "\n").map(String.init) == ["blobs/"] + files.map(\.0))
    }

    @Test func sizesFrom8GiBUseBase256() throws {
        let size: Int64 = 10 << 30
        let header = TarWriter.header(name: "blobs/sha256/x", size: size, type: UInt8(ascii: "0"), mode: 0o644)
        try TarReader.checkChecksum(header)
        #expect(try TarReader.number(header[124..<136]) == size)
        #expect(header[124] == 0x80)
        let small = TarWriter.header(name: "x", size: TarWriter.maxOctalSize, type: UInt8(ascii: "0"), mode: 0o644)
        #expect(try TarReader.number(small[124..<136]) == TarWriter.maxOctalSize)
        #expect(small[124] == UInt8(ascii: "7"), "up to 8 GiB - 1 stays octal")
    }

    @Test func paxRecordLengthCountsItself() {
        for length in [1, 90, 95, 200] {
            let record = TarWriter.paxRecord("path", String(repeating: "a", count: length))
            let prefix = record.prefix { $0 != UInt8(ascii: " ") }
            #expect(Int(String(decoding: prefix, as: UTF8.self)) == record.count)
        }
    }
}

@Suite struct ExportTests {
    @Test func exportThenImportRoundTripsDigestsAndBytes() async throws {
        let e = try await ExportHarness()
        defer { e.h.dir.remove() }
        for output in [e.h.dir.path + "/bundle.tar", e.h.dir.path + "/bundle-dir"] {
            let events = EventLog()
            let summary = try await e.exporter.export(["test/single:v1", "ghcr.io/test/multi:v1"], to: output,
                                                options: .init(progress: events.handler))
            #expect(summary.images.map(\.name) == [ExportHarness.singleName, ExportHarness.multiName])
            #expect(summary.images[1].platformsWritten == 3 && summary.images[1].platformsListed == 3)
            // Single: manifest, config, 2 layers. Index: itself + 3 × (manifest, config, layer).
            #expect(summary.blobs == 4 + 10)
            #expect(Set(events.finishedBlobs).count == summary.blobs, "one blobFinished per blob written")
            #expect(e.leftovers(of: output) == [URL(fileURLWithPath: output).lastPathComponent], "no temporary left beside the bundle")

            let fresh = try e.freshImporter()
            let imported = try await fresh.importer.importBundle(at: output)
            #expect(imported.map(\.reference.description) == [ExportHarness.singleName, ExportHarness.multiName])
            #expect(imported.map(\.digest) == [e.single.manifest.digest, e.index.digest])
            #expect(try Set(fresh.data.store.allDigests()) == Set(e.h.data.store.allDigests()))
            for digest in try e.h.data.store.allDigests() {
                #expect(try fresh.data.store.read(digest, limit: 1 << 20) == e.h.data.store.read(digest, limit: 1 << 20))
            }
            #expect(try await fresh.data.index.listing().map(\.digest) == e.h.data.index.listing().map(\.digest))
        }
    }

    @Test func indexJSONNamesFullReferencesAndKeepsStoredMediaTypes() async throws {
        let e = try await ExportHarness()
        defer { e.h.dir.remove() }
        let output = e.h.dir.path + "/out"
        _ = try await e.exporter.export(["test/single:v1", "ghcr.io/test/multi@\(e.index.digest)"], to: output)
        let index = try JSONDecoder().decode(ImageIndex.self, from: Data(contentsOf: URL(fileURLWithPath: output + "/index.json")))
        #expect(index.schemaVersion == 2 && index.mediaType == MediaType.ociIndex)
        #expect(index.manifests.map(\.digest) == [e.single.manifest.digest, e.index.digest])
        #expect(index.manifests.map(\.mediaType) == [MediaType.ociManifest, MediaType.ociIndex])
        #expect(index.manifests.map(\.size) == [e.single.manifest.size, e.index.size])
        #expect(index.manifests.map { $0.annotations?[Descriptor.refNameAnnotation] } == [
            ExportHarness.singleName, "ghcr.io/test/multi@\(e.index.digest)",
        ])
        #expect(try Data(contentsOf: URL(fileURLWithPath: output + "/oci-layout")) == Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
    }

    @Test func unknownReferencesAndExistingOutputsAreRefused() async throws {
        let e = try await ExportHarness()
        defer { e.h.dir.remove() }
        let output = e.h.dir.path + "/out.tar"
        for missing in ["test/single:v2", "docker.io/test/other:v1", "ghcr.io/test/single:v1", "test/single@\(e.index.digest)"] {
            do {
                _ = try await e.exporter.export([missing], to: output)
                Issue.record("exported \(missing), which is not cached")
            } catch {
                #expect(error.message.contains(missing) && error.message.contains("registry-mirror seed"), "\(error.message)")
            }
        }
        #expect(e.leftovers(of: output).isEmpty)

        try Data("x".utf8).write(to: URL(fileURLWithPath: output))
        await #expect(throws: BundleError.self) { try await e.exporter.export(["test/single:v1"], to: output) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: output)) == Data("x".utf8), "an existing file is left alone")

        let nonEmpty = e.h.dir.path + "/full"
        try FileManager.default.createDirectory(atPath: nonEmpty, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: nonEmpty + "/keep"))
        await #expect(throws: BundleError.self) { try await e.exporter.export(["test/single:v1"], to: nonEmpty) }
        let empty = e.h.dir.path + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        _ = try await e.exporter.export(["test/single:v1"], to: empty)
        #expect(FileManager.default.fileExists(atPath: empty + "/index.json"), "an empty directory is filled")
    }

    @Test func platformSelectionWithChildrenMissingFromTheCache() async throws {
        let e = try await ExportHarness()
        defer { e.h.dir.remove() }
        // arm64: manifest cached, layer gone (as after a `skopeo inspect`); arm/v7: nothing cached.
        try e.h.data.store.delete(e.children[1].blobs[1].digest)
        for blob in [e.children[2].manifest] + e.children[2].blobs { try e.h.data.store.delete(blob.digest) }
        var n = 0
        func output() async -> String { n += 1; return e.h.dir.path + "/out\(n).tar" }

        // Default: the one complete instance, under the byte-exact index.
        let cached = await output()
        let summary = try await e.exporter.export([ExportHarness.multiName], to: cached)
        #expect(summary.images[0].platformsWritten == 1 && summary.images[0].platformsListed == 3)
        let fresh = try e.freshImporter()
        let imported = try await fresh.importer.importBundle(at: cached)
        #expect(imported[0].digest == e.index.digest)
        #expect(imported[0].platformsPresent == 1 && imported[0].platformsListed == 3)
        #expect(fresh.data.store.size(of: e.children[0].blobs[1].digest) != nil)
        #expect(fresh.data.store.size(of: e.children[1].manifest.digest) == nil)

        // --platform linux/amd64: fine. linux/arm64 (partly cached) and linux/arm/v7: named errors.
        let amd = try await e.exporter.export([ExportHarness.multiName], to: output(), options: .init(platforms: .specific([.init(os: "linux", architecture: "amd64")])))
        #expect(amd.images[0].platformsWritten == 1)
        let cases: [(PlatformSelection, String)] = [
            (.specific([.init(os: "linux", architecture: "arm64")]), "linux/arm64/v8"),
            (.specific([.init(os: "linux", architecture: "amd64"), .init(os: "linux", architecture: "arm", variant: "v7")]), "linux/arm/v7"),
            (.specific([.init(os: "linux", architecture: "s390x")]), "linux/s390x"),
            (.all, "linux/arm64/v8"),
        ]
        for (selection, named) in cases {
            let path = await output()
            do {
                _ = try await e.exporter.export([ExportHarness.multiName], to: path, options: .init(platforms: selection))
                Issue.record("export with \(selection) succeeded")
            } catch {
                #expect(error.message.contains(named), "\(selection): \(error.message)")
            }
            #expect(e.leftovers(of: path).isEmpty, "a refused export leaves nothing")
        }

        // Nothing of an index cached: an error even by default.
        try e.h.data.store.delete(e.children[0].manifest.digest)
        await #expect(throws: BundleError.self) { try await e.exporter.export([ExportHarness.multiName], to: output()) }
    }

    @Test func corruptCachedBlobFailsTheExportAndLeavesNoOutput() async throws {
        let e = try await ExportHarness()
        defer { e.h.dir.remove() }
        let victim = e.single.blobs[2]  // the 70 000-byte layer, same size after the flip
        let path = e.h.data.store.path(of: victim.digest)
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[65_000] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        for output in [e.h.dir.path + "/bad.tar", e.h.dir.path + "/bad-dir"] {
            do {
                _ = try await e.exporter.export([ExportHarness.multiName, "test/single:v1"], to: output)
                Issue.record("a corrupt cache was exported")
            } catch {
                #expect(error.message.contains(victim.digest.description), "\(error.message)")
                #expect(error.message.contains("verify --repair"), "\(error.message)")
            }
            #expect(e.leftovers(of: output).isEmpty, "left behind: \(e.leftovers(of: output))")
        }

        // A corrupt manifest is caught before anything is written.
        let manifestPath = e.h.data.store.path(of: e.children[0].manifest.digest)
        var manifest = try Array(Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        manifest[manifest.count - 2] = UInt8(ascii: " ")
        try Data(manifest).write(to: URL(fileURLWithPath: manifestPath))
        do {
            _ = try await e.exporter.export([ExportHarness.multiName], to: e.h.dir.path + "/bad2.tar", options: .init(platforms: .all))
            Issue.record("a corrupt manifest was exported")
        } catch {
            #expect(error.message.contains(e.children[0].manifest.digest.description), "\(error.message)")
        }
    }
}

// MARK: - docker save archives

/// Writes a docker-save archive folder as docker before 25 did: `<id>/layer.tar` per layer (a
/// repeated layer as a symlink to the first), `<config hex>.json`, manifest.json, repositories.
/// The second layer is gzip-compressed (docker never does, other writers may).
struct DockerArchiveFixture {
    let root: String
    let config: Digest
    /// Layer files as stored (the gzip one compressed), in manifest order.
    let layers: [Digest]
    let diffIDs: [Digest]
    /// `<id>/layer.tar`, in manifest order.
    let layerFiles: [String]

    init(root: String, repoTags: [String]?, wrongDiffID: Bool = false) throws {
        self.root = root
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var generator = SeededGenerator(seed: 11)
        func layerTar(_ name: String, size: Int) throws -> [UInt8] {
            let path = root + "/scratch.tar"
            var writer = try TarWriter(creating: path)
            try writer.addFile(name, bytes: (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) })
            try writer.finish()
            writer.close()
            defer { try? FileManager.default.removeItem(atPath: path) }
            return try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let first = try layerTar("a.bin", size: 40_000)
        let second = try layerTar("b.bin", size: 90_000)
        let secondGzip = try Self.gzip(second, scratch: root + "/scratch")
        #expect(secondGzip.prefix(2) == [0x1F, 0x8B])
        let ids = ["1111", "2222", "3333"].map { DigestHasher.digest(of: Array($0.utf8)).hex }
        for id in ids { try FileManager.default.createDirectory(atPath: root + "/" + id, withIntermediateDirectories: true) }
        try Data(first).write(to: URL(fileURLWithPath: root + "/\(ids[0])/layer.tar"))
        try Data(secondGzip).write(to: URL(fileURLWithPath: root + "/\(ids[1])/layer.tar"))
        try FileManager.default.createSymbolicLink(atPath: root + "/\(ids[2])/layer.tar", withDestinationPath: "../\(ids[0])/layer.tar")
        for id in ids { try Data("1.0".utf8).write(to: URL(fileURLWithPath: root + "/\(id)/VERSION")) }

        layerFiles = ids.map { "\($0)/layer.tar" }
        let firstDigest = DigestHasher.digest(of: first)
        layers = [firstDigest, DigestHasher.digest(of: secondGzip), firstDigest]
        diffIDs = [firstDigest, DigestHasher.digest(of: second), firstDigest]
        // The classic mistake: the compressed digest where the uncompressed one belongs.
        let listed = wrongDiffID ? [diffIDs[0], layers[1], diffIDs[2]] : diffIDs
        let configJSON = #"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[\#(listed.map { "\"\($0)\"" }.joined(separator: ","))]}}"#
        config = DigestHasher.digest(of: Array(configJSON.utf8))
        try Data(configJSON.utf8).write(to: URL(fileURLWithPath: root + "/\(config.hex).json"))

        let tags = repoTags.map { "[" + $0.map { "\"\($0)\"" }.joined(separator: ",") + "]" } ?? "null"
        let manifest = #"[{"Config":"\#(config.hex).json","RepoTags":\#(tags),"Layers":[\#(ids.map { "\"\($0)/layer.tar\"" }.joined(separator: ","))]}]"#
        try Data(manifest.utf8).write(to: URL(fileURLWithPath: root + "/manifest.json"))
        try Data(#"{"busybox":{"1":"\#(ids[2])"}}"#.utf8).write(to: URL(fileURLWithPath: root + "/repositories"))
    }

    static func gzip(_ bytes: [UInt8], scratch: String) throws -> [UInt8] {
        try Data(bytes).write(to: URL(fileURLWithPath: scratch))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/gzip")
        process.arguments = ["-n", "-f", scratch]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        defer { try? FileManager.default.removeItem(atPath: scratch + ".gz") }
        return try Array(Data(contentsOf: URL(fileURLWithPath: scratch + ".gz")))
    }
}

@Suite struct DockerArchiveImportTests {
    @Test func importsTarAndDirectoryAsOCIImagesWithCheckedDiffIDs() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: ["busybox:1", "registry.example:5000/team/app:2"])
        let tar = try h.tar(archive.root)
        let events = EventLog()
        let imported = try await h.importer.importBundle(at: tar, options: .init(progress: events.handler))
        #expect(imported.map(\.reference.description) == ["docker.io/library/busybox:1", "registry.example:5000/team/app:2"])
        #expect(imported[0].digest == imported[1].digest)
        #expect(imported[0].mediaType == MediaType.ociManifest)

        let busybox = RepositoryKey(upstream: "docker.io", name: try RepositoryName(parsing: "library/busybox"))
        let tag = try #require(try await h.data.index.tag(busybox, Tag(parsing: "1")))
        let bytes = try h.data.store.read(tag.digest, limit: 1 << 20)
        #expect(DigestHasher.digest(of: bytes) == tag.digest)
        let manifest = try ManifestDocument(bytes: bytes)
        #expect(manifest.mediaType == MediaType.ociManifest)
        #expect(manifest.config?.digest == archive.config)
        #expect(manifest.config?.mediaType == "application/vnd.oci.image.config.v1+json")
        #expect(manifest.layers.map(\.digest) == archive.layers)
        #expect(manifest.layers.map(\.mediaType) == [
            "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar",
        ])
        for layer in manifest.layers { #expect(h.data.store.size(of: layer.digest) == layer.size) }
        #expect(try await h.data.index.isLinked(busybox, archive.layers[1]))
        // Config, two distinct layers, the manifest made for them; nothing else was kept.
        #expect(h.storedBlobs.count == 4)
        #expect(Set(events.finishedBlobs) == Set([archive.config, archive.layers[0], archive.layers[1], tag.digest]))

        // The same archive extracted: the same manifest digest.
        let again = try ImportHarness()
        defer { again.dir.remove() }
        let fromDirectory = try await again.importer.importBundle(at: archive.root)
        #expect(fromDirectory.map(\.digest) == imported.map(\.digest))
    }

    @Test func wrongDiffIDsRefuseTheArchive() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: ["busybox:1"], wrongDiffID: true)
        for path in [try h.tar(archive.root), archive.root] {
            do {
                _ = try await h.importer.importBundle(at: path)
                Issue.record("an archive with wrong diff_ids was imported")
            } catch {
                #expect(error.message.contains("diff_ids"), "\(error.message)")
                #expect(error.message.contains(archive.diffIDs[1].description), "\(error.message)")
            }
            #expect(h.storedBlobs.isEmpty)
            #expect(try await h.data.index.listing().isEmpty)
        }
    }

    @Test func untaggedImagesNeedAReference() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: nil)
        do {
            _ = try await h.importer.importBundle(at: archive.root)
            Issue.record("an untagged image was imported without --as")
        } catch {
            #expect(error.message.contains("--as"), "\(error.message)")
        }
        #expect(h.storedBlobs.isEmpty)
        let imported = try await h.importer.importBundle(at: archive.root, options: .init(reference: "team/app:7"))
        #expect(imported.map(\.reference.description) == ["docker.io/team/app:7"])
    }

    @Test func aTarMissingALayerIsRefused() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let archive = try DockerArchiveFixture(root: h.dir.path + "/saved", repoTags: ["busybox:1"])
        try FileManager.default.removeItem(atPath: archive.root + "/" + archive.layerFiles[1])
        for path in [try h.tar(archive.root), archive.root] {
            do {
                _ = try await h.importer.importBundle(at: path)
                Issue.record("an archive without one of its layers was imported")
            } catch {
                #expect(error.message.contains(archive.layerFiles[1]), "\(error.message)")
            }
            #expect(h.storedBlobs.isEmpty)
        }
    }

    @Test func ociLayoutWinsOverManifestJSONAndContainerdNamesAreUsed() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        var layout = try LayoutFixture(root: h.dir.path + "/layout")
        let image = try layout.image(layers: [100])
        // As docker 25 writes it: a bare tag in ref.name, the full name beside it, and a manifest.json.
        var entry = image.manifest
        entry.platform = nil
        entry.annotations = [Descriptor.refNameAnnotation: "3", BundleExporter.containerdNameAnnotation: "docker.io/library/alpine:3"]
        try JSONEncoder().encode(ImageIndex(manifests: [entry])).write(to: URL(fileURLWithPath: layout.root + "/index.json"))
        try Data("not docker's".utf8).write(to: URL(fileURLWithPath: layout.root + "/manifest.json"))
        for path in [layout.root, try h.tar(layout.root)] {
            let imported = try await h.importer.importBundle(at: path)
            #expect(imported.map(\.reference.description) == ["docker.io/library/alpine:3"])
            #expect(imported.map(\.digest) == [image.manifest.digest])
        }
        let renamed = try await h.importer.importBundle(at: layout.root, options: .init(reference: "team/app"))
        #expect(renamed.map(\.reference.description) == ["docker.io/team/app:3"], "--as keeps the bare tag")
    }
}
