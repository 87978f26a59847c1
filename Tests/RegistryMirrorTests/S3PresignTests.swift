import ContentStore
import Foundation
import OCI
@testable import S3Store
import Testing

/// `storage.s3.redirect`'s presigned URLs and the scheduled upload sweep's rule, against AWS's
/// published example and a moto server that checks signatures.
@Suite(.serialized) struct S3PresignTests {
    @Test("a presigned URL matches AWS's published SigV4 query-signing example")
    func awsExample() {
        // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", the GET example.
        let location = S3Location(endpoint: URL(string: "https://s3.amazonaws.com")!, region: "us-east-1", bucket: "examplebucket", pathStyle: false)
        let credentials = S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        let url = S3Presign.url(location: location, key: "test.txt", credentials: credentials, expiry: .seconds(86400),
                                now: Date(timeIntervalSince1970: 1_369_353_600))
        #expect(url == "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                + "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }

    @Test("presigned URLs are signed exactly as botocore signs them: path style, a port, a prefix, a session token")
    func sameAsBotocore() throws {
        let now = Date(timeIntervalSince1970: 1_764_556_799)  // 2025-11-30T23:59:59Z: the date changes a second later
        let cases: [(S3Location, S3Credentials)] = [
            (S3Location(endpoint: URL(string: "http://127.0.0.1:9000")!, region: "us-east-1", bucket: "mirror", prefix: "fleet/a b+c", pathStyle: true),
             S3Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")),
            (S3Location(endpoint: URL(string: "https://s3.eu-west-1.amazonaws.com")!, region: "eu-west-1", bucket: "mirror-blobs", prefix: "", pathStyle: false),
             S3Credentials(accessKeyID: "ASIAEXAMPLE", secretAccessKey: "secret/with+signs", sessionToken: "token/with+signs=")),
        ]
        for (location, credentials) in cases {
            let key = location.key(ofBlobNamed: "sha256/" + String(repeating: "ab", count: 32))
            let ours = S3Presign.url(location: location, key: key, credentials: credentials, expiry: .seconds(1200), now: now)
            let theirs = try Self.botocore(location: location, key: key, credentials: credentials, expiry: 1200, now: now)
            #expect(Self.parameters(ours) == Self.parameters(theirs), "ours: \(ours)\nbotocore: \(theirs)")
            #expect(ours.prefix(while: { $0 != "?" }) == theirs.prefix(while: { $0 != "?" }))
        }
    }

    @Test("a presigned URL from a store's reader fetches the blob, and ranges of it, from the server")
    func presignedURLsFetchTheBlob() async throws {
        // moto 5's signature checks cannot check a query-string signature (they read the
        // Authorization header, and answer 500 without one): the signature itself is checked
        // against AWS's example and botocore above; here, that the URL names the object.
        let moto = try await MotoServer()
        defer { moto.stop() }
        let location = S3Location(endpoint: moto.endpoint, region: "us-east-1", bucket: "presigned", prefix: "fleet/a", pathStyle: true)
        let store = S3Store(location: location, credentials: MotoServer.credentials, redirectExpiry: .seconds(60))
        try await store.createBucket()
        let bytes = BlobStoreConformance.bytes(300_000, seed: 21)
        let digest = DigestHasher.digest(of: bytes)
        try await store.write(bytes, as: digest)

        let reader = try #require(try await store.openBlob(digest) as? any RedirectingBlobReader)
        let offered = try #require(reader.redirectLocation())
        #expect(offered.contains("X-Amz-Expires=60&"), "\(offered)")
        let fetched = try Self.curl(offered)
        #expect(fetched.status == 200)
        #expect(DigestHasher.digest(of: fetched.body) == digest, "the presigned URL gave other bytes")
        let ranged = try Self.curl(offered, range: "bytes=100-199")
        #expect(ranged.status == 206)
        #expect(ranged.body == Array(bytes[100...199]))

        // Without an expiry, the store's readers offer no URL.
        let plain = S3Store(location: location, credentials: MotoServer.credentials)
        #expect((try await plain.openBlob(digest) as? any RedirectingBlobReader)?.redirectLocation() == nil)
    }

    @Test("the idle-upload sweep aborts an old, idle upload and keeps a fresh one")
    func idleSweepKeepsFreshUploads() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "idle", prefix: "mirror")
        try await store.createBucket()
        // moto reports every upload `Initiated` in 2010, so only the parts' times tell an
        // upload left behind from one being written.
        let old = try await Self.leaveUpload(in: store, named: "old")
        try await Task.sleep(for: .milliseconds(2500))
        let fresh = try await Self.leaveUpload(in: store, named: "fresh")
        #expect(Set(try await store.idleUploads(olderThan: .seconds(2)).map(\.uploadID)) == [old])
        #expect(try await store.sweepIdleUploads(olderThan: .seconds(2)) == 1)
        #expect(try await store.pendingUploads().map(\.uploadID) == [fresh], "the fresh upload was swept, or the old one kept")
        // Once it is idle long enough, it goes too.
        try await Task.sleep(for: .milliseconds(2500))
        #expect(try await store.sweepIdleUploads(olderThan: .seconds(2)) == 1)
        #expect(try await store.pendingUploads().isEmpty)
    }

