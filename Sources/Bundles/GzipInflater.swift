import CZlib

/// Inflates a gzip stream chunk by chunk (several members allowed, as `cat a.gz b.gz` makes),
/// for the uncompressed digest (diff_id) of a compressed layer. Memory stays at one window.
final class GzipInflater {
    private let stream: UnsafeMutablePointer<z_stream>
    private let output: UnsafeMutableRawBufferPointer
    /// True between the end of one member and the start of the next.
    private var memberEnded = false
    private var started = false

    init() throws(BundleError) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        output = .allocate(byteCount: 1 << 16, alignment: 16)
        guard czlib_inflate_init_gzip(stream) == Z_OK else {
            output.deallocate()
            stream.deallocate()
            throw BundleError("cannot start zlib")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
        output.deallocate()
    }

    /// Feeds compressed bytes; `sink` gets the uncompressed bytes they yield.
    func update(_ input: UnsafeRawBufferPointer, _ sink: (UnsafeRawBufferPointer) -> Void) throws(BundleError) {
        guard let base = input.baseAddress, input.count > 0 else { return }
        started = true
        stream.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(input.count)
        while true {
            if memberEnded {
                guard stream.pointee.avail_in > 0 else { return }
                inflateReset(stream)
                memberEnded = false
            }
            stream.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(output.count)
            let result = inflate(stream, Z_NO_FLUSH)
            let produced = output.count - Int(stream.pointee.avail_out)
            if produced > 0 { sink(UnsafeRawBufferPointer(rebasing: output[0..<produced])) }
            switch result {
            case Z_STREAM_END:
                memberEnded = true
            case Z_OK:
                // All input taken and no output pending: wait for the next chunk.
                if stream.pointee.avail_in == 0, stream.pointee.avail_out > 0 { return }
            case Z_BUF_ERROR:
                // No progress was possible: fine when the input is used up, a loop otherwise.
                if stream.pointee.avail_in == 0 { return }
                if produced == 0 { throw BundleError("corrupt gzip data") }
            default:
                throw BundleError("corrupt gzip data (zlib error \(result))")
            }
        }
    }

    /// Throws unless the stream ended at a member boundary.
    func finish() throws(BundleError) {
        guard started, memberEnded else { throw BundleError("gzip data is truncated") }
    }
}
