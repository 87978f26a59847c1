import ContentStore
import Dispatch
import Foundation
import Synchronization

/// A stored blob read from S3: its size from the HEAD that opened it, its bytes from ranged,
/// streaming GETs. There is no local file, so no `fileRegions`. With a `redirectExpiry` (the
/// store's), it offers a presigned URL of the object for a client to fetch it from S3.
struct S3BlobReader: RedirectingBlobReader {
    let connection: S3Connection
    let key: String
    let blobSize: Int64
    let redirectExpiry: Duration?

    init(connection: S3Connection, key: String, size: Int64, redirectExpiry: Duration? = nil) {
        self.connection = connection
        self.key = key
        self.blobSize = size
        self.redirectExpiry = redirectExpiry
    }

    func redirectLocation() -> String? {
        redirectExpiry.map { connection.presignedURL(key: key, expiry: $0, now: Date()) }
    }

    func size() async throws -> Int64? { blobSize }

    /// One GET of the whole range, read as the consumer pulls: a bounded buffer sits between
    /// the transfer thread, which waits while it is full, and the consumer.
    func chunks(from offset: Int64, length: Int64?) -> BlobChunks {
        let end = min(blobSize, length.map { offset + $0 } ?? blobSize)
        let stream = S3RangeStream(connection: connection, key: key, end: end)
        return BlobChunks(from: offset, length: length) { at, maxLength in
            try await stream.read(at: at, maxLength: maxLength)
        }
    }

    var fileRegions: FileRegionSource? { nil }
}

/// The consumer's side of a ranged read. It owns the transfer in progress: when the consumer
/// lets go (the response ended or its client hung up) the transfer is stopped. A transfer that
/// fails midway (a reset, a server that timed out a slow reader) is resumed where the consumer
/// is, a few times in a row at most.
final class S3RangeStream: Sendable {
    private let connection: S3Connection
    private let key: String
    private let end: Int64
    private let current = Mutex<(feed: S3Feed?, failures: Int)>((nil, 0))
    static let retries = 3

    init(connection: S3Connection, key: String, end: Int64) {
        self.connection = connection
        self.key = key
        self.end = end
    }

    deinit { current.withLock { $0.feed?.cancel() } }

    func read(at offset: Int64, maxLength: Int) async throws -> [UInt8] {
        guard offset < end, maxLength > 0 else { return [] }
        while true {
            let feed = current.withLock { state -> S3Feed in
                if let feed = state.feed, feed.position == offset { return feed }
                // A first read, or one elsewhere than where the transfer is: a new GET.
                state.feed?.cancel()
                let feed = S3Feed(start: offset)
                state.feed = feed
                start(feed)
                return feed
            }
            switch try await feed.take(maxLength) {
            case .bytes(let bytes):
                current.withLock { $0.failures = 0 }
                return bytes
            case .failed(let error):
                let retry = current.withLock { state -> Bool in
                    state.failures += 1
                    state.feed = nil
                    return state.failures <= Self.retries && error.code != .notFound
                }
                guard retry else { throw error }
            }
        }
    }

    private func start(_ feed: S3Feed) {
        let request = S3Request(method: "GET", key: key, headers: [("Range", "bytes=\(feed.start)-\(end - 1)")])
        let connection = self.connection, end = self.end
        let thread = Thread {
            let outcome: StoreError?
            do throws(StoreError) {
                let response = try connection.perform(request) { status, bytes in feed.push(status: status, bytes) }
                if !(200..<300).contains(response.status) {
                    outcome = response.error("GET \(request.key ?? "") bytes \(feed.start)-")
                } else {
                    outcome = feed.delivered < end ? StoreError(.io, "S3 GET \(request.key ?? ""): the body ended at byte \(feed.delivered) of \(end)") : nil
                }
            } catch {
                outcome = error
            }
            feed.finish(outcome)
        }
        thread.name = "s3-read"
        thread.stackSize = 512 << 10
        thread.start()
    }
}

/// The buffer between one GET's transfer thread and the consumer.
final class S3Feed: Sendable {
    let start: Int64
    static let capacity = 1 << 20
    private let state = Mutex(State())
    /// The producer waits on it while the buffer is full.
    private let space = DispatchSemaphore(value: 0)

