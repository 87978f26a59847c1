#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import OCI

/// Feeds a remote store's writer (an S3 multipart upload) from the local file a download is
/// written to, on a thread of its own, behind the download. The download, and every client
/// streaming it from the local file, then runs at the upstream's speed instead of the
/// upload's: the local file is the buffer between the two, so memory stays at one read buffer
/// plus what the remote writer holds. `finish()` waits until the remote writer has every byte.
///
/// The writer that owns a feed tells it how far the local file is written (`advance`), and
/// either finishes it (then commits the remote writer) or cancels it. A failure of the remote
/// writer is kept and thrown by the next `advance` (the download stops early) or by `finish`.
final class RemoteFeed: @unchecked Sendable {
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var written: Int64 = 0
    private var fed: Int64 = 0
    private var finishing = false
    private var cancelled = false
    private var failure: StoreError?
    private var stopped = false
    private var waiter: CheckedContinuation<Result<Void, StoreError>, Never>?

    private let source: ReadableFile
    private let remote: any BlobWriter

    static let chunk = 1 << 20

    /// - Parameter source: a descriptor of the local file of its own (it is read with pread).
    init(source: ReadableFile, remote: any BlobWriter) {
        self.source = source
        self.remote = remote
        let thread = Thread { [self] in run() }
        thread.name = "remote-feed"
        thread.stackSize = 512 << 10
        thread.start()
    }

    /// The local file now holds `count` bytes; throws the remote writer's failure, if any.
    func advance(to count: Int64) throws(StoreError) {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        written = count
        condition.signal()
    }

    /// Waits until every byte written was passed on, or throws why it was not.
    func finish() async throws(StoreError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, StoreError>, Never>) in
            condition.lock()
            finishing = true
            if stopped {
                condition.unlock()
                continuation.resume(returning: failure.map { .failure($0) } ?? (cancelled ? .failure(Self.cancelledError) : .success(())))
                return
            }
            waiter = continuation
            condition.signal()
            condition.unlock()
        }
        try result.get()
    }

    /// Stops feeding (the write is being aborted); the thread ends after its current chunk.
    func cancel() {
        condition.lock()
        cancelled = true
        condition.signal()
        condition.unlock()
    }

    private static let cancelledError = StoreError(.io, "the upload was cancelled")

    private func run() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunk, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            condition.lock()
            while fed == written, !finishing, !cancelled { condition.wait() }
            if cancelled || (finishing && fed == written) {
                end(failure: cancelled ? Self.cancelledError : nil)
                return
            }
            let target = written
            condition.unlock()
            do throws(StoreError) {
                var offset = fed
                while offset < target {
                    let want = Int(min(Int64(Self.chunk), target - offset))
                    let got = try Self.read(source.descriptor, into: buffer.baseAddress!, count: want, at: offset)
                    try remote.write(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
                    offset += Int64(got)
                    if isCancelled { break }
                }
            } catch {
                condition.lock()
                end(failure: error)
                return
            }
            condition.lock()
            fed = target
            condition.unlock()
        }
    }

    private var isCancelled: Bool {
        condition.lock()
        defer { condition.unlock() }
        return cancelled
    }

    /// With the lock held: records the outcome, wakes `finish`, and unlocks.
    private func end(failure: StoreError?) {
        if self.failure == nil { self.failure = failure }
        stopped = true
        let waiter = self.waiter.take()
        let result: Result<Void, StoreError> = self.failure.map { .failure($0) } ?? .success(())
        condition.unlock()
        waiter?.resume(returning: result)
    }

    /// Reads exactly `count` bytes at `offset`: the bytes are in the file before `advance` says so.
    private static func read(_ descriptor: Int32, into base: UnsafeMutableRawPointer, count: Int, at offset: Int64) throws(StoreError) -> Int {
        var done = 0
        while done < count {
            let n = pread(descriptor, base + done, count - done, off_t(offset) + off_t(done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                throw StoreError(.io, "read of a local copy at byte \(offset + Int64(done)) for the upload: \(n == 0 ? "end of file" : String(cString: strerror(errno)))")
            }
            done += n
        }
        return done
    }
}

/// A download's writer in two places: `front`, a local file that clients stream and whose
/// writer verifies the bytes, and `remote` (an S3 upload), fed from that file by a
/// `RemoteFeed` on a thread of its own. `verify()` answers as soon as the local bytes are
/// checked, so clients get the last byte without waiting for the upload; `commit()` waits for
/// the remote writer to have everything, completes it (it verifies again, by its own hash),
/// then commits the front.
final class FedWriter: BlobWriter, @unchecked Sendable {
    // One writer at a time, as the protocol says.
    let front: any BlobWriter
    let remote: any BlobWriter
    private let feed: RemoteFeed

    init(front: any BlobWriter, remote: any BlobWriter) throws(StoreError) {
        guard let file = try front.openForReading() else { throw StoreError(.io, "the local copy of \(front.digest) cannot be read back") }
        self.front = front
        self.remote = remote
        self.feed = RemoteFeed(source: file, remote: remote)
    }

    deinit { feed.cancel() }

    var digest: Digest { front.digest }
    var bytesWritten: Int64 { front.bytesWritten }

    func openForReading() throws(StoreError) -> ReadableFile? { try front.openForReading() }

    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        try front.write(buffer)
        try feed.advance(to: front.bytesWritten)
    }

    func verify() async throws(StoreError) {
        do {
            try await front.verify()
        } catch {
            abort()
            throw error
        }
    }

    /// Verifies, waits for the upload to have every byte and completes it; the front is left
    /// to the caller.
    func commitRemote() async throws(StoreError) {
        try await verify()
        try await feed.finish()
        try await remote.commit()
    }

    func commit() async throws(StoreError) {
        try await commitRemote()
        try await front.commit()
    }

    func abort() {
        feed.cancel()
        front.abort()
        remote.abort()
    }
}
