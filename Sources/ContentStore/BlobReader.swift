#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An open blob, as the HTTP front streams it: a stored blob, a blob still arriving (read
/// through its download), or a piece relayed from an upstream. All look the same.
///
/// A reader is opened before a response's head goes out, and whatever happens to the blob
/// afterwards (a delete, an eviction) it can still be read to the end. It holds no bytes in
/// memory: `chunks` reads the next buffer only when the consumer asks for it, so a slow
/// socket slows the reading instead of filling memory.
public protocol BlobReader: Sendable {
    /// The size of the blob. A reader of a blob still arriving waits until its source said
    /// (the upstream's head); nil when the source sent no length, until the last byte.
    func size() async throws -> Int64?
    /// The bytes from `offset`, `length` of them (nil: to the end), as buffers of about
    /// `BlobChunks.defaultSize`. It ends early, or throws, if the content fails (a download
    /// that failed): the consumer must then cut its response, never pad it.
    func chunks(from offset: Int64, length: Int64?) -> BlobChunks
    /// The local file that holds the bytes, for zero-copy sends (sendfile); nil when there is
    /// none (a remote store, a relayed answer).
    var fileRegions: FileRegionSource? { get }
}

/// A blob's bytes as buffers, pulled one at a time.
public struct BlobChunks: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    /// 128 KiB: over TLS, 64 KiB buffers (two in flight, `WritePacing`) gave 0.61× nginx's
    /// MB/s and 128 KiB 0.93×, for 3 MiB more peak RSS with 8 readers (bench/tls.sh).
    public static let defaultSize = 128 << 10

    let start: Int64
    let end: Int64?
    let chunkSize: Int
    /// Reads at most `maxLength` bytes at `offset`, waiting for them if they are still to
    /// come; empty at the end.
    let read: @Sendable (_ offset: Int64, _ maxLength: Int) async throws -> [UInt8]

    /// - Parameter read: up to `maxLength` bytes at `offset`; empty when the blob ends there.
    public init(from start: Int64, length: Int64?, chunkSize: Int = defaultSize,
                read: @escaping @Sendable (_ offset: Int64, _ maxLength: Int) async throws -> [UInt8]) {
        self.start = start
        self.end = length.map { start + $0 }
        self.chunkSize = chunkSize
        self.read = read
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var offset: Int64
        let chunks: BlobChunks

        public mutating func next() async throws -> [UInt8]? {
            let want = chunks.end.map { Swift.min(Int64(chunks.chunkSize), $0 - offset) } ?? Int64(chunks.chunkSize)
            guard want > 0 else { return nil }
            let bytes = try await chunks.read(offset, Int(want))
            guard !bytes.isEmpty else { return nil }
            offset += Int64(bytes.count)
            return bytes
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(offset: start, chunks: self) }
}

/// Stretches of a local file to send with `sendfile(2)`: the open file, and how far it may
/// be sent (all of it for a stored blob; for a download, as far as the bytes arrived).
public struct FileRegionSource: Sendable {
    public let file: ReadableFile
    private let sendable: @Sendable (Int64) async throws -> Int64

    /// - Parameter available: waits until bytes past the offset may be sent and returns the
    ///   end of that stretch, or the offset itself when the blob ends there.
    public init(file: ReadableFile, available: @escaping @Sendable (Int64) async throws -> Int64) {
        self.file = file
        self.sendable = available
    }

    /// Waits until bytes past `offset` may be sent; the end of the sendable stretch, or
    /// `offset` when the blob ends there. Throws when the content failed.
    public func available(beyond offset: Int64) async throws -> Int64 { try await sendable(offset) }
}

/// An open, read-only file descriptor, closed when the last holder lets it go.
///
/// Readers `pread` it or `dup` it for `sendfile`; they never close it themselves. Only
/// stores that keep blobs in local files, and fills spooling into one, hand these out.
public final class ReadableFile: Sendable {
    public let descriptor: Int32
    /// The size when it was opened (a file still being written grows past it).
    public let size: Int64

    public init(descriptor: Int32, size: Int64) {
        self.descriptor = descriptor
        self.size = size
    }

    deinit { close(descriptor) }

    /// Up to `maxLength` bytes at `offset`; fewer only at the end of the file.
    public func read(at offset: Int64, maxLength: Int) throws(StoreError) -> [UInt8] {
        guard maxLength > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: maxLength)
        var done = 0
        while done < maxLength {
            let n = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress! + done, maxLength - done, off_t(offset) + off_t(done)) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw StoreError(.io, "read at byte \(offset + Int64(done)): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            done += n
        }
        if done < maxLength { bytes.removeLast(maxLength - done) }
        return bytes
    }
}

/// A reader of a complete blob in an open local file.
public struct LocalFileReader: BlobReader {
    public let file: ReadableFile

    public init(file: ReadableFile) { self.file = file }

    public func size() async throws -> Int64? { file.size }

    public func chunks(from offset: Int64, length: Int64?) -> BlobChunks {
        let file = self.file
        return BlobChunks(from: offset, length: length) { at, maxLength throws in
            let want = Int(max(0, min(Int64(maxLength), file.size - at)))
            return try file.read(at: at, maxLength: want)
        }
    }

    public var fileRegions: FileRegionSource? {
        let size = file.size
        return FileRegionSource(file: file) { _ in size }
    }
}

/// A reader of a blob that a client could also fetch itself from elsewhere: an object store
/// that hands out short-lived signed URLs. The HTTP front may then answer a GET with a
/// redirect to `redirectLocation()` instead of sending the bytes.
public protocol RedirectingBlobReader: BlobReader {
    /// A URL that serves the whole blob (and ranges of it) for a while; nil: send it from here.
    func redirectLocation() -> String?
}
