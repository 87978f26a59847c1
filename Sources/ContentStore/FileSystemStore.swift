#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import OCI
import Synchronization

/// Blobs as files under a data directory.
///
/// On-disk tree (the only place that knows it):
/// ```
/// <root>/blobs/<alg>/<first 2 hex>/<hex>   published, verified blobs (immutable)
/// <root>/tmp/<process id>/                 one folder per process, held by flock on .lock
/// <root>/tmp/<process id>/<n>.part         writes in progress
/// ```
/// A write goes to a `.part` file in the same filesystem, is hashed as it is written,
/// and is checked, fsynced and renamed into place; so a blob path either does not exist or
/// holds exactly the verified bytes. A process's temp folder is swept by the next process
/// that finds its lock free, so a crash leaves nothing that is ever served.
public final class FileSystemStore: BlobStore {
    public let root: String
    private let blobsRoot: String
    private let tempDirectory: String
    private let lockDescriptor: Int32
    private let counter = Atomic<Int>(0)

    /// Opens (creating if needed) a store under `root`, and sweeps temp folders of dead processes.
    public init(root: String) throws(StoreError) {
        self.root = root
        self.blobsRoot = root + "/blobs"
        let tempParent = root + "/tmp"
        for dir in [root, blobsRoot, tempParent] {
            try Self.makeDirectory(dir)
        }
        Self.sweep(tempParent)
        let mine = tempParent + "/" + UUID().uuidString.lowercased()
        try Self.makeDirectory(mine)
        let fd = open(mine + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            throw StoreError(.io, "cannot lock \(mine): \(String(cString: strerror(errno)))")
        }
        self.tempDirectory = mine
        self.lockDescriptor = fd
    }

    deinit {
        // Our temp folder goes with us; unlock last so no sweeper races the removal.
        try? FileManager.default.removeItem(atPath: tempDirectory)
        close(lockDescriptor)
    }

