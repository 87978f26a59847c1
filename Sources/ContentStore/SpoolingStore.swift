#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import OCI
import Synchronization

/// A store whose writers have no local file (S3), given one: each writer writes its bytes to a
/// spool file in a local directory, which `openForReading()` hands out. A download in progress
/// is then streamed to every client from the spool as it grows, exactly as from the file
/// store's `.part` file, while a `RemoteFeed` passes the same bytes on to the remote store
/// behind it, so the download is not held to the upload's pace.
///
/// A spool file is unlinked as soon as it is created: readers hold descriptors, nothing is left
/// on disk when the last one goes, and a crash leaves nothing to sweep. Reads of stored blobs
/// and everything else go straight to the inner store.
public final class SpoolingStore: BlobStore {
    public let inner: any BlobStore
    public let spoolDirectory: String
    private let counter = Atomic<Int>(0)

    /// - Parameter spoolDirectory: created if missing; on a local filesystem with room for the
    ///   downloads that run at once.
    public init(inner: any BlobStore, spoolDirectory: String) throws(StoreError) {
        self.inner = inner
        self.spoolDirectory = spoolDirectory
        do {
            try FileManager.default.createDirectory(atPath: spoolDirectory, withIntermediateDirectories: true)
        } catch {
            throw StoreError(.io, "cannot create the spool directory \(spoolDirectory)", cause: error)
        }
    }

    public func size(of digest: Digest) async -> Int64? { await inner.size(of: digest) }
    public func modificationDate(of digest: Digest) async -> Date? { await inner.modificationDate(of: digest) }
    public func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? { try await inner.openBlob(digest) }
    public func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] { try await inner.read(digest, limit: limit) }
    public func delete(_ digest: Digest) async throws(StoreError) { try await inner.delete(digest) }
    public func allDigests() async throws(StoreError) -> [Digest] { try await inner.allDigests() }
    public func delete(_ digests: [Digest]) async -> [(Digest, StoreError)] { await inner.delete(digests) }

    public func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        let writer = try await inner.makeWriter(expecting: digest, size: size)
        if try writer.openForReading() != nil { return writer }
        do {
            return try FedWriter(front: SpoolOnlyWriter(digest: digest, size: size, spool: try openSpool()), remote: writer)
        } catch {
            writer.abort()
            throw error
        }
    }

    /// A writer that keeps the bytes in a spool and nowhere else, verified against `digest`:
    /// for a fleet replica streaming a blob from the peer that downloads it, whose own upload
    /// publishes it. `commit` publishes nothing.
    public func makeSpool(expecting digest: Digest) throws(StoreError) -> any BlobWriter {
        SpoolOnlyWriter(digest: digest, spool: try openSpool())
    }

    /// A new spool file, unlinked at once.
    private func openSpool() throws(StoreError) -> ReadableFile {
        let path = "\(spoolDirectory)/\(getpid())-\(counter.add(1, ordering: .relaxed).newValue).spool"
        let fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError(.io, "create \(path): \(String(cString: strerror(errno)))") }
        unlink(path)
        return ReadableFile(descriptor: fd, size: 0)
    }
}

/// Appends to a spool file at `offset`; a second descriptor reads it meanwhile.
private func append(_ buffer: UnsafeRawBufferPointer, to spool: ReadableFile, at offset: Int64) throws(StoreError) {
    var done = 0
    while done < buffer.count {
        let n = pwrite(spool.descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
        if n < 0 {
            if errno == EINTR { continue }
            throw StoreError(.io, "write to a spool: \(String(cString: strerror(errno)))")
        }
        done += n
    }
}

/// A second descriptor of a spool, for a fill's readers.
private func reopen(_ spool: ReadableFile) throws(StoreError) -> ReadableFile {
    let fd = dup(spool.descriptor)
    guard fd >= 0 else { throw StoreError(.io, "dup of a spool: \(String(cString: strerror(errno)))") }
    return ReadableFile(descriptor: fd, size: 0)
}

/// A spool and a digest check, publishing nothing (`SpoolingStore.makeSpool`).
final class SpoolOnlyWriter: BlobWriter, @unchecked Sendable {
    // One writer at a time, as the protocol says.
    let digest: Digest
    private let spool: ReadableFile
    private var verifier: DigestVerifier?
    private(set) var bytesWritten: Int64 = 0
    private var verified = false

    init(digest: Digest, size: Int64? = nil, spool: ReadableFile) {
        self.digest = digest
        self.spool = spool
        verifier = DigestVerifier(expected: digest, expectedSize: size)
    }

    func openForReading() throws(StoreError) -> ReadableFile? { try reopen(spool) }

    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        guard verifier != nil else { throw StoreError(.io, "write to the spool of \(digest) after it finished") }
        try append(buffer, to: spool, at: bytesWritten)
        do {
            try verifier!.update(buffer)
        } catch {
            throw StoreError(.verification, error.message)
        }
        bytesWritten += Int64(buffer.count)
    }

    func verify() async throws(StoreError) {
        guard let verifier = verifier.take() else {
            if verified { return }
            throw StoreError(.io, "verify of the spool of \(digest) after it was aborted")
        }
        do {
            try verifier.verify()
        } catch {
            throw StoreError(.verification, error.message)
        }
        verified = true
    }

    func commit() async throws(StoreError) { try await verify() }
    func abort() { verifier = nil }
}
