import ContentStore
import Foundation
import OCI
import Synchronization
import Testing

/// A download to a remote store (S3) runs at the upstream's pace: the spool or the tier's file
/// takes the bytes and is verified at once, and the upload follows from that file.
@Suite struct RemoteFeedTests {
    @Test(arguments: [false, true])
    func aDownloadIsNotHeldToTheUploadsPace(tiered: Bool) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let remote = try GatedStore(root: dir.path + "/remote")
        defer { remote.open() }
        let store: any BlobStore = tiered
            ? try TieredStore(remote: remote, localRoot: dir.path + "/tier", maxBytes: 64 << 20)
            : try SpoolingStore(inner: remote, spoolDirectory: dir.path + "/spool")
        let bytes = (0..<(5 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        // The remote writer takes nothing while the gate is shut; every write still returns.
        for start in stride(from: 0, to: bytes.count, by: 1 << 20) {
            try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[start..<start + (1 << 20)])) }
        }
        try await writer.verify()
        let file = try #require(try writer.openForReading())
        #expect(try file.read(at: 0, maxLength: bytes.count) == bytes, "the local copy lacks bytes the download wrote")
        #expect(remote.received < Int64(bytes.count), "the upload was not behind")

        let committed = Mutex(false)
        async let commit: Void = {
            try await writer.commit()
            committed.withLock { $0 = true }
        }()
        try await Task.sleep(for: .milliseconds(200))
        let early = committed.withLock { $0 }
        #expect(!early, "commit returned before the remote store had every byte")
        remote.open()
        try await commit
        #expect(remote.received == Int64(bytes.count))
        #expect(try await remote.inner.read(digest, limit: bytes.count) == bytes)
        #expect(await store.size(of: digest) == Int64(bytes.count))
    }

    @Test func aFailingUploadStopsTheDownloadAndLeavesNothing() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let remote = try GatedStore(root: dir.path + "/remote", failAfter: 1 << 20)
        remote.open()
        let store = try SpoolingStore(inner: remote, spoolDirectory: dir.path + "/spool")
        let bytes = [UInt8](repeating: 7, count: 8 << 20)
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        var failure: StoreError?
        do throws(StoreError) {
            for start in stride(from: 0, to: bytes.count, by: 256 << 10) {
                try bytes.withUnsafeBytes { buffer in
                    Result { () throws(StoreError) in try writer.write(UnsafeRawBufferPointer(rebasing: buffer[start..<start + (256 << 10)])) }
                }.get()
                // Let the feed catch up, so the failure can reach a later write.
                try? await Task.sleep(for: .milliseconds(20))
            }
            try await writer.commit()
        } catch {
            failure = error
        }
        #expect(failure?.message.contains("the remote store broke") == true, "\(String(describing: failure))")
        writer.abort()
        #expect(await store.size(of: digest) == nil)
        #expect(try await remote.inner.allDigests().isEmpty)
    }
}

/// A file-system store behind a gate, standing in for a slow or failing bucket: its writers
/// have no local file (as S3's have none) and block until `open()`.
final class GatedStore: BlobStore {
    let inner: FileSystemStore
    private let gate = DispatchSemaphore(value: 0)
    private let receivedBytes = Atomic<Int64>(0)
    let failAfter: Int64?

    init(root: String, failAfter: Int64? = nil) throws {
        inner = try FileSystemStore(root: root)
        self.failAfter = failAfter
    }

    var received: Int64 { receivedBytes.load(ordering: .acquiring) }

    /// Lets every writer through, now and later.
    func open() {
        for _ in 0..<1000 { gate.signal() }
    }

    fileprivate func pass(_ count: Int) throws(StoreError) {
        gate.wait()
        gate.signal()
        let total = receivedBytes.add(Int64(count), ordering: .acquiringAndReleasing).newValue
        if let failAfter, total > failAfter { throw StoreError(.io, "the remote store broke") }
    }

    func size(of digest: Digest) async -> Int64? { inner.size(of: digest) }
    func modificationDate(of digest: Digest) async -> Date? { await inner.modificationDate(of: digest) }
    func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? { try await inner.openBlob(digest) }
    func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] { try await inner.read(digest, limit: limit) }
    func delete(_ digest: Digest) async throws(StoreError) { try await inner.delete(digest) }
    func allDigests() async throws(StoreError) -> [Digest] { try await inner.allDigests() }
    func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        GatedWriter(inner: try inner.makeFileWriter(expecting: digest, size: size), store: self)
    }
}

private final class GatedWriter: BlobWriter, @unchecked Sendable {
    let inner: FileBlobWriter
    let store: GatedStore

    init(inner: FileBlobWriter, store: GatedStore) {
        self.inner = inner
        self.store = store
    }

    var digest: Digest { inner.digest }
    var bytesWritten: Int64 { inner.bytesWritten }
    func openForReading() throws(StoreError) -> ReadableFile? { nil }
    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        try store.pass(buffer.count)
        try inner.write(buffer)
    }
    func verify() async throws(StoreError) { try inner.verify() }
    func commit() async throws(StoreError) { try await inner.commit() }
    func abort() { inner.abort() }
}
