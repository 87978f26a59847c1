import ContentStore
import Foundation
import OCI

/// Bytes a blob is read from, pushed into a sink; sendable, so the copy can run on a thread of
/// its own (see `IngestSession.ingest`).
typealias BlobSource = @Sendable (_ sink: (UnsafeRawBufferPointer) throws(BundleError) -> Void) throws(BundleError) -> Void

/// Tracks what one import wrote, so a failure can take it back.
///
/// The store may be any `BlobStore`: the data directory's files, or the bucket of a fleet.
/// Each blob is copied into its writer on a thread of its own, never on the cooperative pool,
/// because `BlobWriter.write` may block (an S3 writer uploads a full part there); only the
/// writer's creation and its `commit` are awaited.
struct IngestSession {
    let store: any BlobStore
    let progress: ProgressHandler?
    /// The bundle, as progress events name it.
    let label: String
    private(set) var written: Set<Digest> = []
    var reached: Set<Digest> = []
    /// Sizes of the blobs this session found stored or stored itself, so a remote store is
    /// asked once per blob.
    private var sizes: [Digest: Int64] = [:]

    init(store: any BlobStore, progress: ProgressHandler? = nil, label: String = "") {
        self.store = store
        self.progress = progress
        self.label = label
    }

    /// The stored size of `digest`, or nil when the store lacks it.
    mutating func size(of digest: Digest) async -> Int64? {
        if let known = sizes[digest] { return known }
        let size = await store.size(of: digest)
        if let size { sizes[digest] = size }
        return size
    }

    /// Stores a blob built in memory (a manifest made for a docker archive), verified.
    mutating func ingest(_ bytes: [UInt8], as digest: Digest) async throws(BundleError) {
        try await ingest(digest, size: Int64(bytes.count)) { (sink) throws(BundleError) in
            try bytes.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(raw) } }.get()
        }
    }

    /// Streams a blob into the store, verified; a blob already stored is skipped.
    mutating func ingest(_ digest: Digest, size: Int64, from source: @escaping BlobSource) async throws(BundleError) {
        guard await self.size(of: digest) == nil else {
            progress?(.blobStarted(image: label, digest: digest, size: size))
            progress?(.blobFinished(image: label, digest: digest, bytes: 0, cached: true))
            return
        }
        let writer: any BlobWriter
        do {
            writer = try await store.makeWriter(expecting: digest, size: size)
        } catch {
            throw BundleError("cannot store \(digest): \(error.message)")
        }
        progress?(.blobStarted(image: label, digest: digest, size: size))
        do throws(BundleError) {
            try await Self.onThread { [progress, label] () throws(BundleError) in
                try source { (chunk) throws(BundleError) in
                    do throws(StoreError) {
                        try writer.write(chunk)
                    } catch where error.code == .verification {
                        throw BundleError("bundle is corrupt: blob \(digest) failed verification: \(error.message)")
                    } catch {
                        throw BundleError("cannot store \(digest): \(error.message)")
                    }
                    progress?(.blobProgress(image: label, digest: digest, bytes: writer.bytesWritten, size: size))
                }
            }
            do throws(StoreError) {
                try await writer.commit()
            } catch where error.code == .verification {
                throw BundleError("bundle is corrupt: blob \(digest) failed verification: \(error.message)")
            } catch {
                throw BundleError("cannot store \(digest): \(error.message)")
            }
        } catch {
            writer.abort()
            throw error
        }
        written.insert(digest)
        sizes[digest] = size
        progress?(.blobFinished(image: label, digest: digest, bytes: size, cached: false))
    }

    /// Removes every blob this import wrote.
    func rollback() async {
        _ = await store.delete(Array(written))
    }

    /// Blobs a tar carried that no image reaches are not kept.
    func removeUnreached() async {
        _ = await store.delete(Array(written.subtracting(reached)))
    }

    /// Runs `body` on a thread of its own, where it may block.
    static func onThread(_ body: @escaping @Sendable () throws(BundleError) -> Void) async throws(BundleError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, BundleError>, Never>) in
            let thread = Thread { continuation.resume(returning: Result { () throws(BundleError) in try body() }) }
            thread.name = "registry-mirror-import"
            thread.start()
        }
        try result.get()
    }
}

/// Reads a file in 1 MiB chunks into a sink.
func fileChunks(_ path: String) -> BlobSource {
    { (sink) throws(BundleError) in
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { throw BundleError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(file) }
        try descriptorChunks(file, path: path)(sink)
    }
}

/// Reads `size` bytes at `offset` of a tar archive (one entry's data) into a sink; `name`
/// names the entry in errors.
func tarEntryChunks(_ path: String, offset: Int64, size: Int64, name: String) -> BlobSource {
    { (sink) throws(BundleError) in
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { throw BundleError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(file) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var done: Int64 = 0
        while done < size {
            let want = Int(min(Int64(buffer.count), size - done))
            let count = buffer.withUnsafeMutableBytes { pread(file, $0.baseAddress, want, off_t(offset + done)) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw BundleError("reading tar archive: \(String(cString: strerror(errno)))") }
            guard count > 0 else { throw BundleError("tar archive is truncated inside \(name)") }
            done += Int64(count)
            try buffer.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(UnsafeRawBufferPointer(rebasing: raw[0..<count])) } }.get()
        }
    }
}

/// Reads an open file (which the caller closes, after the reading) in 1 MiB chunks into a
/// sink; `path` names it in errors.
func descriptorChunks(_ file: Int32, path: String) -> BlobSource {
    { (sink) throws(BundleError) in
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(file, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw BundleError("reading \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { return }
            try buffer.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(UnsafeRawBufferPointer(rebasing: raw[0..<count])) } }.get()
        }
    }
}
