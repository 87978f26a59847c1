import Foundation
import OCI
import Synchronization

/// A store whose writers keep a local copy: a fleet replica's spool for peers' streams.
public protocol SpoolingBlobStore: BlobStore {
    /// A verified writer into local storage only: for a fleet replica streaming a blob from
    /// the replica that downloads it, whose own upload publishes it.
    func makeSpool(expecting digest: Digest) throws(StoreError) -> any BlobWriter
}

extension SpoolingStore: SpoolingBlobStore {}

/// A remote store (S3) with a local disk tier in front (`storage.local_cache.max_size`): a
/// cache of the remote store on this replica, evicted by least recent use on its own.
///
/// - A download writes to a file of the tier as it arrives (clients stream it from there) and
///   to the remote store; `commit` completes the remote upload, then publishes the local file.
///   A peer's stream (`makeSpool`) goes to the tier only.
/// - A blob read from the remote store is copied into the tier in the background (`run()`),
///   so the next read is a local file sent with sendfile.
/// - The tier never holds more than `maxBytes`: the least recently opened files go first.
///   Unlinking a file a response still streams is safe: the response holds it open.
/// - Deletes (the shared store's eviction) remove both copies; the remote store is the truth
///   for listings (`allDigests`).
public final class TieredStore: SpoolingBlobStore {
    public let remote: any BlobStore
    public let local: FileSystemStore
    public let maxBytes: Int64

    private struct Tier {
        /// Size and last use (a counter) of every blob in the tier.
        var entries: [Digest: (size: Int64, used: UInt64)] = [:]
        var bytes: Int64 = 0
        var clock: UInt64 = 0
        /// Copies queued or running, so one blob is copied once.
        var copying: Set<Digest> = []
    }
    private let tier = Mutex(Tier())
    /// Copies wait here until `run()` takes them (at most 256; more are dropped, not blocked on).
    private let copyQueue: AsyncStream<Digest>
    private let copies: AsyncStream<Digest>.Continuation

    /// - Parameter localRoot: the tier's directory (a `FileSystemStore`); what a previous run
    ///   left there is counted and kept.
    public init(remote: any BlobStore, localRoot: String, maxBytes: Int64) throws(StoreError) {
        self.remote = remote
        self.local = try FileSystemStore(root: localRoot)
        self.maxBytes = maxBytes
        (copyQueue, copies) = AsyncStream.makeStream(of: Digest.self, bufferingPolicy: .bufferingNewest(256))
        let found = try local.allDigests()
        tier.withLock { t in
            for digest in found {
                guard let size = local.size(of: digest) else { continue }
                t.clock += 1
                t.entries[digest] = (size, t.clock)
                t.bytes += size
            }
        }
        trim()
    }

    /// Bytes and blobs in the tier now.
    public var usage: (bytes: Int64, blobs: Int) { tier.withLock { ($0.bytes, $0.entries.count) } }

    public func size(of digest: Digest) async -> Int64? {
        if let size = local.size(of: digest) { return size }
        return await remote.size(of: digest)
    }

    public func modificationDate(of digest: Digest) async -> Date? { await remote.modificationDate(of: digest) }

    public func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? {
        if let reader = try local.openBlob(digest) {
            used(digest)
            return reader
        }
        guard let reader = try await remote.openBlob(digest) else { return nil }
        copyLater(digest)
        return reader
    }

