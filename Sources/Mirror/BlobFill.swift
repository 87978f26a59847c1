import ContentStore
import Foundation
import OCI
import Synchronization
import Upstream

/// One upstream download of one blob, shared by every client that asks for it meanwhile.
///
/// The download thread appends to the store's temporary file (hashing as it goes) and
/// advances a "bytes written" mark. The fill holds that file open from its first byte (its
/// spool) and hands out readers (`reader()`), never the file: the publishing rename and a
/// later eviction cannot pull the bytes from under them. Each reader streams from its own
/// offset and, when it catches up, parks until the mark moves. The producer never waits for
/// readers. At the end the store verifies digest and size, fsyncs and renames; only then is
/// the blob a cache entry. A failure wakes every reader with the error, and nothing is kept.
///
/// Every wait parks on a continuation until the state changes (or the waiter is cancelled):
/// no wait loop re-checks without suspending.
public final class BlobFill: Sendable {
    public enum Outcome: Sendable {
        case running
        /// Verified and published.
        case done
        case failed(MirrorError)
    }

    struct State {
        /// The upstream's head arrived (or the fill ended without one).
        var headArrived = false
        /// The size clients are told: the upstream's `Content-Length`, else the size a cached
        /// manifest's descriptor gives. Nil while unknown (a chunked upstream body).
        var size: Int64?
        var written: Int64 = 0
        /// Digest and size checked: the last byte may go out before the fsync and rename.
        var verified = false
        var outcome: Outcome = .running
        /// Readers handed out and still alive: responses streaming this download.
        var readers = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    public let digest: Digest
    /// The size a cached manifest names for this blob, used when the upstream sends none.
    let expectedSize: Int64?
    /// The growing file, open for reading; it stays readable after the rename and any delete.
    let file: ReadableFile
    let state = Mutex(State())

    init(digest: Digest, file: ReadableFile, expectedSize: Int64? = nil) {
        self.digest = digest
        self.file = file
        self.expectedSize = expectedSize
    }

    // MARK: Producer side (the download thread)

    /// The upstream's head arrived; `contentLength` is its `Content-Length`, if it sent one.
    func started(contentLength: Int64?) {
        update {
            $0.headArrived = true
            $0.size = contentLength ?? expectedSize
        }
    }
    func advanced(to written: Int64) { update { $0.written = written } }
    func verified() { update { $0.verified = true } }
    func finished(_ outcome: Outcome) { update { $0.outcome = outcome } }

    func update(_ change: (inout State) -> Void) {
        let waiters = state.withLock { s -> Dictionary<Int, CheckedContinuation<Void, Never>>.Values in
            change(&s)
            defer { s.waiters.removeAll() }
            return s.waiters.values
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Reader side

    /// A reader of this download, as a stored blob's reader looks: it waits for bytes as they
    /// arrive, holds back the last one until the digest is verified, and throws the fill's
    /// failure, so a response built on it is cut rather than completed with wrong bytes.
    public func reader() -> some BlobReader { FillReader(fill: self, token: ReaderToken(fill: self)) }

    /// Returns once nobody reads this download any more (or it ended): while the server
    /// shuts down, a download no response is waiting for is not worth finishing.
    func unread() async {
        await waitUntil { $0.readers == 0 || !$0.isRunning }
    }

    public var snapshot: (size: Int64?, written: Int64, outcome: Outcome) {
        state.withLock { ($0.size, $0.written, $0.outcome) }
    }

    /// Waits until the upstream's head arrived or the fill ended. Returns the size clients
    /// are told, or nil when it is not known yet (the upstream sent no length and no cached
    /// manifest names one): such a body streams chunked. A fill that ended knows its size.
    public func size() async throws(MirrorError) -> Int64? {
        await waitUntil { $0.headArrived || !$0.isRunning }
        let (headArrived, size, written, outcome) = state.withLock { ($0.headArrived, $0.size, $0.written, $0.outcome) }
        switch outcome {
        case .failed(let error): throw error
        case .done: return size ?? written
        case .running:
            guard headArrived else { throw MirrorError(.internal, "the wait for \(digest) was cancelled") }
            return size
        }
    }

    /// Waits until the fill ended: the size of the published blob, or the fill's failure.
    public func completed() async throws(MirrorError) -> Int64 {
        await waitUntil { !$0.isRunning }
        guard let size = try outcomeSize() else { throw MirrorError(.internal, "the wait for \(digest) was cancelled") }
        return size
    }

    /// Waits up to `limit` for the fill to end; its size, or nil if it is still running then.
    public func completedSize(within limit: Duration) async throws(MirrorError) -> Int64? {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitUntil { !$0.isRunning } }
            group.addTask { try? await Task.sleep(for: limit) }
            await group.next()
            group.cancelAll()
        }
        return try outcomeSize()
    }

    private func outcomeSize() throws(MirrorError) -> Int64? {
        let (_, written, outcome) = snapshot
        switch outcome {
        case .failed(let error): throw error
        case .done: return written
        case .running: return nil
        }
    }

