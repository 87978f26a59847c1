import Hummingbird
import Mirror
import NIOCore

/// The body of a 206 the upstream is sending for a blob the mirror has not cached: relayed as
/// it arrives, with the upstream's length. A transfer that fails or ends short cuts the
/// response, so the client sees an error rather than a short range. Ending, however it ends,
/// stops the upstream transfer.
struct UpstreamRangeBody: Sendable {
    let range: UpstreamRange
    /// Kept alive until the body is written (a lease against eviction).
    let holding: (any Sendable)?

    func body(served: @escaping @Sendable (Int64) -> Void) -> ResponseBody {
        ResponseBody(contentLength: range.contentLength.map { Int($0) }) { writer in
            var sent: Int64 = 0
            defer {
                range.close()
                served(sent)
                withExtendedLifetime(holding) {}
            }
            while true {
                let chunk: [UInt8]?
                do throws(MirrorError) {
                    chunk = try await range.next()
                } catch {
                    throw RegistryError(error)
                }
                guard let chunk else { break }
                try await writer.write(ByteBuffer(bytes: chunk))
                sent += Int64(chunk.count)
            }
            if let length = range.contentLength, sent != length {
                throw RegistryError(.unknown, "the upstream's ranged answer ended after \(sent) of \(length) bytes")
            }
            try await writer.finish(nil)
        }
    }
}
