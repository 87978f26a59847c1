import ContentStore
import Foundation
import OCI
import Synchronization

/// A verified write to S3: the bytes are hashed as they come and sent as the parts of a
/// multipart upload, and the upload is completed only after digest and size were verified.
/// Until then S3 shows no object under the key, so nothing unverified is ever visible. A
/// blob smaller than one part never starts an upload: it is one PUT, after verification.
///
/// Memory: two parts (`S3Store.partSize`, or more for a blob so large that 10,000 parts would
/// not hold it). A full part goes out on a thread of its own (`S3PartUpload`) while `write`
/// fills the next, so a fill downloads and uploads at once instead of in turns; `write` waits
/// only when the next part is full before the previous one is in. A part's failure surfaces at
/// the next full part or at `commit()`. The last part and the completion go out in `commit()`.
/// A mismatch, `abort()` or a dropped writer aborts the upload.
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
        /// The previous full part, still going out; `abort()` waits for it before the abort,
        /// since S3 may keep a part whose upload finishes after the abort.
        var inFlight: S3PartUpload?
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
            if part.count == partSize { try sendFullPart() }
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
                if let previous = control.withLock({ $0.inFlight.take() }) { try accept(await previous.etag()) }
                if !part.isEmpty { try accept(await S3PartUpload(store.connection, partRequest(uploadID: uploadID), what: partName).etag()) }
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
        let (uploadID, inFlight): (String?, S3PartUpload?) = control.withLock { control in
            guard control.phase == .writing || control.phase == .verified else { return (nil, nil) }
            control.phase = .aborted
            return (control.uploadID, control.inFlight.take())
        }
        guard let uploadID else { return }
        // abort() is synchronous and may be called on the cooperative pool: the request goes
        // out on a thread of its own. What it misses (it fails, or the process dies first),
        // `S3Store.sweepUploads` finds.
        let connection = store.connection, key = self.key
        let thread = Thread {
            _ = inFlight?.wait()
            _ = try? connection.perform(S3Request(method: "DELETE", key: key, query: [("uploadId", uploadID)]))
        }
        thread.name = "s3-abort"
        thread.start()
    }

    /// Hands the full part from `write` to a thread of its own, starting the upload first;
    /// waits (on the writer's thread) for the previous part, whose failure it throws.
    private func sendFullPart() throws(StoreError) {
        let uploadID = try startedUpload()
        if let previous = control.withLock({ $0.inFlight.take() }) { try accept(previous.wait()) }
        let upload = S3PartUpload(store.connection, partRequest(uploadID: uploadID), what: partName)
        let live = control.withLock { control in
            guard control.phase == .writing else { return false }
            control.inFlight = upload
            return true
        }
        guard live else {
            _ = upload.wait()
            throw StoreError(.io, "write to \(digest) was aborted")
        }
        part = []
        part.reserveCapacity(partSize)
    }

    /// The upload's id, created on the first full part (on the writer's thread).
    private func startedUpload() throws(StoreError) -> String {
        if let id = control.withLock({ $0.uploadID }) { return id }
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
        return id
    }

    /// Parts are numbered from 1 in the order they are cut; the previous one's ETag is in
    /// `etags` before the next is cut.
    private var partName: String { "UploadPart \(etags.count + 1) of \(digest)" }

    private func partRequest(uploadID: String) -> S3Request {
        S3Request(method: "PUT", key: key, query: [("partNumber", String(etags.count + 1)), ("uploadId", uploadID)], body: part)
    }

    private func accept(_ etag: Result<String, StoreError>) throws(StoreError) {
        etags.append(try etag.get())
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

/// One part of a multipart upload going out on a thread of its own, so the writer can fill the
/// next part meanwhile. Its result is the part's ETag, waited for once: by the writer's thread
/// (`wait`), by `commit()` (`etag`), or by an abort.
final class S3PartUpload: Sendable {
    private struct State {
        var result: Result<String, StoreError>?
        var waiter: CheckedContinuation<Result<String, StoreError>, Never>?
    }

    private let state = Mutex(State())
    private let finished = DispatchSemaphore(value: 0)

    init(_ connection: S3Connection, _ request: S3Request, what: String) {
        let thread = Thread { [self] in
            let result = Result { () throws(StoreError) -> String in
                let response = try connection.perform(request)
                guard response.status == 200, let etag = response.headers["etag"] else { throw response.error(what) }
                return etag
            }
            let waiter = state.withLock { state in
                state.result = result
                return state.waiter.take()
            }
            waiter?.resume(returning: result)
            finished.signal()
        }
        thread.name = "s3-part"
        thread.stackSize = 512 << 10
        thread.start()
    }

    /// Blocks the calling thread (never the cooperative pool) until the part is in.
    func wait() -> Result<String, StoreError> {
        finished.wait()
        finished.signal()
        return state.withLock { $0.result! }
    }

    /// Suspends until the part is in.
    func etag() async -> Result<String, StoreError> {
        await withCheckedContinuation { continuation in
            let done: Result<String, StoreError>? = state.withLock { state in
                if let result = state.result { return result }
                state.waiter = continuation
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }
}
