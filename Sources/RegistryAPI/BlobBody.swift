import ContentStore
import Hummingbird
import Mirror
import NIOCore
import RegistryServer
import Synchronization

/// The body of a blob response, from the reader the mirror core opened before the head went
/// out: a stored blob, a download in progress, or an upstream's ranged answer, all alike.
///
/// Where the reader has a local file, the connection can send files and the length is known,
/// the bytes go out with sendfile (`ZeroCopySender`), holding nothing in memory. Otherwise
/// they go as buffers pulled from the reader one at a time, each written once at most one
/// other is unwritten (`WritePacing`, on TLS and plain HTTP alike), so the socket's pace is the
/// reader's pace; a body of unknown length (a chunked upstream) is sent chunked. If the
/// content fails (a download that failed), or ends short, the body throws and the connection
/// is cut: the client sees an error, never wrong bytes. When it ends, however it ends, the
/// content is told how many bytes went out.
struct BlobBody: Sendable {
    let content: BlobContent
    let start: Int64
    /// Nil: unknown, until the reader ends.
    let length: Int64?

    func body(channel: any Channel) -> ResponseBody {
        ResponseBody(contentLength: length.map { Int($0) }) { writer in
            var sent: (all: Int64, zeroCopy: Int64) = (0, 0)
            defer {
                content.finished(sent: sent.all)
                SentBytes.current?.add(sent.zeroCopy)
            }
            try await stream(to: &writer, channel: channel, sent: &sent)
            try await writer.finish(nil)
        }
    }

    private func stream(to writer: inout some ResponseBodyWriter, channel: any Channel, sent: inout (all: Int64, zeroCopy: Int64)) async throws {
        let reader = content.reader
        let end = length.map { start + $0 }
        var offset = start
        if let end, let source = reader.fileRegions, let sender = await ZeroCopySender(channel: channel) {
            offset = try await sender.send(source, from: offset, to: end, through: &writer) { bytes in
                sent.all += bytes
                sent.zeroCopy += bytes
            }
        }
        // Nothing left after sendfile: no look at the pipeline on the warm path.
        let pacing = offset == end ? nil : await WritePacing(channel: channel)
        for try await chunk in reader.chunks(from: offset, length: end.map { $0 - offset }) {
            try await writer.write(ByteBuffer(bytes: chunk))
            try await pacing?.wait()
            offset += Int64(chunk.count)
            sent.all += Int64(chunk.count)
        }
        if let end, offset != end {
            throw RegistryError(.unknown, "the blob ended after \(offset - start) of \(end - start) bytes")
        }
    }
}

/// Bytes sent with sendfile by a response body, for the request log, which sees only their
/// stand-in markers pass through the body writer.
final class SentBytes: Sendable {
    @TaskLocal static var current: SentBytes?
    private let count = Mutex<Int64>(0)

    func add(_ bytes: Int64) { count.withLock { $0 += bytes } }
    var value: Int64 { count.withLock { $0 } }
}
