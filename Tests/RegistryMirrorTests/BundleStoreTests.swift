@testable import Bundles
import ContentStore
import Foundation
import Logging
import OCI
import Synchronization
import Testing

/// Import and export on a store that is not the data directory's `FileSystemStore` (as a
/// fleet's bucket is not): bytes only through `BlobWriter` and `BlobReader`, no local file.
@Suite struct BundleStoreTests {
    @Test("import writes every blob through the store's writers, off the cooperative pool; export reads through its readers")
    func importAndExportThroughTheProtocol() async throws {
        let h = try ImportHarness()
        defer { h.dir.remove() }
        let store = RemoteLikeStore(inner: h.data.store)
        var layout = try LayoutFixture(root: h.dir.path + "/layout", seed: 11)
        let image = try layout.image(layers: [3000, 1_500_000])
        try layout.add(image.manifest, refName: "docker.io/test/remote:v1")
        let importer = BundleImporter(store: store, index: h.data.index, logger: Logger(label: "test"))

        // A directory layout, then (into an empty store again) a tar of it.
        for bundle in [layout.root, try h.tar(layout.root)] {
            for digest in try store.inner.allDigests() { try store.inner.delete(digest) }
            let imported = try await importer.importBundle(at: bundle)
            #expect(imported.first?.digest == image.manifest.digest)
            for blob in [image.manifest] + image.blobs { #expect(store.inner.size(of: blob.digest) == blob.size) }
            #expect(Set(store.writes.map(\.digest)).isSuperset(of: ([image.manifest] + image.blobs).map(\.digest)))
        }
        // S3's writer uploads a part in `write`: never on one of the pool's few threads.
        let inTasks = store.writes.filter(\.inTask).map(\.digest)
        #expect(inTasks.isEmpty, "writes of \(Set(inTasks)) ran inside a task, on the cooperative pool")

        let exporter = BundleExporter(store: store, index: h.data.index, logger: Logger(label: "test"))
        let output = h.dir.path + "/exported"
        _ = try await exporter.export(["docker.io/test/remote:v1"], to: output)
        for blob in [image.manifest] + image.blobs {
            let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: output + "/blobs/sha256/" + blob.digest.hex)))
            #expect(DigestHasher.digest(of: bytes) == blob.digest)
        }
        #expect(store.opened.isSuperset(of: ([image.manifest] + image.blobs).map(\.digest)), "export read around the store's readers")
    }
}

/// A store that forwards to a `FileSystemStore` but hands out no local file, and records
/// whether each write ran inside a task (on the cooperative pool).
final class RemoteLikeStore: BlobStore {
    let inner: FileSystemStore
    private let recorded = Mutex<(writes: [(digest: Digest, inTask: Bool)], opened: Set<Digest>)>(([], []))

    init(inner: FileSystemStore) { self.inner = inner }

    var writes: [(digest: Digest, inTask: Bool)] { recorded.withLock { $0.writes } }
    var opened: Set<Digest> { recorded.withLock { $0.opened } }

    func size(of digest: Digest) async -> Int64? { inner.size(of: digest) }
    func modificationDate(of digest: Digest) async -> Date? { inner.modificationDate(of: digest) }
    func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? {
        guard let reader = try inner.openBlob(digest) else { return nil }
        recorded.withLock { _ = $0.opened.insert(digest) }
        return BuffersOnlyReader(inner: reader)
    }
    func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        RecordingWriter(inner: try inner.makeWriter(expecting: digest, size: size)) { [self] inTask in
            self.recorded.withLock { $0.writes.append((digest, inTask)) }
        }
    }
    func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] { try inner.read(digest, limit: limit) }
    func delete(_ digest: Digest) async throws(StoreError) { try inner.delete(digest) }
    func allDigests() async throws(StoreError) -> [Digest] { try inner.allDigests() }
}

/// A reader with buffers only, as S3's is.
struct BuffersOnlyReader: BlobReader {
    let inner: any BlobReader
    func size() async throws -> Int64? { try await inner.size() }
    func chunks(from offset: Int64, length: Int64?) -> BlobChunks { inner.chunks(from: offset, length: length) }
    var fileRegions: FileRegionSource? { nil }
}

final class RecordingWriter: BlobWriter {
    let inner: any BlobWriter
    let record: @Sendable (_ inTask: Bool) -> Void

    init(inner: any BlobWriter, record: @escaping @Sendable (_ inTask: Bool) -> Void) {
        self.inner = inner
        self.record = record
    }

    var digest: Digest { inner.digest }
    var bytesWritten: Int64 { inner.bytesWritten }
    func openForReading() throws(StoreError) -> ReadableFile? { nil }
    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        // Inside a task means on the cooperative pool, where `write` must never run.
        record(withUnsafeCurrentTask { $0 != nil })
        try inner.write(buffer)
    }
    func verify() async throws(StoreError) { try await inner.verify() }
    func commit() async throws(StoreError) { try await inner.commit() }
    func abort() { inner.abort() }
}
