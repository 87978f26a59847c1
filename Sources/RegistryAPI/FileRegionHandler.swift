import HTTPTypes
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
final class FileRegionHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// The body part that stands for "the next queued region".
    static let marker = ByteBuffer(bytes: Array("\u{0}registry-mirror-file-region\u{0}".utf8))

    private var pending: [(region: FileRegion, handle: NIOFileHandle)] = []
    private var codecContext: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        codecContext = try? context.pipeline.syncOperations.context(handlerType: HTTP1ToHTTPServerCodec.self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        for entry in pending { try? entry.handle.close() }
        pending.removeAll()
    }

    /// Queues a region of an open file; the handler owns and closes the descriptor.
    func enqueue(descriptor: Int32, offset: Int64, length: Int64) {
        let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
        let region = FileRegion(fileHandle: handle, readerIndex: Int(offset), endIndex: Int(offset + length))
        pending.append((region, handle))
    }

    var isUsable: Bool { codecContext != nil }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if !pending.isEmpty, let codec = codecContext, case .body(let buffer) = unwrapOutboundIn(data), buffer == Self.marker {
            let entry = pending.removeFirst()
            let done = promise ?? context.eventLoop.makePromise()
            done.futureResult.whenComplete { _ in try? entry.handle.close() }
            codec.write(NIOAny(HTTPServerResponsePart.body(.fileRegion(entry.region))), promise: done)
            return
        }
        context.write(data, promise: promise)
    }
}

extension Channel {
    /// Queues a file region for the next marker body part, if this channel can send files.
    /// Returns false (and closes nothing) when it cannot, e.g. under a test harness.
    func enqueueFileRegion(descriptor: Int32, offset: Int64, length: Int64) async -> Bool {
        let result = try? await eventLoop.submit { () -> Bool in
            guard let handler = try? self.pipeline.syncOperations.handler(type: FileRegionHandler.self), handler.isUsable else {
                return false
            }
            handler.enqueue(descriptor: descriptor, offset: offset, length: length)
            return true
        }.get()
        return result ?? false
    }
}