    /// What a killed writer leaves: an upload with one part and no completion. Answers its id.
    static func leaveUpload(in store: S3Store, named name: String) async throws -> String {
        let key = store.key(of: DigestHasher.digest(of: Array(name.utf8)))
        let created = try await store.connection.send(S3Request(method: "POST", key: key, query: [("uploads", "")]))
        let id = try #require(S3XML.value("UploadId", in: created.text))
        let part = try await store.connection.send(S3Request(method: "PUT", key: key, query: [("partNumber", "1"), ("uploadId", id)], body: [1, 2, 3]))
        #expect(part.status == 200)
        return id
    }

    /// botocore's presigned GET URL (from the moto venv's Python), its clock set to `now`.
    static func botocore(location: S3Location, key: String, credentials: S3Credentials, expiry: Int, now: Date) throws -> String {
        let python = URL(fileURLWithPath: try MotoServer.binary()).deletingLastPathComponent().appendingPathComponent("python3").path
        let (scheme, authority, path) = location.address(key: key)
        let script = """
            import sys, datetime
            from unittest import mock
            import botocore.auth, botocore.awsrequest, botocore.credentials
            url, region, key_id, secret, token, expires, now = sys.argv[1:8]
            creds = botocore.credentials.Credentials(key_id, secret, token or None)
            request = botocore.awsrequest.AWSRequest(method="GET", url=url)
            at = datetime.datetime.fromtimestamp(int(now), datetime.timezone.utc).replace(tzinfo=None)
            with mock.patch("botocore.auth.get_current_datetime", return_value=at):
                botocore.auth.S3SigV4QueryAuth(creds, "s3", region, expires=int(expires)).add_auth(request)
            print(request.url)
            """
        let output = Pipe()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script, "\(scheme)://\(authority)\(path)", location.region, credentials.accessKeyID, credentials.secretAccessKey,
                             credentials.sessionToken ?? "", String(expiry), String(Int(now.timeIntervalSince1970))]
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A URL's query parameters, decoded, in a dictionary (order aside).
    static func parameters(_ url: String) -> [String: String] {
        var out: [String: String] = [:]
        for item in URLComponents(string: url)?.percentEncodedQueryItems ?? [] {
            out[item.name] = item.value?.removingPercentEncoding
        }
        return out
    }

    /// A plain GET by curl (no signing of ours): status and body.
    static func curl(_ url: String, range: String? = nil) throws -> (status: Int, body: [UInt8]) {
        let body = FileManager.default.temporaryDirectory.appendingPathComponent("presign-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: body) }
        let output = Pipe()
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = ["-s", "-o", body.path, "-w", "%{http_code}"] + (range.map { ["-H", "Range: \($0)"] } ?? []) + [url]
        curl.standardOutput = output
        try curl.run()
        let status = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        curl.waitUntilExit()
        return (Int(status) ?? 0, Array((try? Data(contentsOf: body)) ?? Data()))
    }
}
