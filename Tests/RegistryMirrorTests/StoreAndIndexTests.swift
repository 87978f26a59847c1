@testable import ContentStore
import Foundation
import MetadataIndex
import Mirror
import OCI
import Synchronization
import Testing

@Suite struct FileSystemStoreTests {
    @Test("FileSystemStore passes the BlobStore conformance suite")
    func conformance() async throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let counter = Counter()
        try await BlobStoreConformance {
            try FileSystemStore(root: root.path + "/store-\(counter.next())")
        }.run()
        // Whatever the checks did, no write is left half-done on disk.
        #expect(regularFiles(under: root.path).filter { $0.hasSuffix(".part") }.isEmpty)
    }

    @Test("a store reopened after a crash mid-write shows nothing of it and sweeps its temp file")
    func crashMidWriteIsSweptOnReopen() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let bytes = [UInt8](repeating: 9, count: 10_000)
        let digest = DigestHasher.digest(of: bytes)
        // A crashed process: its temp folder holds a half-written blob and nobody holds its lock.
        do {
            let crashed = try FileSystemStore(root: dir.path)
            let writer = try crashed.makeFileWriter(expecting: digest, size: Int64(bytes.count))
            try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.prefix(4000))) }
            let leftover = dir.path + "/tmp/dead"
            try FileManager.default.createDirectory(atPath: leftover, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: leftover + "/.lock", contents: nil)
            try FileManager.default.copyItem(atPath: writer.temporaryPath, toPath: leftover + "/1.part")
            writer.abort()
        }
        let reopened = try FileSystemStore(root: dir.path)
        #expect(reopened.size(of: digest) == nil)
        #expect(try reopened.allDigests().isEmpty)
        #expect(regularFiles(under: dir.path).filter { $0.hasSuffix(".part") }.isEmpty, "a dead process's temp file survived the reopen")
    }

    @Test func verifiedWriteBecomesVisibleAtomically() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let bytes = Array("layer bytes".utf8)
        let digest = DigestHasher.digest(of: bytes)
        let writer = try store.makeFileWriter(expecting: digest, size: Int64(bytes.count))
        try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.prefix(5))) }
        #expect(store.size(of: digest) == nil, "nothing is visible before commit")
        #expect(FileManager.default.fileExists(atPath: writer.temporaryPath))
        try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.dropFirst(5))) }
        try writer.commitNow()
        #expect(store.size(of: digest) == Int64(bytes.count))
        #expect(try store.read(digest, limit: 100) == bytes)
        #expect(!FileManager.default.fileExists(atPath: writer.temporaryPath))
        #expect(store.path(of: digest) == dir.path + "/blobs/" + digest.shardedPath)
        #expect(try store.openFile(digest)?.size == Int64(bytes.count))
        #expect(try store.allDigests() == [digest])
    }

    @Test func wrongBytesNeverBecomeVisible() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let digest = DigestHasher.digest(of: Array("expected".utf8))
        let writer = try store.makeFileWriter(expecting: digest, size: 8)
        try Array("tampered".utf8).withUnsafeBytes { try writer.write($0) }
        #expect(throws: StoreError.self) { try writer.commitNow() }
        #expect(store.size(of: digest) == nil)
        #expect(!FileManager.default.fileExists(atPath: writer.temporaryPath), "the temp file is removed")
    }

    @Test func truncatedAndOverlongWritesAreRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let bytes = Array("0123456789".utf8)
        let digest = DigestHasher.digest(of: bytes)
        let short = try store.makeFileWriter(expecting: digest, size: 10)
        try bytes.withUnsafeBytes { try short.write(UnsafeRawBufferPointer(rebasing: $0.prefix(9))) }
        #expect(throws: StoreError.self) { try short.commitNow() }
        let long = try store.makeFileWriter(expecting: digest, size: 9)
        #expect(throws: StoreError.self) { try bytes.withUnsafeBytes { try long.write($0) } }
        long.abort()
        #expect(store.size(of: digest) == nil)
        #expect(regularFiles(under: dir.path + "/blobs").isEmpty)
    }

    @Test func failureHalfwayLeavesNothing() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = try FileSystemStore(root: dir.path)
        let bytes = [UInt8](repeating: 7, count: 1 << 20)
        let digest = DigestHasher.digest(of: bytes)
        do {
            let writer = try store.makeFileWriter(expecting: digest, size: Int64(bytes.count))
            try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.prefix(1000))) }
            // the writer is dropped without commit, as when a download fails
        }
        #expect(store.size(of: digest) == nil)
        #expect(regularFiles(under: dir.path).filter { $0.hasSuffix(".part") }.isEmpty)
    }

    @Test func startupSweepsDeadProcessesTempFilesOnly() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // a crashed process: a temp folder whose lock nobody holds
        let dead = dir.path + "/tmp/dead"
        try FileManager.default.createDirectory(atPath: dead, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dead + "/.lock", contents: nil)
        _ = FileManager.default.createFile(atPath: dead + "/1.part", contents: Data("partial".utf8))
        // a live process: its lock is held
        let live = dir.path + "/tmp/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        let fd = open(live + "/.lock", O_CREAT | O_RDWR, 0o600)
        defer { close(fd) }
        #expect(flock(fd, LOCK_EX | LOCK_NB) == 0)
        _ = FileManager.default.createFile(atPath: live + "/1.part", contents: Data("in flight".utf8))

        _ = try FileSystemStore(root: dir.path)
        #expect(!FileManager.default.fileExists(atPath: dead))
        #expect(FileManager.default.fileExists(atPath: live + "/1.part"))
    }
}

