import ContentStore
import Foundation
import OCI
@testable import S3Store
import Testing

/// `S3Store` against a real S3 protocol peer (moto), started by each test.
@Suite(.serialized) struct S3StoreTests {
    @Test("S3Store passes the BlobStore conformance suite on moto")
    func conformance() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        try await moto.store(bucket: "conformance").createBucket()
        let counter = Counter()
        // A prefix per case: each case gets an empty store in one bucket.
        try await BlobStoreConformance(readersOutliveDelete: false) {
            moto.store(bucket: "conformance", prefix: "case-\(counter.next())/mirror")
        }.run()
        // Small blobs go out as one PUT after verification: no case left an upload open.
        #expect(try await moto.store(bucket: "conformance").pendingUploads().isEmpty)
    }

    @Test("a blob larger than a part is a multipart upload, invisible until commit and whole after it")
    func multipartUpload() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "parts", prefix: "p", partSize: S3Store.minimumPartSize)
        try await store.createBucket()
        let bytes = BlobStoreConformance.bytes(2 * S3Store.minimumPartSize + 123_457, seed: 7)
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        #expect(try writer.openForReading() == nil, "an S3 writer has no local spool")
        // Odd-sized writes, as a transfer delivers them: parts are cut across them.
        for start in stride(from: 0, to: bytes.count, by: 777_777) {
            try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[start..<min(start + 777_777, bytes.count)])) }
        }
        let pending = try await store.pendingUploads()
        #expect(pending.map(\.key) == [store.key(of: digest)], "the full parts went out as a multipart upload")
        #expect(await store.size(of: digest) == nil, "parts of an uncommitted upload are visible")
        #expect(try await store.allDigests().isEmpty)
        try await writer.commit()
        #expect(try await store.pendingUploads().isEmpty, "a completed upload is still listed")
        #expect(await store.size(of: digest) == Int64(bytes.count))
        let reader = try #require(try await store.openBlob(digest))
        #expect(reader.fileRegions == nil)
        #expect(try await BlobStoreConformance.collect(reader) == bytes)
        let across = Int64(S3Store.minimumPartSize) - 1000
        #expect(try await BlobStoreConformance.collect(reader, from: across, length: 70_000) == Array(bytes[Int(across)..<Int(across) + 70_000]), "a range across a part boundary")
        #expect(try await store.allDigests() == [digest])
    }

    @Test("a multipart upload of wrong bytes is aborted: no object, no upload left")
    func wrongBytesAbortTheUpload() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "wrong", partSize: S3Store.minimumPartSize)
        try await store.createBucket()
        let bytes = BlobStoreConformance.bytes(S3Store.minimumPartSize + 10, seed: 8)
        var tampered = bytes
        tampered[tampered.count - 1] ^= 0xFF
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        try tampered.withUnsafeBytes { try writer.write($0) }
        #expect(try await store.pendingUploads().count == 1)
        await #expect(throws: StoreError.self) { try await writer.commit() }
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.allDigests().isEmpty)
        // The abort goes out on a thread of its own.
        #expect(try await eventually { try await store.pendingUploads().isEmpty }, "the aborted upload is still open")
    }

    @Test("a multipart upload that vanishes under the writer fails the write: no object, no upload left")
    func failedPartFailsTheWrite() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "failing", partSize: S3Store.minimumPartSize)
        try await store.createBucket()
        let bytes = BlobStoreConformance.bytes(3 * S3Store.minimumPartSize + 99, seed: 10)
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[0..<S3Store.minimumPartSize])) }
        // The upload vanishes after its first part (an operator's lifecycle rule, a sweep), so
        // the parts after it fail.
        let upload = try #require(try await store.pendingUploads().first)
        let aborted = try await store.connection.send(S3Request(method: "DELETE", key: upload.key, query: [("uploadId", upload.uploadID)]))
        #expect(aborted.status == 204)
        var failure: StoreError?
        do throws(StoreError) {
            try bytes.withUnsafeBytes { buffer in
                Result { () throws(StoreError) in try writer.write(UnsafeRawBufferPointer(rebasing: buffer[S3Store.minimumPartSize...])) }
            }.get()
            try await writer.commit()
        } catch {
            failure = error
        }
        #expect(failure != nil, "a write whose parts failed was committed")
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.allDigests().isEmpty)
        #expect(try await eventually { try await store.pendingUploads().isEmpty }, "an upload was left open")
    }

    @Test("the sweep aborts uploads older than its age, and only those")
    func sweepAbortsOldUploads() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "sweep", prefix: "mirror")
        try await store.createBucket()
        let other = moto.store(bucket: "sweep", prefix: "someone-else")
        // What a killed writer leaves: an upload with a part and no completion.
        for target in [store, other] {
            let key = target.key(of: DigestHasher.digest(of: Array("left behind".utf8)))
            let created = try await target.connection.send(S3Request(method: "POST", key: key, query: [("uploads", "")]))
            let id = try #require(S3XML.value("UploadId", in: created.text))
            let part = try await target.connection.send(S3Request(method: "PUT", key: key, query: [("partNumber", "1"), ("uploadId", id)], body: [1, 2, 3]))
            #expect(part.status == 200)
        }
        // Ages count from the upload's `Initiated` as the server reports it (moto reports a
        // fixed date in 2010), so "now" is set relative to that.
        let initiated = try #require(try await store.pendingUploads().first?.initiated)
        #expect(try await store.sweepUploads(olderThan: .seconds(3600), now: initiated.addingTimeInterval(1800)) == 0, "a young upload was swept")
        #expect(try await store.pendingUploads().count == 1)
        #expect(try await store.sweepUploads(olderThan: .seconds(3600), now: initiated.addingTimeInterval(3700)) == 1)
        #expect(try await store.pendingUploads().isEmpty)
        #expect(try await other.pendingUploads().count == 1, "the sweep reached past its prefix")
    }

    @Test("a dropped writer aborts its upload")
    func droppedWriterAborts() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "dropped", partSize: S3Store.minimumPartSize)
        try await store.createBucket()
        let bytes = BlobStoreConformance.bytes(S3Store.minimumPartSize + 1, seed: 9)
        do {
            let writer = try await store.makeWriter(expecting: DigestHasher.digest(of: bytes), size: Int64(bytes.count))
            try bytes.withUnsafeBytes { try writer.write($0) }
        }
        #expect(try await eventually { try await store.pendingUploads().isEmpty }, "a dropped writer left its upload open")
    }

    @Test("libcurl's SigV4 signatures pass a server that checks them, for every call the store makes")
    func signaturesAreChecked() async throws {
        // moto checks signatures after its first N requests: the probe, then three IAM calls
        // that make a user with an access key allowed s3:*.
        let moto = try await MotoServer(environment: ["INITIAL_NO_AUTH_ACTION_COUNT": "4"])
        defer { moto.stop() }
        let user = try moto.signingUser()
        let (id, secret) = (user.accessKeyID, user.secretAccessKey)
        let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "signed", prefix: "p/q", pathStyle: true)

        let wrong = S3Store(location: location, credentials: S3Credentials(accessKeyID: id, secretAccessKey: secret + "x"))
        await #expect(throws: StoreError.self, "a wrong secret was accepted: the server checks nothing") { try await wrong.createBucket() }

        let store = S3Store(location: location, credentials: S3Credentials(accessKeyID: id, secretAccessKey: secret), partSize: S3Store.minimumPartSize)
        try await store.createBucket()
        let big = BlobStoreConformance.bytes(S3Store.minimumPartSize + 4321, seed: 11)
        let small = BlobStoreConformance.bytes(1000, seed: 12)
        let digests = [DigestHasher.digest(of: big), DigestHasher.digest(of: small)]
        let writer = try await store.makeWriter(expecting: digests[0], size: Int64(big.count))
        try big.withUnsafeBytes { try writer.write($0) }
        #expect(try await store.pendingUploads().count == 1)
        try await writer.commit()
        try await store.write(small, as: digests[1])
        #expect(Set(try await store.allDigests()) == Set(digests))
        let reader = try #require(try await store.openBlob(digests[0]))
        #expect(try await BlobStoreConformance.collect(reader, from: 100, length: 200_000) == Array(big[100..<200_100]))
        #expect(try await store.read(digests[1], limit: 1000) == small)
        try await store.delete(digests[1])
        #expect(await store.size(of: digests[1]) == nil)
        #expect(try await store.sweepUploads(olderThan: Duration.seconds(1), now: Date.distantFuture) == 0, "an upload was left open")
    }

    @Test("credentials come from the environment or an AWS shared-credentials file")
    func credentials() throws {
        #expect(S3Credentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "id"]) == nil)
        #expect(S3Credentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"])
                == S3Credentials(accessKeyID: "id", secretAccessKey: "secret", sessionToken: "token"))
        let file = """
        [other]
        aws_access_key_id = OTHER
        aws_secret_access_key = nope
        [mirror]
        # the replica's key
        aws_access_key_id = AKIAEXAMPLE
        aws_secret_access_key = wJalr/K7MDENG+bPxRfiCY
        """
        #expect(try S3Credentials.parse(file, profile: "mirror", source: "test") == S3Credentials(accessKeyID: "AKIAEXAMPLE", secretAccessKey: "wJalr/K7MDENG+bPxRfiCY"))
        #expect(throws: StoreError.self) { try S3Credentials.parse(file, profile: "default", source: "test") }
    }

    @Test("URLs put the bucket in the path or the host, and queries in SigV4's canonical order")
    func addressing() {
        let endpoint = URL(string: "https://s3.example:9000")!
        let path = S3Location(endpoint: endpoint, region: "eu-west-1", bucket: "mirror", prefix: "/fleet/a/", pathStyle: true)
        #expect(path.key(ofBlobNamed: "sha256/ab") == "fleet/a/blobs/sha256/ab")
        #expect(path.url(key: "fleet/a/blobs/sha256/ab", query: [("uploadId", "x/y+z"), ("partNumber", "2")])
                == "https://s3.example:9000/mirror/fleet/a/blobs/sha256/ab?partNumber=2&uploadId=x%2Fy%2Bz")
        let host = S3Location(endpoint: endpoint, region: "eu-west-1", bucket: "mirror", pathStyle: false)
        #expect(host.url(key: nil, query: [("uploads", ""), ("prefix", "blobs/")]) == "https://mirror.s3.example:9000/?prefix=blobs%2F&uploads=")
    }

    /// Polls `condition` for up to 10 s.
    func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return try await condition()
    }
}
