import ContentStore
import HummingbirdCore
import NIOCore
import NIOHTTPTypes

/// Counts the response body bytes written on a connection that have not yet reached the
/// socket, so a body writer can wait for them: write-completion backpressure.
///
/// Hummingbird's body writer returns once a part is handed to the channel, and the channel's
/// writability reaches a writer on another thread only after the event loop has caught up:
/// a producer that reads a blob faster than its client takes it piles the blob up in memory
/// (measured over TLS: 170 MB peak for one 256 MiB blob, 2 GB for eight; over plain HTTP with
/// `--no-sendfile`, up to 400 MiB for eight: `bench/tls.sh --plain`). With the pacer a body written as buffers keeps at most
/// `WritePacing.inFlightBytes` between the reader and the socket. Every pipeline has one: on
/// plain HTTP it sits above `FileRegionHandler`, whose sendfile bodies need no pacing.
final class WritePacer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var outstanding = 0
    private var waiters: [(below: Int, promise: EventLoopPromise<Void>)] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .body(let buffer) = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        let bytes = buffer.readableBytes
        outstanding += bytes
        let done = promise ?? context.eventLoop.makePromise()
        done.futureResult.assumeIsolated().whenComplete { _ in
            self.outstanding -= bytes
            self.wake()
        }
        context.write(data, promise: done)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        outstanding = 0
        wake()
    }

    /// Completes once fewer than `below` body bytes are unwritten.
    func fewer(than below: Int, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        guard outstanding >= below else { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        waiters.append((below, promise))
        return promise.futureResult
    }

    private func wake() {
        let ready = waiters.filter { outstanding < $0.below }
        guard !ready.isEmpty else { return }
        waiters.removeAll { outstanding < $0.below }
        for waiter in ready { waiter.promise.succeed() }
    }
}

/// Write-completion backpressure for a body written as buffers, through the connection's
/// `WritePacer`.
public struct WritePacing: Sendable {
    let channel: any Channel
    /// Body bytes a writer may have on their way to the socket: two of the readers' buffers, so
    /// the reader fills the next while the socket takes the last. Counted in bytes, not parts,
    /// so a relayed upstream body, in the pieces libcurl read (often a few KiB), still keeps
    /// the socket busy.
    public static let inFlightBytes = 2 * BlobChunks.defaultSize

    /// Pacing for `channel`, or nil when its pipeline has no pacer (a test harness).
    public init?(channel: any Channel) async {
        let present = try? await channel.eventLoop.submit { () -> Bool in
            (try? channel.pipeline.syncOperations.handler(type: WritePacer.self)) != nil
        }.get()
        guard present == true else { return nil }
        self.channel = channel
    }

    /// Returns once fewer than `inFlightBytes` of the body written so far are still on their way.
    public func wait() async throws {
        try await channel.eventLoop.flatSubmit { () -> EventLoopFuture<Void> in
            guard let pacer = try? channel.pipeline.syncOperations.handler(type: WritePacer.self) else {
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            return pacer.fewer(than: Self.inFlightBytes, on: channel.eventLoop)
        }.get()
    }
}
