import ContentStore
import Foundation
import OCI

/// Tracks what one import wrote, so a failure can take it back.
struct IngestSession {
    let store: FileSystemStore
    let progress: ProgressHandler?
    /// The bundle, as progress events name it.
    let label: String
    private(set) var written: Set<Digest> = []
    var reached: Set<Digest> = []

    init(store: FileSystemStore, progress: ProgressHandler? = nil, label: String = "") {
        self.store = store
        self.progress = progress
        self.label = label
    }

    /// Stores a blob built in memory (a manifest made for a docker archive), verified.
    mutating func ingest(_ bytes: [UInt8], as digest: Digest) throws(BundleError) {
        try ingest(digest, size: Int64(bytes.count)) { (sink) throws(BundleError) in
            try bytes.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(raw) } }.get()
        }
    }

    /// Streams a blob into the store, verified; a blob already stored is skipped.
    mutating func ingest(_ digest: Digest, size: Int64, from pump: TarReader.Pump) throws(BundleError) {
        guard store.size(of: digest) == nil else {
            progress?(.blobStarted(image: label, digest: digest, size: size))
            progress?(.blobFinished(image: label, digest: digest, bytes: 0, cached: true))
            return
        }
        let writer: FileBlobWriter
        do {
            writer = try store.makeFileWriter(expecting: digest, size: size)
        } catch {
            throw BundleError("cannot store \(digest): \(error.message)")
        }
        progress?(.blobStarted(image: label, digest: digest, size: size))
        do throws(BundleError) {
            try pump { [progress, label] (chunk) throws(BundleError) in
                do throws(StoreError) {
                    try writer.write(chunk)
                } catch {
                    throw BundleError("bundle is corrupt: blob \(digest) failed verification: \(error.message)")
                }
                progress?(.blobProgress(image: label, digest: digest, bytes: writer.bytesWritten, size: size))
            }
            do throws(StoreError) {
                try writer.commitNow()
            } catch {
                throw BundleError("bundle is corrupt: blob \(digest) failed verification: \(error.message)")
            }
        } catch {
            writer.abort()
            throw error
        }
        written.insert(digest)
        progress?(.blobFinished(image: label, digest: digest, bytes: size, cached: false))
    }

    func rollback() {
        for digest in written { try? store.delete(digest) }
    }

    /// Blobs a tar carried that no image reaches are not kept.
    func removeUnreached() {
        for digest in written.subtracting(reached) { try? store.delete(digest) }
    }
}

/// Reads a file in 1 MiB chunks into a sink.
func fileChunks(_ path: String) -> TarReader.Pump {
    { (sink) throws(BundleError) in
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { throw BundleError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(file) }
        try descriptorChunks(file, path: path)(sink)
    }
}

/// Reads an open file (which the caller closes) in 1 MiB chunks into a sink; `path` names it in errors.
func descriptorChunks(_ file: Int32, path: String) -> TarReader.Pump {
    { (sink) throws(BundleError) in
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(file, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { throw BundleError("reading \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { return }
            try buffer.withUnsafeBytes { raw in Result { () throws(BundleError) in try sink(UnsafeRawBufferPointer(rebasing: raw[0..<count])) } }.get()
        }
    }
}