@Suite struct MetadataIndexTests {
    func key(_ name: String, upstream: String = "docker.io") throws -> RepositoryKey {
        RepositoryKey(upstream: upstream, name: try RepositoryName(parsing: name))
    }

    @Test func migratesAndReopens() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(try await SQLiteMetadataStore(path: dir.path + "/i.sqlite").schemaVersion() == 4)
        #expect(try await SQLiteMetadataStore(path: dir.path + "/i.sqlite").schemaVersion() == 4)
    }

    @Test func recordsAndScopesContent() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let index = try SQLiteMetadataStore(path: dir.path + "/i.sqlite")
        let a = try key("team/a"), b = try key("team/b"), other = try key("team/a", upstream: "ghcr.io")
        let layer = DigestHasher.digest(of: Array("layer".utf8))
        let manifestBytes = Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\#(layer)","size":5},"layers":[]}"#.utf8)
        let manifest = DigestHasher.digest(of: manifestBytes)
        var batch = ContentBatch()
        batch.addBlob(layer, size: 5)
        batch.addBlob(manifest, size: Int64(manifestBytes.count))
        batch.manifests.append(.init(digest: manifest, size: Int64(manifestBytes.count), document: try ManifestDocument(bytes: manifestBytes)))
        batch.link(a, manifest)
        batch.link(a, layer)
        for tag in ["v2", "v10", "latest"] { batch.tag(a, try Tag(parsing: tag), manifest, mediaType: MediaType.ociManifest, checkedAt: 42) }
        try await index.record(batch)

        let tagged = try await index.tag(a, Tag(parsing: "v2"))
        #expect(tagged?.digest == manifest && tagged?.mediaType == MediaType.ociManifest && tagged?.checkedAt == 42)
        #expect(try await index.tag(b, Tag(parsing: "v2")) == nil)
        #expect(try await index.tag(other, Tag(parsing: "v2")) == nil, "the upstream is part of the key")
        #expect(try await index.tags(a) == ["latest", "v10", "v2"])
        #expect(try await index.isLinked(a, layer))
        await #expect(try !index.isLinked(b, layer), "b never held the layer")
        #expect(try await index.repositoryExists(a))
        await #expect(try !index.repositoryExists(b))
        #expect(try await index.manifest(manifest)?.mediaType == MediaType.ociManifest)
        #expect(try await index.manifest(manifest, in: a).map { [$0.record.mediaType, "\($0.linked)"] } == [MediaType.ociManifest, "true"])
        #expect(try await index.manifest(manifest, in: b)?.linked == false, "b never held the manifest")
        #expect(try await index.manifest(layer, in: a) == nil, "a layer is not a manifest")
        #expect(try await index.totalSize(manifest) == 5 + Int64(manifestBytes.count))
        #expect(try await index.listing().map(\.tag) == ["latest", "v10", "v2"])
    }
}

@Suite struct Routing {
    let router = UpstreamRouter(names: ["ghcr.io", "quay.io"], defaultUpstream: "docker.io")

    @Test func defaultUpstreamAddsLibrary() throws {
        #expect(try router.route(path: "alpine", namespace: nil).description == "docker.io/library/alpine")
        #expect(try router.route(path: "org/app", namespace: nil).description == "docker.io/org/app")
    }

    @Test func namespaceParameterWins() throws {
        #expect(try router.route(path: "org/app", namespace: "ghcr.io").description == "ghcr.io/org/app")
        #expect(try router.route(path: "alpine", namespace: "docker.io").description == "docker.io/library/alpine")
        #expect(try router.route(path: "alpine", namespace: "registry-1.docker.io").description == "docker.io/library/alpine")
        #expect(throws: MirrorError.self) { try router.route(path: "x", namespace: "unknown.example") }
    }

    @Test func pathPrefixSelectsUpstream() throws {
        #expect(try router.route(path: "ghcr.io/org/app", namespace: nil).description == "ghcr.io/org/app")
        #expect(try router.route(path: "quay.io/a", namespace: nil).description == "quay.io/a")
        #expect(throws: MirrorError.self) { try router.route(path: "ghcr.io/Org", namespace: nil) }
    }
}

@Suite struct SQLiteMetadataStoreTests {
    @Test func passesTheMetadataStoreConformanceSuite() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let root = dir.path
        try await MetadataStoreConformance { name in try SQLiteMetadataStore(path: root + "/\(name).sqlite") }.run()
    }
}

/// Numbers for store roots, one per call.
final class Counter: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { $0 += 1; return $0 } }
}
