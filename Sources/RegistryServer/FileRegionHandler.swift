#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ContentStore
import HTTPTypes
import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOPosix

/// Sends blob files with `sendfile(2)` instead of copying them through `ByteBuffer`s.
///
/// Hummingbird's body writers only carry `ByteBuffer`s, and its typed HTTP parts cannot hold
/// a `FileRegion`. This handler sits just above the HTTP/1 codec (Hummingbird's
/// `additionalChannelHandlers`). A response that wants zero-copy enqueues a file region
/// here on the event loop, then writes a marker body part; the handler swaps the marker for
/// the region and hands it to the HTTP/1 encoder below the codec, which passes file regions
/// through when `Content-Length` is set. Measured in docs/benchmarks.md.
///
/// Responses use it through `ZeroCopySender`, never directly. It is plain-HTTP only: a TLS
/// pipeline has no place for a file region, and leaves it out.
final class FileRegionHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// The body part that stands for "the next queued region".
    static let marker = ByteBuffer(bytes: Array("\u{0}registry-mirror-file-region\u{0}".utf8))

    private var pending: [(region: FileRegion, handle: NIOFileHandle, completion: EventLoopPromise<Void>?)] = []
    private var codecContext: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        codecContext = try? context.pipeline.syncOperations.context(handlerType: HTTP1ToHTTPServerCodec.self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        for entry in pending {
            try? entry.handle.close()
            entry.completion?.fail(ChannelError.ioOnClosedChannel)
        }
        pending.removeAll()
    }

    /// Queues a region of an open file; the handler owns and closes the descriptor.
    /// `completion` is completed when the region has been written (or failed).
    func enqueue(descriptor: Int32, offset: Int64, length: Int64, completion: EventLoopPromise<Void>?) {
        let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
        let region = FileRegion(fileHandle: handle, readerIndex: Int(offset), endIndex: Int(offset + length))
        pending.append((region, handle, completion))
    }

    var isUsable: Bool { codecContext != nil }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if !pending.isEmpty, let codec = codecContext, case .body(let buffer) = unwrapOutboundIn(data), buffer == Self.marker {
            let entry = pending.removeFirst()
            let done = promise ?? context.eventLoop.makePromise()
            done.futureResult.whenComplete { result in
                try? entry.handle.close()
                entry.completion?.completeWith(result)
            }
            codec.write(NIOAny(HTTPServerResponsePart.body(.fileRegion(entry.region))), promise: done)
            return
        }
        context.write(data, promise: promise)
    }
}

/// Sends stretches of a blob's local file on one connection with `sendfile(2)`, through the
/// connection's `FileRegionHandler`.
public struct ZeroCopySender: Sendable {
    let channel: any Channel

    /// The body part a response writes for each region; body writers that count bytes skip it.
    public static var marker: ByteBuffer { FileRegionHandler.marker }

    /// A sender for `channel`, or nil when it cannot send files (no handler in its pipeline:
    /// a test harness, a TLS connection, or `--no-sendfile`).
    public init?(channel: any Channel) async {
        let usable = try? await channel.eventLoop.submit { () -> Bool in
            (try? channel.pipeline.syncOperations.handler(type: FileRegionHandler.self))?.isUsable ?? false
        }.get()
        guard usable == true else { return nil }
        self.channel = channel
    }

    /// Sends `[start, end)` of the source's file, a stretch at a time as the source makes bytes
    /// available, with at most two stretches queued: the socket's pace is the reader's pace, and
    /// no bytes are held in memory. Calls `sent` with each stretch once it is written. Returns
    /// where it stopped: `end`, or earlier when the source ended short (the caller must cut the
    /// response) or a region could not be queued (the caller goes on with buffers from there).
    public func send(_ source: FileRegionSource, from start: Int64, to end: Int64, through writer: inout some ResponseBodyWriter,
                     sent: (Int64) -> Void) async throws -> Int64 {
        var offset = start
        var inflight: [(written: EventLoopFuture<Void>, bytes: Int64)] = []
        while offset < end {
            let limit = min(end, try await source.available(beyond: offset))
            guard limit > offset else { break }
            let region = dup(source.file.descriptor)
            guard region >= 0, let written = await channel.enqueueFileRegion(descriptor: region, offset: offset, length: limit - offset) else {
                if region >= 0 { close(region) }
                break
            }
            try await writer.write(Self.marker)
            inflight.append((written, limit - offset))
            offset = limit
            if inflight.count >= 2 {
                let first = inflight.removeFirst()
                try await first.written.get()
                sent(first.bytes)
            }
        }
        for entry in inflight {
            try await entry.written.get()
            sent(entry.bytes)
        }
        return offset
    }
}

extension Channel {
    /// Queues a file region for the next marker body part, if this channel can send files.
    /// Returns a future that completes when the region is written, or nil (closing nothing)
    /// when the channel cannot send files, e.g. under a test harness.
    func enqueueFileRegion(descriptor: Int32, offset: Int64, length: Int64) async -> EventLoopFuture<Void>? {
        let result = try? await eventLoop.submit { () -> EventLoopFuture<Void>? in
            guard let handler = try? self.pipeline.syncOperations.handler(type: FileRegionHandler.self), handler.isUsable else {
                return nil
            }
            let completion = self.eventLoop.makePromise(of: Void.self)
            handler.enqueue(descriptor: descriptor, offset: offset, length: length, completion: completion)
            return completion.futureResult
        }.get()
        return result ?? nil
    }
}
