import ContentStore
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import OCI
import Synchronization
import Upstream

/// One upstream download of one blob, shared by every client that asks for it meanwhile.
///
/// The download thread appends to the store's temporary file (hashing as it goes) and
/// advances a "bytes written" mark. Each reader streams that file from its own offset and,
/// when it catches up, parks until the mark moves. The producer never waits for readers.
/// At the end the store verifies digest and size, fsyncs and renames; only then is the
/// blob a cache entry. A failure wakes every reader with the error, and nothing is kept.
public final class BlobFill: Sendable {
    public enum Outcome: Sendable {
        case running
        /// Verified and published at `path`.
        case done(path: String)
        case failed(MirrorError)
    }

    struct State {
        var size: Int64?
        var written: Int64 = 0
        /// Digest and size checked: the last byte may go out before the fsync and rename.
        var verified = false
        var outcome: Outcome = .running
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    public let digest: Digest
    /// The growing file; renamed away once the fill completes.
    public let temporaryPath: String
    private let state = Mutex(State())

    init(digest: Digest, temporaryPath: String) {
        self.digest = digest
        self.temporaryPath = temporaryPath
    }

    // MARK: Producer side (the download thread)

    func started(size: Int64) { update { $0.size = size } }
    func advanced(to written: Int64) { update { $0.written = written } }
    func verified() { update { $0.verified = true } }
    func finished(_ outcome: Outcome) { update { $0.outcome = outcome } }

    private func update(_ change: (inout State) -> Void) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            change(&s)
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Reader side

    public var snapshot: (size: Int64?, written: Int64, outcome: Outcome) {
        state.withLock { ($0.size, $0.written, $0.outcome) }
    }

    private var verifiedSnapshot: (size: Int64?, written: Int64, outcome: Outcome, verified: Bool) {
        state.withLock { ($0.size, $0.written, $0.outcome, $0.verified) }
    }

    /// Opens the blob for reading: the growing file while the download runs, else the
    /// published file. Between the store's rename and the fill reporting `done`, the temp
    /// path is gone but the outcome not yet known: wait for it rather than fail.
    public func openForReading() async throws(MirrorError) -> Int32 {
        let descriptor = open(temporaryPath, O_RDONLY | O_CLOEXEC)
        if descriptor >= 0 { return descriptor }
        // Progress updates wake waiters too: wait for the outcome itself.
        while snapshot.outcome.isRunning { await waitForChange { $0.isRunning } }
        switch snapshot.outcome {
        case .done(let path):
            let published = open(path, O_RDONLY | O_CLOEXEC)
            if published >= 0 { return published }
            throw MirrorError(.blobUnknown, "\(digest) was published but cannot be opened")
        case .failed(let error):
            throw error
        case .running:
            throw MirrorError(.internal, "the download of \(digest) lost its file")
        }
    }

    /// Waits until the size is known (the upstream's headers arrived) or the fill ended.
    public func size() async throws(MirrorError) -> Int64 {
        while true {
            let (size, _, outcome) = snapshot
            if case .failed(let error) = outcome { throw error }
            if let size { return size }
            await waitForChange { $0.size == nil && $0.isRunning }
        }
    }

    /// Waits until more than `offset` bytes may be sent, or the fill ended. Returns how many
    /// may be sent, or throws the fill's failure.
    ///
    /// While the download runs, the blob's last byte is held back: it goes out only after the
    /// digest was verified, so a client never receives a complete body of wrong bytes. A
    /// failed fill cuts the response short instead, and the client sees an error. The fsync
    /// and rename that publish the blob come after, off the client's critical path.
    public func available(beyond offset: Int64) async throws(MirrorError) -> (written: Int64, outcome: Outcome) {
        while true {
            let (size, written, outcome, verified) = verifiedSnapshot
            if case .failed(let error) = outcome { throw error }
            let sendable = Self.sendable(size: size, written: written, outcome: outcome, verified: verified)
            if sendable > offset || !outcome.isRunning { return (sendable, outcome) }
            await waitForChange {
                Self.sendable(size: $0.size, written: $0.written, outcome: $0.outcome, verified: $0.verified) <= offset && $0.isRunning
            }
        }
    }

    static func sendable(size: Int64?, written: Int64, outcome: Outcome, verified: Bool) -> Int64 {
        guard outcome.isRunning, !verified else { return written }
        return min(written, (size ?? .max) - 1)
    }

    private func waitForChange(while condition: @escaping (State) -> Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let parked = state.withLock { s -> Bool in
                guard condition(s) else { return false }
                s.waiters.append(continuation)
                return true
            }
            if !parked { continuation.resume() }
        }
    }
}

extension BlobFill.State {
    var isRunning: Bool { outcome.isRunning }
}

extension BlobFill.Outcome {
    var isRunning: Bool {
        if case .running = self { return true }
        return false
    }
}

/// Feeds an upstream body into a store writer and a fill's progress mark.
final class FillSink: TransferSink, @unchecked Sendable {
    // Called only on the transfer thread.
    let writer: any BlobWriter
    let fill: BlobFill
    let offset: Int64
    private(set) var status = 0

    init(writer: any BlobWriter, fill: BlobFill, offset: Int64) {
        self.writer = writer
        self.fill = fill
        self.offset = offset
    }

    func head(_ head: ResponseHead) -> Bool {
        status = head.status
        guard (200..<300).contains(head.status) else { return false }
        if offset == 0, let length = head.contentLength { fill.started(size: length) }
        return true
    }

    func body(_ chunk: UnsafeRawBufferPointer) throws {
        try writer.write(chunk)
        fill.advanced(to: writer.bytesWritten)
    }
}
