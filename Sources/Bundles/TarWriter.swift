#if canImport(Glibc)
import Glibc
#endif

/// Writes a POSIX tar archive that `TarReader`, GNU tar and Go's `archive/tar` (skopeo) read:
/// ustar headers, a PAX `path` record for names over 100 bytes, and GNU base-256 sizes from
/// 8 GiB up (the octal field stops at 8 GiB − 1). File data streams through; nothing is held
/// whole. Times, owners and modes are fixed, so the same content gives the same archive.
struct TarWriter {
    static let blockSize = 512
    /// The largest size the 11 octal digits of the ustar size field hold.
    static let maxOctalSize: Int64 = 0o77777777777

    let path: String
    private var descriptor: Int32
    /// Archive bytes written so far, headers and padding included.
    private(set) var bytesWritten: Int64 = 0
    /// The file between `beginFile` and `endFile`.
    private var current: (name: String, size: Int64, written: Int64)?

    /// Creates `path`, which must not exist.
    init(creating path: String) throws(BundleError) {
        self.path = path
        descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw BundleError("cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    /// A directory entry; `name` without the trailing slash.
    mutating func addDirectory(_ name: String) throws(BundleError) {
        try writeHeaders(name: name + "/", size: 0, type: UInt8(ascii: "5"), mode: 0o755)
    }

    /// A regular file of exactly `size` bytes, which `contents` pushes into its sink.
    mutating func addFile(_ name: String, size: Int64, contents: TarReader.Pump) throws(BundleError) {
        try beginFile(name, size: size)
        try contents { (chunk) throws(BundleError) in try append(chunk) }
        try endFile()
    }

    /// Starts a regular file of exactly `size` bytes; `append` its data, then `endFile()`.
    /// For data that arrives between awaits (a blob streamed from a remote store).
    mutating func beginFile(_ name: String, size: Int64) throws(BundleError) {
        try writeHeaders(name: name, size: size, type: UInt8(ascii: "0"), mode: 0o644)
        current = (name, size, 0)
    }

    mutating func append(_ chunk: UnsafeRawBufferPointer) throws(BundleError) {
        guard let file = current else { throw BundleError("tar data outside a file") }
        guard file.written + Int64(chunk.count) <= file.size else { throw BundleError("\(file.name): more than the announced \(file.size) bytes") }
        try write(chunk)
        current!.written += Int64(chunk.count)
    }

    mutating func endFile() throws(BundleError) {
        guard let file = current else { throw BundleError("tar file ended twice") }
        current = nil
        guard file.written == file.size else { throw BundleError("\(file.name): \(file.written) bytes, \(file.size) announced") }
        try pad(file.size)
    }

    mutating func addFile(_ name: String, bytes: [UInt8]) throws(BundleError) {
        try addFile(name, size: Int64(bytes.count)) { (sink) throws(BundleError) in
            try bytes.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(raw) } }.get()
        }
    }

    /// Writes the end-of-archive marker and makes the file durable. The descriptor stays open
    /// until `close()`.
    mutating func finish() throws(BundleError) {
        try write(zeros: 2 * Self.blockSize)
        guard fsync(descriptor) == 0 else { throw BundleError("fsync \(path): \(String(cString: strerror(errno)))") }
    }

    mutating func close() {
        if descriptor >= 0 { _ = Glibc.close(descriptor) }
        descriptor = -1
    }

    // MARK: Headers

    private mutating func writeHeaders(name: String, size: Int64, type: UInt8, mode: Int) throws(BundleError) {
        if name.utf8.count > 100 {
            // The header's own name field gets a truncated copy; readers take the PAX path.
            let record = Self.paxRecord("path", name)
            try write(Self.header(name: "PaxHeaders/" + String(decoding: name.utf8.suffix(80), as: UTF8.self),
                                  size: Int64(record.count), type: UInt8(ascii: "x"), mode: 0o644))
            try write(record)
            try pad(Int64(record.count))
        }
        try write(Self.header(name: name, size: size, type: type, mode: mode))
    }

    /// One 512-byte ustar header. A name over 100 bytes is cut (a PAX record carries it whole).
    static func header(name: String, size: Int64, type: UInt8, mode: Int) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: blockSize)
        func put(_ bytes: some Collection<UInt8>, at offset: Int) {
            for (i, byte) in bytes.enumerated() { block[offset + i] = byte }
        }
        func octal(_ value: Int64, width: Int) -> [UInt8] {
            let digits = String(value, radix: 8)
            return Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8) + [0]
        }
        put(name.utf8.prefix(100), at: 0)
        put(octal(Int64(mode), width: 8), at: 100)
        put(octal(0, width: 8), at: 108)
        put(octal(0, width: 8), at: 116)
        if size <= maxOctalSize {
            put(octal(size, width: 12), at: 124)
        } else {
            // GNU base-256: high bit set, then the value big-endian in the remaining 11 bytes.
            var value = UInt64(size)
            for i in stride(from: 135, through: 125, by: -1) {
                block[i] = UInt8(value & 0xFF)
                value >>= 8
            }
            block[124] = 0x80
        }
        put(octal(0, width: 12), at: 136)
        put("        ".utf8, at: 148)
        block[156] = type
        put("ustar".utf8, at: 257)
        put("00".utf8, at: 263)
        let sum = block.reduce(0) { $0 + Int($1) }
        put(octal(Int64(sum), width: 7) + [UInt8(ascii: " ")], at: 148)
        return block
    }

    /// `"<length> key=value\n"`, where the length counts itself.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n"
        var length = body.utf8.count + 1
        while String(length).utf8.count + body.utf8.count != length { length += 1 }
        return Array((String(length) + body).utf8)
    }

    // MARK: Writing

    private mutating func pad(_ size: Int64) throws(BundleError) {
        let remainder = Int(size % Int64(Self.blockSize))
        if remainder != 0 { try write(zeros: Self.blockSize - remainder) }
    }

    private mutating func write(zeros count: Int) throws(BundleError) {
        try write([UInt8](repeating: 0, count: count))
    }

    private mutating func write(_ bytes: [UInt8]) throws(BundleError) {
        try bytes.withUnsafeBytes { raw in Result { () throws(BundleError) in try write(raw) } }.get()
    }

    private mutating func write(_ buffer: UnsafeRawBufferPointer) throws(BundleError) {
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw BundleError("writing \(path): \(String(cString: strerror(errno)))")
            }
            offset += n
        }
        bytesWritten += Int64(buffer.count)
    }
}
