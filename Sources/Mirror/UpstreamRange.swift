import ContentStore
import Foundation
import Upstream

/// The upstream's answer to a ranged GET, streamed to one client and never to the store: a
/// piece of a blob cannot be checked against the blob's digest, so it is never kept. The
/// cache still fills only from the one whole-blob download.
///
/// The transfer thread hands the body over through a bounded buffer and blocks while it is
/// full, so a slow client slows the upstream transfer instead of filling memory. `close()`
/// (the response ended, or its client left) stops the transfer.
///
/// As a `BlobReader` it is read once, from its start: its chunks are the relayed body.
public final class UpstreamRange: BlobReader {
    /// The upstream's `Content-Range` (nil for a multipart answer, which carries one per part).
    public let contentRange: String?
    /// The upstream's `Content-Length`; nil when it streams chunked.
    public let contentLength: Int64?
    /// `multipart/byteranges; boundary=…` for several ranges, nil for one.
    public let multipartType: String?
    let relay: RangeRelay

    init(head: ResponseHead, relay: RangeRelay) {
        contentRange = head.header("content-range")
        contentLength = head.contentLength
        let type = head.header("content-type")
        multipartType = type.flatMap { $0.lowercased().hasPrefix("multipart/byteranges") ? $0 : nil }
        self.relay = relay
    }

    /// The next piece of the body; nil at its end. Throws when the upstream transfer failed.
    public func next() async throws(MirrorError) -> [UInt8]? { try await relay.next() }

    /// Stops the upstream transfer, if it still runs. Idempotent.
    public func close() { relay.close() }

    public func size() async throws -> Int64? { contentLength }

    /// The relayed body; `offset` and `length` are ignored, since the upstream already cut it.
    public func chunks(from offset: Int64, length: Int64?) -> BlobChunks {
        BlobChunks(from: 0, length: nil) { [self] _, _ throws in try await next() ?? [] }
    }

    public var fileRegions: FileRegionSource? { nil }

    var relayed: RelayedRange { RelayedRange(contentRange: contentRange, multipartType: multipartType) }
}

/// Hands a ranged upstream body from the transfer thread to the response, at most `limit`
/// bytes at a time. The transfer thread is libcurl's own (never the cooperative pool), so it
/// may block while the buffer is full.
final class RangeRelay: TransferSink, @unchecked Sendable {
    // Everything below is guarded by `condition`; the transfer thread waits on it while full.
    private let condition = NSCondition()
    private var accepted: ResponseHead?
    private var headSettled = false
    private var headWaiter: CheckedContinuation<ResponseHead?, Never>?
    private var chunks: [[UInt8]] = []
    private var buffered = 0
    private var ended: Result<Void, MirrorError>?
    private var closed = false
    private var reader: CheckedContinuation<Void, Never>?
    let limit: Int

    init(limit: Int = 1 << 20) { self.limit = limit }

    // MARK: Transfer side

    /// Only a 206 that says what it holds (a `Content-Range`, or parts of a multipart body)
    /// is relayed. Anything else, a 200 (the upstream ignores `Range`) or an error, is
    /// drained, and the caller falls back to the whole-blob fill.
    func head(_ head: ResponseHead) -> Bool {
        guard head.status == 206, head.header("content-range") != nil
                || head.header("content-type")?.lowercased().hasPrefix("multipart/byteranges") == true else { return false }
        condition.lock()
        guard !closed, !headSettled else {
            condition.unlock()
            return false
        }
        accepted = head
        headSettled = true
        let waiter = headWaiter
        headWaiter = nil
        condition.unlock()
        waiter?.resume(returning: head)
        return true
    }

    func body(_ chunk: UnsafeRawBufferPointer) throws {
        condition.lock()
        while buffered >= limit, !closed { condition.wait() }
        guard !closed else {
            condition.unlock()
            throw MirrorError(.internal, "the client of a ranged answer is gone")
        }
        chunks.append(Array(chunk))
        buffered += chunk.count
        let waiting = reader
        reader = nil
        condition.unlock()
        waiting?.resume()
    }

    /// The transfer ended: cleanly, or with the upstream's failure.
    func finish(_ outcome: Result<Void, MirrorError>) {
        condition.lock()
        ended = outcome
        let waiters = settleHead()
        condition.unlock()
        resume(waiters)
    }

    // MARK: Response side

    /// Waits for the upstream's 206 head; nil if it answered anything else, failed, or the
    /// caller was cancelled.
    func acceptedHead() async -> ResponseHead? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ResponseHead?, Never>) in
                condition.lock()
                if headSettled {
                    let head = accepted
                    condition.unlock()
                    continuation.resume(returning: head)
                } else {
                    headWaiter = continuation
                    condition.unlock()
                }
            }
        } onCancel: {
            close()
        }
    }

    private enum Taken {
        case chunk([UInt8])
        case ended(Result<Void, MirrorError>)
        case closed
        case nothingYet
    }

    private func take() -> Taken {
        condition.lock()
        defer { condition.unlock() }
        if !chunks.isEmpty {
            let chunk = chunks.removeFirst()
            buffered -= chunk.count
            condition.signal()
            return .chunk(chunk)
        }
        if let ended { return .ended(ended) }
        return closed ? .closed : .nothingYet
    }

    func next() async throws(MirrorError) -> [UInt8]? {
        while true {
            switch take() {
            case .chunk(let chunk): return chunk
            case .ended(let outcome):
                try outcome.get()
                return nil
            case .closed: throw MirrorError(.internal, "the ranged answer was cancelled")
            case .nothingYet: if Task.isCancelled { throw MirrorError(.internal, "the ranged answer was cancelled") }
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    condition.lock()
                    if chunks.isEmpty, ended == nil, !closed {
                        reader = continuation
                        condition.unlock()
                    } else {
                        condition.unlock()
                        continuation.resume()
                    }
                }
            } onCancel: {
                close()
            }
        }
    }

    func close() {
        condition.lock()
        closed = true
        chunks.removeAll()
        buffered = 0
        condition.broadcast()
        let waiters = settleHead()
        condition.unlock()
        resume(waiters)
    }

    private typealias Waiters = (head: CheckedContinuation<ResponseHead?, Never>?, accepted: ResponseHead?, reader: CheckedContinuation<Void, Never>?)

    /// Under the lock: the head is settled from now on (nil if none was accepted); whoever
    /// waits is to be woken, outside the lock.
    private func settleHead() -> Waiters {
        headSettled = true
        defer {
            headWaiter = nil
            reader = nil
        }
        return (headWaiter, accepted, reader)
    }

    private func resume(_ waiters: Waiters) {
        waiters.head?.resume(returning: waiters.accepted)
        waiters.reader?.resume()
    }
}