    /// Removes every temp folder whose owner is gone (its lock can be taken). Returns how many.
    @discardableResult
    public static func sweep(_ tempParent: String) -> Int {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: tempParent) else { return 0 }
        var removed = 0
        for entry in entries {
            let dir = tempParent + "/" + entry
            let fd = open(dir + "/.lock", O_RDWR | O_CLOEXEC)
            if fd >= 0 {
                defer { close(fd) }
                guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }  // owner alive
            }
            if (try? FileManager.default.removeItem(atPath: dir)) != nil { removed += 1 }
        }
        return removed
    }

    /// The file of a blob, for the file-system tools (`verify`, tests). Not part of
    /// `BlobStore`: nothing that serves content builds or matches a path.
    public func path(of digest: Digest) -> String { blobsRoot + "/" + digest.shardedPath }

    public func size(of digest: Digest) -> Int64? {
        var st = stat()
        guard stat(path(of: digest), &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int64(st.st_size)
    }

    public func modificationDate(of digest: Digest) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path(of: digest)))?[.modificationDate] as? Date
    }

    public func openBlob(_ digest: Digest) throws(StoreError) -> (any BlobReader)? {
        try openFile(digest).map(LocalFileReader.init(file:))
    }

    /// Opens a stored blob's file, or nil when absent: for synchronous callers on this
    /// machine (bundles). It stays readable if the blob is deleted afterwards.
    public func openFile(_ digest: Digest) throws(StoreError) -> ReadableFile? {
        let path = path(of: digest)
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw StoreError(.io, "open \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            return nil
        }
        return ReadableFile(descriptor: fd, size: Int64(st.st_size))
    }

    public func makeWriter(expecting digest: Digest, size: Int64?) throws(StoreError) -> any BlobWriter {
        try makeFileWriter(expecting: digest, size: size)
    }

    /// A writer whose `commitNow()` publishes synchronously, for callers on threads of their
    /// own (bundles).
    public func makeFileWriter(expecting digest: Digest, size: Int64?) throws(StoreError) -> FileBlobWriter {
        let temp = tempDirectory + "/\(counter.add(1, ordering: .relaxed).newValue).part"
        return try FileBlobWriter(store: self, digest: digest, expectedSize: size, temporaryPath: temp)
    }

    public func read(_ digest: Digest, limit: Int) throws(StoreError) -> [UInt8] {
        let path = path(of: digest)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { throw StoreError(.notFound, "\(digest) is not in the store") }
            throw StoreError(.io, "open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StoreError(.io, "stat \(path): \(String(cString: strerror(errno)))") }
        guard Int(st.st_size) <= limit else { throw StoreError(.tooLarge, "\(digest) is \(st.st_size) bytes, over \(limit)") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw StoreError(.io, "read \(path): short read") }
            done += n
        }
        return bytes
    }

    public func delete(_ digest: Digest) throws(StoreError) {
        if unlink(path(of: digest)) != 0, errno != ENOENT {
            throw StoreError(.io, "unlink \(digest): \(String(cString: strerror(errno)))")
        }
    }

    /// Unlinks on a thread of its own: a pass at scale removes thousands of files, and the
    /// cooperative pool's few threads serve every request.
    public func delete(_ digests: [Digest]) async -> [(Digest, StoreError)] {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                var failed: [(Digest, StoreError)] = []
                for digest in digests {
                    do throws(StoreError) { try self.delete(digest) } catch { failed.append((digest, error)) }
                }
                continuation.resume(returning: failed)
            }
            thread.name = "registry-mirror-unlink"
            thread.start()
        }
    }

    public func allDigests() throws(StoreError) -> [Digest] {
        var out: [Digest] = []
        let fm = FileManager.default
        for algorithm in Digest.Algorithm.allCases {
            let base = blobsRoot + "/" + algorithm.rawValue
            guard let shards = try? fm.contentsOfDirectory(atPath: base) else { continue }
            for shard in shards {
                for name in (try? fm.contentsOfDirectory(atPath: base + "/" + shard)) ?? [] {
                    if let d = try? Digest(parsing: "\(algorithm.rawValue):\(name)"), d.hex.hasPrefix(shard) { out.append(d) }
                }
            }
        }
        return out
    }

    /// Writes, fsyncs and removes a small file where blob writes go: what a fill would do
    /// first. Throws what stopped it (a full disk, a read-only or vanished filesystem).
    public func probeWrite() throws(StoreError) {
        let path = tempDirectory + "/ready-probe"
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError(.io, "create \(path): \(String(cString: strerror(errno)))") }
        defer {
            close(fd)
            unlink(path)
        }
        // One block, so a full filesystem refuses it (a zero-length file needs only an inode).
        let block = [UInt8](repeating: 0x2e, count: 4096)
        let written = block.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        guard written == block.count else {
            throw StoreError(.io, "write \(path): \(written < 0 ? String(cString: strerror(errno)) : "short write")")
        }
        guard fsync(fd) == 0 else { throw StoreError(.io, "fsync \(path): \(String(cString: strerror(errno)))") }
    }

    /// Bytes an unprivileged writer can still use on the store's filesystem.
    public func freeSpace() throws(StoreError) -> Int64 {
        var fs = statvfs()
        guard statvfs(root, &fs) == 0 else { throw StoreError(.io, "statvfs \(root): \(String(cString: strerror(errno)))") }
        return Int64(fs.f_bavail) * Int64(fs.f_frsize)
    }

    /// Publishes a verified temp file: fsync the data, rename, fsync the directory.
    fileprivate func publish(temporaryPath: String, descriptor: Int32, digest: Digest) throws(StoreError) {
        guard fsync(descriptor) == 0 else { throw StoreError(.io, "fsync: \(String(cString: strerror(errno)))") }
        let final = path(of: digest)
        let dir = String(final[..<final.lastIndex(of: "/")!])
        try Self.makeDirectory(String(dir[..<dir.lastIndex(of: "/")!]))
        try Self.makeDirectory(dir)
        guard rename(temporaryPath, final) == 0 else {
            throw StoreError(.io, "rename into \(final): \(String(cString: strerror(errno)))")
        }
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }

    static func makeDirectory(_ path: String) throws(StoreError) {
        if mkdir(path, 0o755) != 0, errno != EEXIST {
            throw StoreError(.io, "mkdir \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// A write into a `.part` file, hashed on the way in.
public final class FileBlobWriter: BlobWriter, @unchecked Sendable {
    // State is touched by one writer at a time; `bytesWritten` is read by others, hence atomic.
    public let digest: Digest
    let temporaryPath: String
    private let store: FileSystemStore
    private var verifier: DigestVerifier?
    private var descriptor: Int32
    private let written = Atomic<Int64>(0)
    private var finished = false
    private var verified = false

    init(store: FileSystemStore, digest: Digest, expectedSize: Int64?, temporaryPath: String) throws(StoreError) {
        self.store = store
        self.digest = digest
        self.temporaryPath = temporaryPath
        self.verifier = DigestVerifier(expected: digest, expectedSize: expectedSize)
        self.descriptor = open(temporaryPath, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw StoreError(.io, "create \(temporaryPath): \(String(cString: strerror(errno)))")
        }
    }

    deinit { abort() }

    public var bytesWritten: Int64 { written.load(ordering: .acquiring) }

    public func openForReading() throws(StoreError) -> ReadableFile? {
        let fd = open(temporaryPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.io, "open \(temporaryPath): \(String(cString: strerror(errno)))") }
        return ReadableFile(descriptor: fd, size: 0)
    }

    public func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        guard !finished, verifier != nil else { throw StoreError(.io, "write after finish") }
        do {
            try verifier!.update(buffer)
        } catch {
            throw StoreError(.verification, error.message)
        }
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw StoreError(.io, "write \(temporaryPath): \(String(cString: strerror(errno)))")
            }
            offset += n
        }
        written.add(Int64(buffer.count), ordering: .releasing)
    }

    public func verify() throws(StoreError) {
        guard !finished else { throw StoreError(.io, "verify after finish") }
        guard let verifier = verifier.take() else { return }  // already verified
        do {
            try verifier.verify()
            verified = true
        } catch {
            abort()
            throw StoreError(.verification, error.message)
        }
    }

    /// Verifies, then fsyncs and renames on a thread of its own: never on the cooperative pool,
    /// whose few threads every request shares.
    public func commit() async throws(StoreError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, StoreError>, Never>) in
            let thread = Thread { continuation.resume(returning: Result { () throws(StoreError) in try self.commitNow() }) }
            thread.name = "registry-mirror-publish"
            thread.start()
        }
        try result.get()
    }

    /// `commit()`, on the calling thread.
    public func commitNow() throws(StoreError) {
        try verify()
        guard verified else { throw StoreError(.io, "commit after finish") }
        do {
            try store.publish(temporaryPath: temporaryPath, descriptor: descriptor, digest: digest)
        } catch {
            abort()
            throw error
        }
        close(descriptor)
        descriptor = -1
        finished = true
    }

    public func abort() {
        guard !finished else { return }
        finished = true
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        unlink(temporaryPath)
    }
}
