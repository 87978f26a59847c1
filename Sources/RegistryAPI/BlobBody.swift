import ContentStore
import Foundation
import Hummingbird
import Mirror
import NIOCore
import Synchronization

/// The body of a blob response, read from a file the mirror core already opened: a stored
/// blob, or the growing file of a download in progress (`fill`).
///
/// Where the connection can send files and the length is known, each stretch goes out as a
/// file region (sendfile), and the next is queued only once the one before it was written,
/// so a reader holds no data in memory and waits on its own socket. Otherwise it falls back
/// to small buffered reads; a body of unknown length (a chunked upstream) is sent chunked,
/// its end held back until the digest is verified. If the download fails, the body throws
/// and the connection is cut: the client sees an error, never wrong bytes.
struct BlobBody: Sendable {
    let file: ReadableFile
    let fill: BlobFill?
    let start: Int64
    /// Nil: unknown, until the fill completes.
    let length: Int64?
    /// Kept alive until the body is written (a lease against eviction).
    let holding: (any Sendable)?

    static let chunkSize = 64 << 10

    func body(channel: any Channel, served: @escaping @Sendable (Int64) -> Void) -> ResponseBody {
        ResponseBody(contentLength: length.map { Int($0) }) { writer in
            var sent: (all: Int64, regions: Int64) = (0, 0)
            defer {
                served(sent.all)
                SentBytes.current?.add(sent.regions)
                withExtendedLifetime(holding) {}
            }
            try await stream(to: &writer, channel: channel, sent: &sent)
            try await writer.finish(nil)
        }
    }

    private func stream(to writer: inout some ResponseBodyWriter, channel: any Channel, sent: inout (all: Int64, regions: Int64)) async throws {
        let end = length.map { start + $0 }
        var offset = start
        var inflight: [(written: EventLoopFuture<Void>, bytes: Int64)] = []
        var buffer: ByteBuffer?
        var zeroCopy = end != nil
        while end.map({ offset < $0 }) ?? true {
            var limit = end ?? .max
            if let fill {
                let available: (sendable: Int64, complete: Bool)
                do throws(MirrorError) {
                    available = try await fill.available(beyond: offset)
                } catch {
                    throw RegistryError(error)
                }
                if available.sendable <= offset {
                    // Complete, with nothing left to send.
                    guard end == nil else { throw RegistryError(.unknown, "the download of \(fill.digest) ended short") }
                    break
                }
                limit = min(limit, available.sendable)
            }
            if zeroCopy {
                let region = dup(file.descriptor)
                if region >= 0, let written = await channel.enqueueFileRegion(descriptor: region, offset: offset, length: limit - offset) {
                    try await writer.write(FileRegionHandler.marker)
                    inflight.append((written, limit - offset))
                    offset = limit
                    // At most two regions queued: the socket's pace is the reader's pace.
                    if inflight.count >= 2 {
                        let first = inflight.removeFirst()
                        try await first.written.get()
                        sent.all += first.bytes
                        sent.regions += first.bytes
                    }
                    continue
                }
                if region >= 0 { close(region) }
                zeroCopy = false
            }
            var chunk = buffer ?? ByteBufferAllocator().buffer(capacity: Self.chunkSize)
            while offset < limit {
                let count = Int(min(Int64(Self.chunkSize), limit - offset))
                chunk.clear()
                let read = chunk.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
                    max(0, pread(file.descriptor, raw.baseAddress!, count, off_t(offset)))
                }
                guard read > 0 else { throw RegistryError(.unknown, "reading a blob file failed at byte \(offset)") }
                try await writer.write(chunk)
                offset += Int64(read)
                sent.all += Int64(read)
            }
            buffer = chunk
        }
        for entry in inflight {
            try await entry.written.get()
            sent.all += entry.bytes
            sent.regions += entry.bytes
        }
    }
}

/// Bytes of file regions a response body sent, for the request log, which sees only their
/// stand-in markers pass through the body writer.
final class SentBytes: Sendable {
    @TaskLocal static var current: SentBytes?
    private let count = Mutex<Int64>(0)

    func add(_ bytes: Int64) { count.withLock { $0 += bytes } }
    var value: Int64 { count.withLock { $0 } }
}