    private struct State {
        var pieces: [[UInt8]] = []
        var head = 0          // bytes of pieces[0] already taken
        var buffered = 0
        var position: Int64 = 0
        var received: Int64 = 0
        var done = false
        var failure: StoreError?
        var cancelled = false
        var producerWaiting = false
        var consumer: CheckedContinuation<Void, Never>?
    }

    enum Taken { case bytes([UInt8]), failed(StoreError) }

    init(start: Int64) {
        self.start = start
        state.withLock {
            $0.position = start
            $0.received = start
        }
    }

    /// Where the consumer's next byte is.
    var position: Int64 { state.withLock { $0.position } }
    /// The end of what the GET delivered.
    var delivered: Int64 { state.withLock { $0.received } }

    /// On the transfer thread: queues a piece, waiting while the buffer is full. False stops the
    /// transfer (the consumer went away, or S3 sent the whole object instead of the range).
    func push(status: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        if status != 206 && !(status == 200 && start == 0) {
            finish(StoreError(.io, "S3 answered \(status) to a ranged GET"))
            return false
        }
        while true {
            let (proceed, consumer) = state.withLock { state -> (Bool?, CheckedContinuation<Void, Never>?) in
                if state.cancelled || state.done { return (false, nil) }
                if state.buffered >= Self.capacity {
                    state.producerWaiting = true
                    return (nil, nil)
                }
                state.pieces.append(Array(bytes))
                state.buffered += bytes.count
                state.received += Int64(bytes.count)
                let consumer = state.consumer
                state.consumer = nil
                return (true, consumer)
            }
            consumer?.resume()
            if let proceed { return proceed }
            space.wait()
        }
    }

    /// The transfer ended (nil: the whole range arrived).
    func finish(_ failure: StoreError?) {
        let consumer = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.done else { return nil }
            state.done = true
            state.failure = failure
            let consumer = state.consumer
            state.consumer = nil
            return consumer
        }
        consumer?.resume()
    }

    /// Stops the transfer at its next piece.
    func cancel() {
        let wake = state.withLock { state -> Bool in
            state.cancelled = true
            defer { state.producerWaiting = false }
            return state.producerWaiting
        }
        if wake { space.signal() }
    }

    /// Up to `maxLength` bytes, waiting for them; `.failed` when the transfer failed first.
    func take(_ maxLength: Int) async throws -> Taken {
        while true {
            try Task.checkCancellation()
            enum Step { case bytes([UInt8], wakeProducer: Bool), failed(StoreError), wait }
            let step = state.withLock { state -> Step in
                if state.buffered > 0 {
                    var out: [UInt8] = []
                    out.reserveCapacity(min(maxLength, state.buffered))
                    while out.count < maxLength, !state.pieces.isEmpty {
                        let piece = state.pieces[0]
                        let n = min(maxLength - out.count, piece.count - state.head)
                        out += piece[state.head..<state.head + n]
                        state.head += n
                        if state.head == piece.count {
                            state.pieces.removeFirst()
                            state.head = 0
                        }
                    }
                    state.buffered -= out.count
                    state.position += Int64(out.count)
                    let wake = state.producerWaiting && state.buffered < Self.capacity
                    if wake { state.producerWaiting = false }
                    return .bytes(out, wakeProducer: wake)
                }
                if state.done {
                    return .failed(state.failure ?? StoreError(.io, "S3 GET ended before the range did"))
                }
                return .wait
            }
            switch step {
            case .bytes(let bytes, let wake):
                if wake { space.signal() }
                return .bytes(bytes)
            case .failed(let error):
                return .failed(error)
            case .wait:
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let ready = state.withLock { state -> Bool in
                            if state.buffered > 0 || state.done { return true }
                            state.consumer = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: {
                    let consumer = state.withLock { state -> CheckedContinuation<Void, Never>? in
                        defer { state.consumer = nil }
                        return state.consumer
                    }
                    consumer?.resume()
                }
            }
        }
    }
}
