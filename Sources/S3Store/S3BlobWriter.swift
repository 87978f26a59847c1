import ContentStore
import Foundation
import OCI
import Synchronization

/// A verified write to S3: the bytes are hashed as they come and sent as the parts of a
/// multipart upload, and the upload is completed only after digest and size were verified.
/// Until then S3 shows no object under the key, so nothing unverified is ever visible. A
/// blob smaller than one part never starts an upload: it is one PUT, after verification.
///
/// Memory: one part (`S3Store.partSize`, or more for a blob so large that 10,000 parts would
/// not hold it). `write` uploads a full part on the calling thread, which may block (a fill's
/// `RemoteFeed` thread, an importer's); the last part and the completion go out in `commit()`
/// on a thread of their own. A mismatch, `abort()` or a dropped writer aborts the upload.
/// Parts do not overlap the next part's filling: a fill's download no longer waits for them
/// (the feed trails the spool), and two parts in flight cost a replica about 16 MiB more peak
/// memory for no measured gain against moto (docs/benchmarks.md, Fleet).
final class S3BlobWriter: BlobWriter, @unchecked Sendable {
    // Written by one writer at a time (the protocol's contract), like `FileBlobWriter`; what
    // `abort()` may touch from elsewhere is in `control`.
    let digest: Digest
    private let store: S3Store
    private let key: String
    private let partSize: Int
    private var verifier: DigestVerifier?
    private var part: [UInt8] = []
    private var etags: [String] = []
    private let written = Atomic<Int64>(0)
    private let control = Mutex(Control())

    private struct Control {
        enum Phase { case writing, verified, committed, aborted }
        var phase = Phase.writing
        var uploadID: String?
    }

    init(store: S3Store, digest: Digest, expectedSize: Int64?) {
        self.store = store
        self.digest = digest
        self.key = store.key(of: digest)
        let needed = expectedSize.map { Int(($0 + Int64(S3Store.maximumParts) - 1) / Int64(S3Store.maximumParts)) } ?? 0
        self.partSize = max(store.partSize, needed)
        self.verifier = DigestVerifier(expected: digest, expectedSize: expectedSize)
    }

    deinit { abort() }

    var bytesWritten: Int64 { written.load(ordering: .acquiring) }

    /// No local file: a fill that streams to readers while it writes keeps a spool of its own.
    func openForReading() throws(StoreError) -> ReadableFile? { nil }

    func write(_ buffer: UnsafeRawBufferPointer) throws(StoreError) {
        guard control.withLock({ $0.phase == .writing }), verifier != nil else { throw StoreError(.io, "write to \(digest) after it finished") }
        do {
            try verifier!.update(buffer)
        } catch {
            throw StoreError(.verification, error.message)
        }
        var offset = 0
        while offset < buffer.count {
            let take = min(partSize - part.count, buffer.count - offset)
            part.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + take]))
            offset += take
            if part.count == partSize { try uploadPart() }
        }
        written.add(Int64(buffer.count), ordering: .releasing)
    }

    func verify() async throws(StoreError) { try verifyNow() }

    private func verifyNow() throws(StoreError) {
        guard let verifier = verifier.take() else {
            guard control.withLock({ $0.phase == .verified }) else { throw StoreError(.io, "verify of \(digest) after it finished") }
            return
        }
        do {
            try verifier.verify()
        } catch {
            abort()
            throw StoreError(.verification, error.message)
        }
        let verified = control.withLock { control in
            guard control.phase == .writing else { return false }
            control.phase = .verified
            return true
        }
        guard verified else { throw StoreError(.io, "\(digest) was aborted") }
    }

    func commit() async throws(StoreError) {
        try verifyNow()
        do throws(StoreError) {
            if let uploadID = control.withLock({ $0.uploadID }) {
                if !part.isEmpty { try await sendPart(uploadID: uploadID) }
                try await complete(uploadID: uploadID)
            } else {
                let response = try await store.connection.send(S3Request(method: "PUT", key: key, body: part))
                guard response.status == 200 else { throw response.error("PUT \(digest)") }
            }
        } catch {
            abort()
            throw error
        }
        part = []
        // An abort that raced the completion came too late to undo it: the blob is whole.
        control.withLock { $0.phase = .committed }
    }

    func abort() {
        let uploadID: String? = control.withLock { control in
            guard control.phase == .writing || control.phase == .verified else { return nil }
            control.phase = .aborted
            return control.uploadID
        }
        guard let uploadID else { return }
        // abort() is synchronous and may be called on the cooperative pool: the request goes
        // out on a thread of its own. What it misses (it fails, or the process dies first),
        // `S3Store.sweepUploads` finds.
        let connection = store.connection, key = self.key
        let thread = Thread {
            _ = try? connection.perform(S3Request(method: "DELETE", key: key, query: [("uploadId", uploadID)]))
        }
        thread.name = "s3-abort"
        thread.start()
    }

    /// Sends the full part from `write`, on the writer's thread, starting the upload first.
    private func uploadPart() throws(StoreError) {
        let uploadID: String
        if let id = control.withLock({ $0.uploadID }) {
            uploadID = id
        } else {
            let response = try store.connection.perform(S3Request(method: "POST", key: key, query: [("uploads", "")]))
            guard response.status == 200, let id = S3XML.value("UploadId", in: response.text) else {
                throw response.error("CreateMultipartUpload \(digest)")
            }
            let live = control.withLock { control in
                control.uploadID = id
                return control.phase == .writing
            }
            // An abort that came while the upload was created did not know its id.
            guard live else {
                _ = try? store.connection.perform(S3Request(method: "DELETE", key: key, query: [("uploadId", id)]))
                throw StoreError(.io, "write to \(digest) was aborted")
            }
            uploadID = id
        }
        let response = try store.connection.perform(partRequest(uploadID: uploadID))
        try accept(response)
    }

    /// Sends the last, short part from `commit()`, off the cooperative pool.
    private func sendPart(uploadID: String) async throws(StoreError) {
        try accept(try await store.connection.send(partRequest(uploadID: uploadID)))
    }

    private func partRequest(uploadID: String) -> S3Request {
        S3Request(method: "PUT", key: key, query: [("partNumber", String(etags.count + 1)), ("uploadId", uploadID)], body: part)
    }

    private func accept(_ response: S3Response) throws(StoreError) {
        guard response.status == 200, let etag = response.headers["etag"] else {
            throw response.error("UploadPart \(etags.count + 1) of \(digest)")
        }
        etags.append(etag)
        part.removeAll(keepingCapacity: true)
    }

    private func complete(uploadID: String) async throws(StoreError) {
        var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for (index, etag) in etags.enumerated() {
            xml += "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\(S3XML.escape(etag))</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        let response = try await store.connection.send(S3Request(method: "POST", key: key, query: [("uploadId", uploadID)], body: Array(xml.utf8)))
        // S3 may answer 200 and still report the failure in the body.
        guard response.status == 200, !response.text.contains("<Error>") else {
            throw response.error("CompleteMultipartUpload \(digest)")
        }
    }
}
