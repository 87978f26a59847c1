import ContentStore
import Foundation
import OCI

/// Blobs as objects in an S3-compatible bucket, for replicas that share one store.
///
/// Key layout (the only place that knows it):
/// ```
/// <prefix>/blobs/<alg>/<hex>    published, verified blobs (immutable)
/// ```
/// A write is a multipart upload (`S3BlobWriter`), hashed as its parts go out and completed
/// only after digest and size were verified, so an object under a blob's key always holds
/// exactly the verified bytes; a blob smaller than one part is sent with one PUT, also only
/// after verification. Uploads a crash left open are invisible (S3 shows no object until
/// completion) and `sweepUploads(olderThan:)` aborts them.
///
/// Reads are ranged, streaming GETs (`S3BlobReader`), with no local file, so `fileRegions`
/// is nil and a writer's `openForReading()` too: a fill spools locally by itself.
///
/// Unlike a file, an object is gone for its readers once deleted (the conformance suite runs
/// with `readersOutliveDelete: false`): the eviction that deletes must first know that nobody
/// reads it, as the mirror's `BlobLease`s tell it in one process.
public final class S3Store: BlobStore {
    public let location: S3Location
    /// Size of the parts of a multipart upload (S3 wants at least 5 MiB for all but the last).
    public let partSize: Int
    /// How long the presigned URLs its readers offer (`RedirectingBlobReader`) stay valid; nil:
    /// they offer none, and every byte is sent by the mirror.
    public let redirectExpiry: Duration?
    let connection: S3Connection

    public static let minimumPartSize = 5 << 20
    /// S3's limit on the number of parts of one upload.
    static let maximumParts = 10_000

    /// - Parameters:
    ///   - partSize: bytes per uploaded part, at least 5 MiB; each writer holds one part in memory.
    ///   - redirectExpiry: set to let readers offer presigned URLs valid this long (1 s to 7 days).
    public init(location: S3Location, credentials: S3Credentials, partSize: Int = 8 << 20, redirectExpiry: Duration? = nil) {
        self.location = location
        self.partSize = max(partSize, Self.minimumPartSize)
        self.redirectExpiry = redirectExpiry
        self.connection = S3Connection(location: location, credentials: credentials)
    }

    func key(of digest: Digest) -> String { location.key(ofBlobNamed: "\(digest.algorithm.rawValue)/\(digest.hex)") }

    /// A blob's size and last modification, or nil when there is no such object.
    func head(_ digest: Digest) async throws(StoreError) -> (size: Int64, modified: Date?)? {
        let response = try await connection.send(S3Request(method: "HEAD", key: key(of: digest)))
        if response.status == 404 { return nil }
        guard response.status == 200, let size = response.headers["content-length"].flatMap({ Int64($0) }) else {
            throw response.error("HEAD \(digest)")
        }
        return (size, response.headers["last-modified"].flatMap(Self.httpDate))
    }

    public func size(of digest: Digest) async -> Int64? {
        do throws(StoreError) { return try await head(digest)?.size } catch { return nil }
    }

    public func modificationDate(of digest: Digest) async -> Date? {
        do throws(StoreError) { return try await head(digest)?.modified } catch { return nil }
    }

    public func openBlob(_ digest: Digest) async throws(StoreError) -> (any BlobReader)? {
        guard let head = try await head(digest) else { return nil }
        return S3BlobReader(connection: connection, key: key(of: digest), size: head.size, redirectExpiry: redirectExpiry)
    }

    public func makeWriter(expecting digest: Digest, size: Int64?) async throws(StoreError) -> any BlobWriter {
        S3BlobWriter(store: self, digest: digest, expectedSize: size)
    }

    public func read(_ digest: Digest, limit: Int) async throws(StoreError) -> [UInt8] {
        let response: S3Response
        do throws(StoreError) {
            response = try await connection.send(S3Request(method: "GET", key: key(of: digest)), bodyLimit: limit)
        } catch where error.code == .tooLarge {
            throw StoreError(.tooLarge, "\(digest) is larger than \(limit) bytes")
        }
        guard response.status == 200 else { throw response.error("GET \(digest)") }
        return response.body
    }