    public func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] {
        if local.size(of: digest) != nil, let bytes = try? local.read(digest, limit: limit) {
            used(digest)
            return bytes
        }
        return try await remote.read(digest, limit: limit)
    }

    public func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        let remoteWriter = try await remote.makeWriter(expecting: digest, size: size)
        do {
            return try TierWriter(local: try local.makeFileWriter(expecting: digest, size: size), remote: remoteWriter, tier: self)
        } catch {
            remoteWriter.abort()
            throw error
        }
    }

    public func makeSpool(expecting digest: Digest) throws(StoreError) -> any BlobWriter {
        try TierWriter(local: try local.makeFileWriter(expecting: digest, size: nil), remote: nil, tier: self)
    }

    public func delete(_ digest: Digest) async throws(StoreError) {
        forget([digest])
        try? local.delete(digest)
        try await remote.delete(digest)
    }

    public func delete(_ digests: [Digest]) async -> [(Digest, StoreError)] {
        forget(digests)
        _ = await local.delete(digests)
        return await remote.delete(digests)
    }

    public func allDigests() async throws(StoreError) -> [Digest] { try await remote.allDigests() }

    // MARK: The tier's bookkeeping

    fileprivate func added(_ digest: Digest, size: Int64) {
        tier.withLock { t in
            t.clock += 1
            if let old = t.entries[digest] { t.bytes -= old.size }
            t.entries[digest] = (size, t.clock)
            t.bytes += size
        }
        trim()
    }

    private func used(_ digest: Digest) {
        tier.withLock { t in
            guard let entry = t.entries[digest] else { return }
            t.clock += 1
            t.entries[digest] = (entry.size, t.clock)
        }
    }

    private func forget(_ digests: [Digest]) {
        tier.withLock { t in
            for digest in digests {
                if let entry = t.entries.removeValue(forKey: digest) { t.bytes -= entry.size }
            }
        }
    }

    /// Removes the least recently used files until the tier fits its cap.
    private func trim() {
        let victims = tier.withLock { t -> [Digest] in
            guard t.bytes > maxBytes else { return [] }
            var out: [Digest] = []
            for (digest, entry) in t.entries.sorted(by: { $0.value.used < $1.value.used }) {
                guard t.bytes > maxBytes else { break }
                t.entries[digest] = nil
                t.bytes -= entry.size
                out.append(digest)
            }
            return out
        }
        for digest in victims { try? local.delete(digest) }
    }

    // MARK: Copies from the remote store

    private func copyLater(_ digest: Digest) {
        guard tier.withLock({ $0.copying.insert(digest).inserted }) else { return }
        copies.yield(digest)
    }

    /// Copies blobs read from the remote store into the tier, one at a time, until cancelled.
    /// Run once (by `serve`); without it (the CLI), nothing is copied.
    public func run() async {
        await withTaskCancellationHandler {
            for await digest in copyQueue {
                guard !Task.isCancelled else { break }
                await copy(digest)
                _ = tier.withLock { $0.copying.remove(digest) }
            }
        } onCancel: { [copies] in
            copies.finish()
        }
    }

    private func copy(_ digest: Digest) async {
        guard local.size(of: digest) == nil, let size = await remote.size(of: digest), size <= maxBytes / 2,
              let reader = try? await remote.openBlob(digest), let writer = try? local.makeFileWriter(expecting: digest, size: size) else { return }
        do {
            for try await chunk in reader.chunks(from: 0, length: nil) {
                try chunk.withUnsafeBytes { try writer.write($0) }
            }
            try await writer.commit()
            added(digest, size: writer.bytesWritten)
        } catch {
            writer.abort()
        }
    }
}

/// A download's writer with a tier: the local file first (clients stream it), fed from there
/// to the remote store's writer behind the download (`FedWriter`); the remote upload is
/// completed before the local file is published. A peer's stream has no remote writer.
final class TierWriter: BlobWriter, @unchecked Sendable {
    // One writer at a time, as the protocol says.
    private let local: FileBlobWriter
    private let fed: FedWriter?
    private let tier: TieredStore

    init(local: FileBlobWriter, remote: (any BlobWriter)?, tier: TieredStore) throws(StoreError) {
        self.local = local
        self.fed = try remote.map { remote throws(StoreError) in try FedWriter(front: local, remote: remote) }
        self.tier = tier
    }

    private var writing: any BlobWriter { fed ?? local }

    var digest: Digest { local.digest }
    var bytesWritten: Int64 { local.bytesWritten }

    func openForReading() throws(StoreError) -> ReadableFile? { try local.openForReading() }

    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) { try writing.write(buffer) }

    func verify() async throws(StoreError) { try await writing.verify() }

    func commit() async throws(StoreError) {
        try local.verify()
        try await fed?.commitRemote()
        // The remote copy is the one that counts; a local file that cannot be kept is a miss later.
        do {
            try await local.commit()
            tier.added(digest, size: local.bytesWritten)
        } catch {
            local.abort()
        }
    }

    func abort() { writing.abort() }
}
