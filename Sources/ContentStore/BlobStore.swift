import Foundation
import OCI

/// Where blob bytes live. Blobs include manifests and indexes: everything is content-addressed.
///
/// Called by the mirror core (reads, fills, eviction) and the CLI. The protocol names no file
/// and no path, so a store whose bytes are not on this machine (an S3-compatible bucket) can
/// conform: reads hand out a `BlobReader` (bytes as buffers; a local file only where there is
/// one), and a write is a `BlobWriter` that verifies before it publishes, as a multipart
/// upload completes only after its parts were checked.
///
/// Every implementation keeps two promises, which `BlobStoreConformance` in the tests checks:
/// - nothing is visible (to `size`, `openBlob`, `read`, `allDigests`) until its digest and size
///   were verified, so a reader never sees a partial or wrong blob;
/// - a reader opened before a `delete` can still read the whole blob, so a response that
///   opened it before sending its head can always finish.
public protocol BlobStore: Sendable {
    /// Size of a stored blob, or nil when absent.
    func size(of digest: Digest) async -> Int64?
    /// When a stored blob was last written, or nil when absent (for sweeping unindexed blobs).
    func modificationDate(of digest: Digest) async -> Date?
    /// Opens a stored blob for reading, or nil when absent.
    func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)?
    /// Starts a verified write. Nothing is visible until `commit()` succeeds.
    func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter
    /// Reads a whole blob into memory; refuses one larger than `limit`.
    func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8]
    /// Removes a blob. Readers that already opened it keep reading it.
    func delete(_ digest: Digest) async throws(StoreError)
    /// Every stored digest, for verify and garbage collection.
    func allDigests() async throws(StoreError) -> [Digest]
    /// Removes many blobs (an eviction pass); answers the ones that failed, absent ones aside.
    func delete(_ digests: [Digest]) async -> [(Digest, StoreError)]
}

extension BlobStore {
    public func delete(_ digests: [Digest]) async -> [(Digest, StoreError)] {
        var failed: [(Digest, StoreError)] = []
        for digest in digests {
            do throws(StoreError) { try await delete(digest) } catch where error.code != .notFound { failed.append((digest, error)) } catch {}
        }
        return failed
    }

    /// Writes a complete in-memory blob (a manifest) through a verified writer.
    public func write(_ bytes: [UInt8], as digest: Digest) async throws(StoreError) {
        let writer = try await makeWriter(expecting: digest, size: Int64(bytes.count))
        do throws(StoreError) {
            try bytes.withUnsafeBytes { buffer in Result { () throws(StoreError) in try writer.write(buffer) } }.get()
            try await writer.commit()
        } catch {
            writer.abort()
            throw error
        }
    }
}

/// One in-progress, verified write. Feed `write`, then `commit` or `abort`.
///
/// `write` is synchronous because its callers are threads that may block (a libcurl transfer
/// thread, an importer), never the cooperative pool: a remote store's writer buffers a part
/// and uploads it there. `verify` and `commit` are async, so the durable step (fsync and
/// rename, or completing a multipart upload) can wait without holding a pool thread.
public protocol BlobWriter: AnyObject, Sendable {
    var digest: Digest { get }
    /// Bytes written so far.
    var bytesWritten: Int64 { get }
    /// The bytes being written, readable while the write goes on, where the store keeps them in
    /// a local file (a progressive fill reads through it, and it stays readable through the
    /// publishing and any later delete); nil for a store that cannot, whose fills then need a
    /// spool of their own.
    func openForReading() throws(StoreError) -> ReadableFile?
    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError)
    /// Checks digest and size of everything written; on a mismatch the write is aborted.
    /// After it succeeds the bytes are known good, though not yet durable or visible.
    func verify() async throws(StoreError)
    /// Verifies (if not done yet), makes the data durable, and publishes the blob atomically.
    func commit() async throws(StoreError)
    /// Discards what was written. Safe to call more than once, and after `commit`.
    func abort()
}

/// Errors from a blob store.
public struct StoreError: ErrorWithOrigin, Sendable {
    public struct Code: Hashable, Sendable {
        let raw: String
        public static let notFound = Code(raw: "not found")
        public static let io = Code(raw: "i/o error")
        public static let verification = Code(raw: "verification failed")
        public static let tooLarge = Code(raw: "too large")
    }

    public let code: Code
    public let message: String
    /// Where it was raised and what it wraps (an `errno`, a transport failure), for logs.
    public let origin: ErrorOrigin

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.origin = ErrorOrigin(cause: cause, file: file, line: line)
    }

    public var description: String { "\(code.raw): \(message)" }
}