    /// Waits until more than `offset` bytes may be sent, or every byte may. Returns how many
    /// may be sent and whether that is all of them (the blob is verified), or throws the
    /// fill's failure.
    ///
    /// While the download runs, the blob's last byte is held back: it goes out only after the
    /// digest was verified, so a client never receives a complete body of wrong bytes. A
    /// body of unknown length holds back its end instead (the last chunk). A failed fill
    /// cuts the response short, and the client sees an error. The fsync and rename that
    /// publish the blob come after, off the client's critical path.
    public func available(beyond offset: Int64) async throws(MirrorError) -> (sendable: Int64, complete: Bool) {
        await waitUntil { Self.sendable($0) > offset || $0.isComplete || $0.isFailed }
        return try state.withLock { (s) throws(MirrorError) in
            if case .failed(let error) = s.outcome { throw error }
            let sendable = Self.sendable(s)
            // Cancelled while waiting: end the caller's loop rather than let it ask again.
            if sendable <= offset, !s.isComplete { throw MirrorError(.internal, "the wait for \(digest) was cancelled") }
            return (sendable, s.isComplete)
        }
    }

    static func sendable(_ s: State) -> Int64 {
        guard !s.isComplete, let size = s.size else { return s.written }
        return min(s.written, size - 1)
    }

    /// Parks until `condition` holds, or the calling task is cancelled. Every change to the
    /// state wakes every waiter, which checks its condition again under the lock.
    func waitUntil(_ condition: @escaping @Sendable (State) -> Bool) async {
        while !Task.isCancelled {
            let id = state.withLock { s -> Int in
                s.nextWaiter += 1
                return s.nextWaiter
            }
            let satisfied = await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let parked = state.withLock { s -> Bool in
                        guard !condition(s), !Task.isCancelled else { return false }
                        s.waiters[id] = continuation
                        return true
                    }
                    if !parked { continuation.resume() }
                }
                return state.withLock { condition($0) }
            } onCancel: {
                state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
            }
            if satisfied { return }
        }
    }
}

extension BlobFill.State {
    var isRunning: Bool { outcome.isRunning }
    var isFailed: Bool {
        if case .failed = outcome { return true }
        return false
    }
    /// Every byte is written and verified: the whole body may go out.
    var isComplete: Bool {
        if case .done = outcome { return true }
        return verified && isRunning
    }
}

extension BlobFill.Outcome {
    var isRunning: Bool {
        if case .running = self { return true }
        return false
    }
}

/// Reads a fill's spool as it grows (see `BlobFill.reader()`).
struct FillReader: BlobReader {
    let fill: BlobFill
    /// Counts this reader (and its copies) among the fill's readers while it lives.
    let token: ReaderToken

    func size() async throws -> Int64? { try await fill.size() }

    func chunks(from offset: Int64, length: Int64?) -> BlobChunks {
        let fill = self.fill
        return BlobChunks(from: offset, length: length) { at, maxLength throws in
            let end = try await fill.sendable(beyond: at)
            return try fill.file.read(at: at, maxLength: Int(min(Int64(maxLength), end - at)))
        }
    }

    var fileRegions: FileRegionSource? {
        let fill = self.fill
        return FileRegionSource(file: fill.file) { try await fill.sendable(beyond: $0) }
    }
}

/// One reader of a fill, counted from its making to its end.
final class ReaderToken: Sendable {
    let fill: BlobFill
    init(fill: BlobFill) {
        self.fill = fill
        fill.update { $0.readers += 1 }
    }
    deinit { fill.update { $0.readers -= 1 } }
}

extension BlobFill {
    /// Where the bytes that may be sent end, once there are some beyond `offset`; `offset`
    /// itself when every byte was sent. Throws the fill's failure.
    func sendable(beyond offset: Int64) async throws(MirrorError) -> Int64 {
        let available = try await available(beyond: offset)
        return max(offset, available.sendable)
    }
}

/// Feeds an upstream body into a store writer and a fill's progress mark.
final class FillSink: TransferSink, @unchecked Sendable {
    // Called only on the transfer thread.
    let writer: any BlobWriter
    let fill: BlobFill
    private(set) var status = 0
    /// A write to the store that failed (a full disk, say): the mirror's fault, not the
    /// upstream's, whatever the transfer reports after the sink gave up.
    private(set) var storeError: StoreError?

    init(writer: any BlobWriter, fill: BlobFill) {
        self.writer = writer
        self.fill = fill
    }

    func head(_ head: ResponseHead) -> Bool {
        status = head.status
        guard (200..<300).contains(head.status) else { return false }
        fill.started(contentLength: head.contentLength)
        return true
    }

    func body(_ chunk: UnsafeRawBufferPointer) throws {
        do {
            try writer.write(chunk)
        } catch {
            if error.code == .io { storeError = error }
            throw error
        }
        fill.advanced(to: writer.bytesWritten)
    }
}
