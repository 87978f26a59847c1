import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where an export writes its OCI layout: a directory, or a tar when the path ends in `.tar`.
///
/// Everything goes to `<output>.tmp-<random>` beside the output, which `publish()` moves into
/// place and `discard()` removes, so a failed export leaves no half bundle. An existing file
/// or a non-empty directory at the output is never replaced; an empty directory is (a user
/// may have made it for the bundle).
struct LayoutOutput {
    let destination: String
    let temporary: String
    let isTar: Bool
    private var tar: TarWriter?
    private var directories: Set<String> = []
    /// The file of a directory layout between `beginFile` and `endFile`.
    private var file: (path: String, descriptor: Int32, size: Int64, written: Int64)?

    init(destination path: String) throws(BundleError) {
        var destination = path
        while destination.count > 1, destination.hasSuffix("/") { destination.removeLast() }
        guard !destination.isEmpty else { throw BundleError("the output path is empty") }
        self.destination = destination
        isTar = destination.hasSuffix(".tar")
        let parent = destination.contains("/") ? String(destination[..<destination.lastIndex(of: "/")!]) : "."
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: parent.isEmpty ? "/" : parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BundleError("cannot write \(destination): \(parent) is not a directory")
        }
        if FileManager.default.fileExists(atPath: destination, isDirectory: &isDirectory) {
            let empty = isDirectory.boolValue && ((try? FileManager.default.contentsOfDirectory(atPath: destination))?.isEmpty ?? false)
            guard !isTar, empty else { throw BundleError("\(destination) already exists; refusing to overwrite it") }
        }
        temporary = destination + ".tmp-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        if isTar {
            tar = try TarWriter(creating: temporary)
        } else {
            try Self.makeDirectory(temporary)
        }
    }

    /// Adds `relative` (`oci-layout`, `blobs/sha256/<hex>`) with exactly `size` bytes from `contents`.
    mutating func addFile(_ relative: String, size: Int64, contents: TarReader.Pump) throws(BundleError) {
        try beginFile(relative, size: size)
        try contents { (chunk) throws(BundleError) in try append(chunk) }
        try endFile()
    }

    /// Starts `relative`, of exactly `size` bytes; `append` its data, then `endFile()`. For
    /// data that arrives between awaits (a blob streamed from a remote store).
    mutating func beginFile(_ relative: String, size: Int64) throws(BundleError) {
        let components = relative.split(separator: "/").dropLast()
        for depth in components.indices {
            let folder = components[...depth].joined(separator: "/")
            guard directories.insert(folder).inserted else { continue }
            if isTar {
                try tar!.addDirectory(folder)
            } else {
                try Self.makeDirectory(temporary + "/" + folder)
            }
        }
        if isTar {
            try tar!.beginFile(relative, size: size)
        } else {
            let path = temporary + "/" + relative
            let descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else { throw BundleError("cannot create \(path): \(String(cString: strerror(errno)))") }
            file = (path, descriptor, size, 0)
        }
    }

    mutating func append(_ chunk: UnsafeRawBufferPointer) throws(BundleError) {
        if isTar { return try tar!.append(chunk) }
        guard let current = file else { throw BundleError("layout data outside a file") }
        guard current.written + Int64(chunk.count) <= current.size else {
            throw BundleError("\(current.path): more than the announced \(current.size) bytes")
        }
        var offset = 0
        while offset < chunk.count {
            let n = write(current.descriptor, chunk.baseAddress! + offset, chunk.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw BundleError("writing \(current.path): \(String(cString: strerror(errno)))")
            }
            offset += n
        }
        file!.written += Int64(chunk.count)
    }

    mutating func endFile() throws(BundleError) {
        if isTar { return try tar!.endFile() }
        guard let current = file else { throw BundleError("layout file ended twice") }
        file = nil
        defer { close(current.descriptor) }
        guard current.written == current.size else { throw BundleError("\(current.path): \(current.written) bytes, \(current.size) announced") }
        guard fsync(current.descriptor) == 0 else { throw BundleError("fsync \(current.path): \(String(cString: strerror(errno)))") }
    }

    mutating func addFile(_ relative: String, bytes: [UInt8]) throws(BundleError) {
        try addFile(relative, size: Int64(bytes.count)) { (sink) throws(BundleError) in
            try bytes.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(raw) } }.get()
        }
    }

    /// Makes the bundle durable and moves it to its final name.
    mutating func publish() throws(BundleError) {
        if isTar {
            try tar!.finish()
            tar!.close()
            // link(2) fails when the output appeared meanwhile, where rename(2) would replace it.
            if link(temporary, destination) == 0 {
                unlink(temporary)
            } else if errno == EEXIST {
                throw BundleError("\(destination) already exists; refusing to overwrite it")
            } else if rename(temporary, destination) != 0 {
                throw BundleError("cannot move the bundle to \(destination): \(String(cString: strerror(errno)))")
            }
        } else {
            for folder in directories { Self.syncDirectory(temporary + "/" + folder) }
            Self.syncDirectory(temporary)
            // rename(2) replaces only an empty directory; anything else fails it.
            guard rename(temporary, destination) == 0 else {
                throw BundleError("cannot move the bundle to \(destination): \(String(cString: strerror(errno)))")
            }
        }
        Self.syncDirectory(destination.contains("/") ? String(destination[..<destination.lastIndex(of: "/")!]) : ".")
    }

    /// Removes the temporary bundle. Safe after `publish()`.
    mutating func discard() {
        tar?.close()
        if let file { close(file.descriptor) }
        file = nil
        try? FileManager.default.removeItem(atPath: temporary)
    }

    // MARK: Files

    private static func makeDirectory(_ path: String) throws(BundleError) {
        if mkdir(path, 0o755) != 0, errno != EEXIST {
            throw BundleError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
    }

    private static func syncDirectory(_ path: String) {
        let descriptor = open(path.isEmpty ? "/" : path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        close(descriptor)
    }
}
