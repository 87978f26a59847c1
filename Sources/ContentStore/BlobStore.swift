#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import OCI

/// Where blob bytes live. Blobs include manifests and indexes: everything is content-addressed.
///
/// Called by the mirror core, the importer and the HTTP front. Implementations must make a
/// blob visible only after its digest and size were verified, so a reader never sees a partial
/// or wrong blob. The file-system store is the only one today; an S3-compatible one can
/// conform later (see docs/architecture.md).
public protocol BlobStore: Sendable {
    /// Size of a stored blob, or nil when absent.
    func size(of digest: Digest) -> Int64?
    /// How to read a stored blob, or nil when absent.
    func location(of digest: Digest) -> BlobLocation?
    /// Opens a stored blob for reading, or nil when absent. The open file stays readable
    /// if the blob is deleted afterwards, so a response that opened it before sending its
    /// head can always finish.
    func openBlob(_ digest: Digest) throws(StoreError) -> ReadableFile?
    /// Starts a verified write. Nothing is visible until `commit()` succeeds.
    func makeWriter(expecting digest: Digest, size: Int64?) throws(StoreError) -> any BlobWriter
    /// Reads a whole blob into memory; refuses one larger than `limit`.
    func read(_ digest: Digest, limit: Int) throws(StoreError) -> [UInt8]
    /// Removes a blob. Readers that already opened it keep their open file.
    func delete(_ digest: Digest) throws(StoreError)
    /// Every stored digest, for verify and garbage collection.
    func allDigests() throws(StoreError) -> [Digest]
}

extension BlobStore {
    /// Writes a complete in-memory blob (a manifest) through a verified writer.
    public func write(_ bytes: [UInt8], as digest: Digest) throws(StoreError) {
        let writer = try makeWriter(expecting: digest, size: Int64(bytes.count))
        do throws(StoreError) {
            try bytes.withUnsafeBytes { buffer in Result { () throws(StoreError) in try writer.write(buffer) } }.get()
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
    }
}

/// A readable stored blob.
public enum BlobLocation: Sendable, Equatable {
    /// A regular file: served zero-copy where the transport allows.
    case file(path: String, size: Int64)

    public var size: Int64 {
        switch self {
        case .file(_, let size): return size
        }
    }
}

/// An open, read-only file descriptor, closed when the last holder lets it go.
///
/// Readers `pread` it or `dup` it for `sendfile`; they never close it themselves.
public final class ReadableFile: Sendable {
    public let descriptor: Int32
    /// The size when it was opened (a file still being written grows past it).
    public let size: Int64

    public init(descriptor: Int32, size: Int64) {
        self.descriptor = descriptor
        self.size = size
    }

    deinit { close(descriptor) }
}

/// One in-progress, verified write. Feed `write`, then `commit` or `abort`.
public protocol BlobWriter: AnyObject, Sendable {
    var digest: Digest { get }
    /// Bytes written so far.
    var bytesWritten: Int64 { get }
    /// The temporary file being written, readable while the write goes on (for progressive fills).
    var temporaryPath: String { get }
    /// Where the blob is readable once `commit()` succeeded.
    var publishedPath: String { get }
    /// Opens the data being written for reading. It stays readable through the publishing
    /// rename and any later delete: a progressive fill's readers never open a path.
    func openForReading() throws(StoreError) -> ReadableFile
    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError)
    /// Checks digest and size of everything written; on a mismatch the write is aborted.
    /// After it succeeds the bytes are known good, though not yet durable or visible.
    func verify() throws(StoreError)
    /// Verifies (if not done yet), makes the data durable, and publishes the blob atomically.
    func commit() throws(StoreError)
    /// Discards the temporary file. Safe to call more than once, and after `commit`.
    func abort()
}

/// Errors from a blob store.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        let raw: String
        public static let notFound = Code(raw: "not found")
        public static let io = Code(raw: "i/o error")
        public static let verification = Code(raw: "verification failed")
        public static let tooLarge = Code(raw: "too large")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.raw): \(message)" }
}