    /// Deletes the object; an absent one is no error (S3 answers 204 either way).
    public func delete(_ digest: Digest) async throws(StoreError) {
        let response = try await connection.send(S3Request(method: "DELETE", key: key(of: digest)))
        guard (200..<300).contains(response.status) || response.status == 404 else { throw response.error("DELETE \(digest)") }
    }

    /// Every blob under the prefix, listed a page (up to 1000 keys) at a time.
    public func allDigests() async throws(StoreError) -> [Digest] {
        var digests: [Digest] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", location.blobsPrefix)]
            if let token { query.append(("continuation-token", token)) }
            let response = try await connection.send(S3Request(method: "GET", key: nil, query: query), bodyLimit: 16 << 20)
            guard response.status == 200 else { throw response.error("ListObjectsV2") }
            let text = response.text
            for contents in S3XML.elements("Contents", in: text[...]) {
                guard let key = S3XML.value("Key", in: contents), key.hasPrefix(location.blobsPrefix) else { continue }
                // <alg>/<hex>: anything else under the prefix is not ours to report.
                let name = key.dropFirst(location.blobsPrefix.count).replacingOccurrences(of: "/", with: ":")
                if let digest = try? Digest(parsing: name) { digests.append(digest) }
            }
            token = S3XML.value("IsTruncated", in: text) == "true" ? S3XML.value("NextContinuationToken", in: text) : nil
        } while token != nil
        return digests
    }

    /// Creates the bucket if it does not exist (for tests and first runs); an existing one
    /// that is ours is fine.
    public func createBucket() async throws(StoreError) {
        var body: [UInt8] = []
        if location.region != "us-east-1" {
            body = Array("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>\(S3XML.escape(location.region))</LocationConstraint></CreateBucketConfiguration>".utf8)
        }
        let response = try await connection.send(S3Request(method: "PUT", key: nil, body: body))
        if response.status == 200 { return }
        if response.status == 409, S3XML.value("Code", in: response.text) == "BucketAlreadyOwnedByYou" { return }
        throw response.error("CreateBucket \(location.bucket)")
    }

    /// A presigned GET URL of a blob's object, valid for `expiry` from `now`, whether or not
    /// the object exists (S3 answers 404 then).
    public func presignedURL(of digest: Digest, expiry: Duration, now: Date = Date()) -> String {
        connection.presignedURL(key: key(of: digest), expiry: expiry, now: now)
    }

    /// Answers whether the bucket is reachable with these credentials (for readiness), within
    /// `timeout`: a HEAD of the bucket, the cheapest call that needs both.
    public func check(timeout: Duration = .seconds(5)) async throws(StoreError) {
        let response = try await connection.send(S3Request(method: "HEAD", key: nil, timeout: timeout))
        guard response.status == 200 else { throw response.error("HEAD bucket \(location.bucket)") }
    }

    /// A multipart upload under the blob prefix that was started and never completed.
    public struct PendingUpload: Sendable {
        public let key: String
        public let uploadID: String
        public let initiated: Date?
        /// When its newest part arrived, where `idleUploads` looked (nil: no part, or not asked).
        public var lastPart: Date?
    }

    /// Every open multipart upload under the blob prefix (what crashes and abandoned writers left).
    public func pendingUploads() async throws(StoreError) -> [PendingUpload] {
        var uploads: [PendingUpload] = []
        var markers: (key: String, upload: String)?
        repeat {
            var query = [("uploads", ""), ("prefix", location.blobsPrefix)]
            if let markers { query += [("key-marker", markers.key), ("upload-id-marker", markers.upload)] }
            let response = try await connection.send(S3Request(method: "GET", key: nil, query: query), bodyLimit: 16 << 20)
            guard response.status == 200 else { throw response.error("ListMultipartUploads") }
            let text = response.text
            for upload in S3XML.elements("Upload", in: text[...]) {
                guard let key = S3XML.value("Key", in: upload), let id = S3XML.value("UploadId", in: upload) else { continue }
                uploads.append(PendingUpload(key: key, uploadID: id, initiated: S3XML.value("Initiated", in: upload).flatMap(Self.isoDate)))
            }
            markers = nil
            if S3XML.value("IsTruncated", in: text) == "true",
               let key = S3XML.value("NextKeyMarker", in: text), let upload = S3XML.value("NextUploadIdMarker", in: text) {
                markers = (key, upload)
            }
        } while markers != nil
        return uploads
    }

    /// Aborts multipart uploads under the blob prefix started more than `age` ago: the parts a
    /// crashed or killed writer left, which S3 keeps (and bills) until they are aborted. Live
    /// uploads are younger than any sane `age` (a fill's parts go out as it downloads).
    /// Answers how many were aborted.
    @discardableResult
    public func sweepUploads(olderThan age: Duration, now: Date = Date()) async throws(StoreError) -> Int {
        let cutoff = now.addingTimeInterval(-Double(age.components.seconds))
        var aborted = 0
        for upload in try await pendingUploads() where (upload.initiated ?? .distantPast) < cutoff {
            try await abortUpload(key: upload.key, uploadID: upload.uploadID)
            aborted += 1
        }
        return aborted
    }

    /// Like `sweepUploads(olderThan:now:)`, but an upload whose newest part arrived within
    /// `age` is left alone too: it is a fill still going, however long ago it began. This is
    /// the sweep `serve` and `gc` run; it also holds where a server's `Initiated` is not the
    /// upload's start (moto reports a fixed date), so replicas that start while others fill
    /// do not abort their uploads. Answers how many were aborted.
    @discardableResult
    public func sweepIdleUploads(olderThan age: Duration, now: Date = Date()) async throws(StoreError) -> Int {
        let idle = try await idleUploads(olderThan: age, now: now)
        for upload in idle { try await abortUpload(key: upload.key, uploadID: upload.uploadID) }
        return idle.count
    }

    /// The uploads `sweepIdleUploads` would abort (for `gc --dry-run`).
    public func idleUploads(olderThan age: Duration, now: Date = Date()) async throws(StoreError) -> [PendingUpload] {
        let cutoff = now.addingTimeInterval(-Double(age.components.seconds))
        var idle: [PendingUpload] = []
        for var upload in try await pendingUploads() where (upload.initiated ?? .distantPast) < cutoff {
            upload.lastPart = try await lastPartUploaded(upload)
            if let active = upload.lastPart, active >= cutoff { continue }
            idle.append(upload)
        }
        return idle
    }

    /// Aborts one upload (a sweep's); one already gone is no error.
    public func abort(_ upload: PendingUpload) async throws(StoreError) {
        try await abortUpload(key: upload.key, uploadID: upload.uploadID)
    }

    /// When the newest part of an upload arrived (ListParts); nil when it has none.
    func lastPartUploaded(_ upload: PendingUpload) async throws(StoreError) -> Date? {
        var newest: Date?
        var marker: String?
        repeat {
            var query = [("uploadId", upload.uploadID)]
            if let marker { query.append(("part-number-marker", marker)) }
            let response = try await connection.send(S3Request(method: "GET", key: upload.key, query: query), bodyLimit: 16 << 20)
            // Completed or aborted since it was listed: nothing left to sweep.
            if response.status == 404 { return .distantFuture }
            guard response.status == 200 else { throw response.error("ListParts \(upload.key)") }
            let text = response.text
            for part in S3XML.elements("Part", in: text[...]) {
                if let date = S3XML.value("LastModified", in: part).flatMap(Self.isoDate), date > (newest ?? .distantPast) { newest = date }
            }
            marker = S3XML.value("IsTruncated", in: text) == "true" ? S3XML.value("NextPartNumberMarker", in: text) : nil
        } while marker != nil
        return newest
    }

    func abortUpload(key: String, uploadID: String) async throws(StoreError) {
        let response = try await connection.send(S3Request(method: "DELETE", key: key, query: [("uploadId", uploadID)]))
        guard (200..<300).contains(response.status) || response.status == 404 else { throw response.error("AbortMultipartUpload \(key)") }
    }

    static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)
    }

    static func isoDate(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
