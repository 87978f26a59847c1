#if canImport(Glibc)
import Glibc
#endif

/// Streams the entries of a POSIX tar archive (ustar, PAX `x` headers, GNU long names),
/// as `skopeo copy … oci-archive:` and `docker save` write them. Entry data is never held
/// whole in memory.
struct TarReader {
    struct Entry {
        let path: String
        let size: Int64
        let isRegularFile: Bool
        /// Where a hard link (`1`, relative to the archive root) or symbolic link (`2`,
        /// relative to the link's folder) points; nil for other entries.
        let linkTarget: String?
        let isSymbolicLink: Bool
        /// Where the entry's data starts in the archive file.
        let offset: Int64
    }

    private let descriptor: Int32
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)

    init(path: String) throws(BundleError) {
        descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw BundleError("cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    func close() { _ = Glibc.close(descriptor) }

    /// Pushes an entry's data, chunk by chunk, into a sink.
    typealias Pump = (_ sink: (UnsafeRawBufferPointer) throws(BundleError) -> Void) throws(BundleError) -> Void

    /// Calls `body` for each regular file and link; `body` may pump a file's data once (a
    /// link has none). Unread data is skipped.
    mutating func forEach(_ body: (Entry, Pump) throws(BundleError) -> Void) throws(BundleError) {
        var header = [UInt8](repeating: 0, count: 512)
        var longName: String?
        var longLink: String?
        var paxPath: String?
        var paxLink: String?
        var paxSize: Int64?
        while true {
            guard try readExactly(&header, count: 512) else { return }
            if header.allSatisfy({ $0 == 0 }) { return }
            try Self.checkChecksum(header)
            let type = header[156]
            var size = try Self.number(header[124..<136])
            if let paxSize { size = paxSize }
            var name = Self.string(header[0..<100])
            if header[257..<262].elementsEqual("ustar".utf8) {
                let prefix = Self.string(header[345..<500])
                if !prefix.isEmpty { name = prefix + "/" + name }
            }
            if let longName { name = longName }
            if let paxPath { name = paxPath }
            let padded = (size + 511) / 512 * 512
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                guard size <= 1 << 20 else { throw BundleError("tar metadata entry is too large") }
                var data = [UInt8](repeating: 0, count: Int(padded))
                guard try readExactly(&data, count: Int(padded)) else { throw BundleError("tar archive is truncated") }
                let content = Array(data.prefix(Int(size)))
                if type == UInt8(ascii: "L") {
                    longName = Self.string(content[...])
                } else if type == UInt8(ascii: "K") {
                    longLink = Self.string(content[...])
                } else {
                    (paxPath, paxLink, paxSize) = try Self.parsePAX(content)
                }
                continue
            case UInt8(ascii: "g"):
                try skip(padded)
                continue
            default:
                break
            }
            let isLink = type == UInt8(ascii: "1") || type == UInt8(ascii: "2")
            let linkTarget = isLink ? (paxLink ?? longLink ?? Self.string(header[157..<257])) : nil
            longName = nil
            longLink = nil
            paxPath = nil
            paxLink = nil
            paxSize = nil
            let entry = Entry(path: Self.clean(name), size: size,
                              isRegularFile: type == UInt8(ascii: "0") || type == 0 || type == UInt8(ascii: "7"),
                              linkTarget: linkTarget, isSymbolicLink: type == UInt8(ascii: "2"),
                              offset: Int64(lseek(descriptor, 0, SEEK_CUR)))
            var remaining = entry.isRegularFile ? size : 0
            if entry.isRegularFile {
                var chunk = buffer
                try body(entry) { (sink) throws(BundleError) in
                    while remaining > 0 {
                        let want = Int(min(Int64(chunk.count), remaining))
                        guard try readExactly(&chunk, count: want) else { throw BundleError("tar archive is truncated inside \(entry.path)") }
                        remaining -= Int64(want)
                        try chunk.withUnsafeBytes { raw in
                            Result { () throws(BundleError) in try sink(UnsafeRawBufferPointer(rebasing: raw.prefix(want))) }
                        }.get()
                    }
                }
                buffer = chunk
            } else if entry.linkTarget != nil {
                try body(entry) { _ in }
            }
            try skip(remaining + (padded - size) + (entry.isRegularFile ? 0 : size))
        }
    }

    private func readExactly(_ into: inout [UInt8], count: Int) throws(BundleError) -> Bool {
        var done = 0
        while done < count {
            let n = into.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + done, count - done) }
            if n < 0, errno == EINTR { continue }
            if n < 0 { throw BundleError("reading tar archive: \(String(cString: strerror(errno)))") }
            if n == 0 {
                if done == 0 { return false }
                throw BundleError("tar archive is truncated")
            }
            done += n
        }
        return true
    }

    private func skip(_ count: Int64) throws(BundleError) {
        guard count > 0 else { return }
        if lseek(descriptor, off_t(count), SEEK_CUR) < 0 { throw BundleError("seeking in tar archive failed") }
    }

    static func string(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// `./blobs/sha256/x` → `blobs/sha256/x`
    static func clean(_ path: String) -> String {
        var p = Substring(path)
        while p.hasPrefix("./") { p = p.dropFirst(2) }
        return String(p)
    }

    /// Octal, or GNU base-256 for large sizes.
    static func number(_ field: ArraySlice<UInt8>) throws(BundleError) -> Int64 {
        if let first = field.first, first & 0x80 != 0 {
            var value: Int64 = Int64(first & 0x7F)
            for b in field.dropFirst() { value = (value << 8) | Int64(b) }
            return value
        }
        let text = string(field).trimmingSpaces()
        if text.isEmpty { return 0 }
        guard let value = Int64(text, radix: 8), value >= 0 else { throw BundleError("tar header has a bad number: \(text)") }
        return value
    }

    static func checkChecksum(_ header: [UInt8]) throws(BundleError) {
        let stored = try number(header[148..<156])
        var sum: Int64 = 0
        for (i, b) in header.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(b) }
        guard sum == stored else { throw BundleError("not a tar archive, or a corrupt tar header") }
    }

    static func parsePAX(_ data: [UInt8]) throws(BundleError) -> (path: String?, linkpath: String?, size: Int64?) {
        var path: String?, linkpath: String?, size: Int64?
        var i = 0
        while i < data.count {
            guard let space = data[i...].firstIndex(of: UInt8(ascii: " ")),
                let length = Int(String(decoding: data[i..<space], as: UTF8.self)), length > 0, i + length <= data.count
            else { throw BundleError("bad PAX header") }
            let record = data[(space + 1)..<(i + length - 1)]
            if let eq = record.firstIndex(of: UInt8(ascii: "=")) {
                let key = String(decoding: record[..<eq], as: UTF8.self)
                let value = String(decoding: record[(eq + 1)...], as: UTF8.self)
                if key == "path" { path = value }
                if key == "linkpath" { linkpath = value }
                if key == "size" { size = Int64(value) }
            }
            i += length
        }
        return (path, linkpath, size)
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
