import Foundation
import OCI
import Testing

/// The mirror in front of a misbehaving upstream (`FaultUpstream`): wrong bytes, truncated and
/// reset transfers, a manifest that does not hash to its digest, 5xx answers. Nothing
/// unverified may reach a client as a complete body, nothing unverified may be cached, and
/// the next request after the fault clears must succeed.
///
/// Each test gets its own fake upstream, mirror process and data directory.
@Suite("registry-mirror under upstream faults", .serialized)
struct FaultInjectionTests {
    static let manifestAccept = [("Accept", MediaType.manifestAccept.joined(separator: ", "))]

    /// After a failed fill: no `.part` left, no blob file for the digest.
    func expectNothingCached(_ env: FaultEnvironment, _ digest: Digest, _ context: String,
                             sourceLocation: SourceLocation = #_sourceLocation) async {
        let leftovers = await env.settledPartFiles()
        #expect(leftovers.isEmpty, "\(context): .part files left under DATA/tmp: \(leftovers)", sourceLocation: sourceLocation)
        // Bound to locals: an #expect over `env.…` would print the whole environment (megabytes of image bytes) on failure.
        let cached = env.blobFileExists(digest)
        #expect(!cached, "\(context): an unverified blob was cached at \(env.blobFile(digest).path)\n\(env.diagnostics)",
                sourceLocation: sourceLocation)
        let named = env.blobFiles.filter { $0.hasSuffix(digest.hex) }
        #expect(named.isEmpty, "\(context): files named after \(digest) under DATA/blobs: \(named)", sourceLocation: sourceLocation)
    }

    /// A client saw a failure, not a complete body: an error status, or a 200 cut short.
    func expectFailedDelivery(_ response: FaultResponse, expected: [UInt8], _ context: String,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(response.failure?.contains("connect") != true, "\(context): the mirror did not accept the connection: \(response)",
                sourceLocation: sourceLocation)
        #expect(!response.isCompleteOK, "\(context): the client got a complete 200 body: \(response)", sourceLocation: sourceLocation)
        if response.status == 200 {
            #expect(response.contentLength == expected.count, "\(context): \(response)", sourceLocation: sourceLocation)
            #expect(response.body.count < expected.count, "\(context): got \(response.body.count) of \(expected.count) bytes: \(response)",
                    sourceLocation: sourceLocation)
        }
        let identical = response.body == expected
        #expect(!identical, "\(context): the client got the whole blob although the transfer failed: \(response)", sourceLocation: sourceLocation)
        if response.body.count == expected.count {
            #expect(response.body.sha256 == expected.sha256, "\(context): a full-length body of wrong bytes reached the client",
                    sourceLocation: sourceLocation)
        }
    }

    /// A clean 200 with exactly `expected`.
    func expectDelivered(_ response: FaultResponse, _ expected: [UInt8], digest: Digest, _ context: String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(response.status == 200, "\(context): \(response)", sourceLocation: sourceLocation)
        #expect(response.isCompleteOK, "\(context): \(response)", sourceLocation: sourceLocation)
        #expect(response.body.count == expected.count, "\(context): \(response.body.count) bytes, expected \(expected.count)",
                sourceLocation: sourceLocation)
        #expect(response.body.sha256 == digest, "\(context): the body hashes to \(response.body.sha256), not \(digest)",
                sourceLocation: sourceLocation)
        #expect(response.header("Docker-Content-Digest") == digest.description, "\(context): \(response)", sourceLocation: sourceLocation)
    }

    @Test("a bad upstream transfer of a layer reaches no client whole and is not cached; the next request refetches",
          arguments: [FaultMode.wrongBytes, .truncate, .reset])
    func badLayerTransfer(mode: FaultMode) async throws {
        try await FaultEnvironment.with(layerSizes: [2 << 20]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(mode, for: layer.digest)

            let bad = try await FaultRequest.get(port: env.port, path: path)
            Progress.step("fault: \(mode): client saw \(bad)")
            expectFailedDelivery(bad, expected: layer.bytes, "\(mode): first GET\n\(env.diagnostics)")
            #expect(env.upstream.count("GET", path) == 1,
                    "\(mode): a transfer that delivered body bytes must not be retried; the fake saw \(env.upstream.count("GET", path)) GETs\n\(env.diagnostics)")
            await expectNothingCached(env, layer.digest, "\(mode)")

            env.upstream.setFault(.none, for: layer.digest)
            let before = env.upstream.count("GET", path)
            let good = try await FaultRequest.get(port: env.port, path: path)
            expectDelivered(good, layer.bytes, digest: layer.digest, "\(mode): GET after clearing the fault\n\(env.diagnostics)")
            let after = env.upstream.count("GET", path)
            #expect(after == before + 1, "\(mode): after clearing, the fake saw \(after - before) more GETs, expected exactly 1")
            // The fill hands out the last byte once verified, before fsync and rename: the file may land just after the 200.
            let cachedFile = await env.awaitBlobFile(layer.digest)
            #expect(cachedFile, "\(mode): the verified blob is not at \(env.blobFile(layer.digest).path)")
            if cachedFile {
                #expect(try Files.read(env.blobFile(layer.digest)).sha256 == layer.digest)
            }
            #expect(await env.settledPartFiles().isEmpty)

            // Now served from the cache: no further upstream GET.
            let cached = try await FaultRequest.get(port: env.port, path: path)
            expectDelivered(cached, layer.bytes, digest: layer.digest, "\(mode): GET from the cache")
            #expect(env.upstream.count("GET", path) == after, "\(mode): a cached blob was fetched again")
        }
    }

    @Test("three clients on one truncated download: one upstream GET, all three fail; after clearing, a GET succeeds")
    func concurrentTruncation() async throws {
        try await FaultEnvironment.with(layerSizes: [3 << 20]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(.truncate, for: layer.digest)
            env.upstream.holdTruncation = true  // keep the download open until all three joined

            let clients = (0..<3).map { _ in FaultRequest.start(port: env.port, path: path) }
            var allJoined = true
            do {
                try await waitUntil("all three clients to receive response headers", timeout: .seconds(20)) {
                    clients.allSatisfy(\.headersSeen)
                }
            } catch {
                allJoined = false
                Issue.record("\(error)\n\(env.diagnostics)")
            }
            env.upstream.holdTruncation = false

            for (i, client) in clients.enumerated() {
                let response = try await client.result()
                Progress.step("fault: concurrent truncate: client \(i) saw \(response)")
                expectFailedDelivery(response, expected: layer.bytes, "client \(i)\n\(env.diagnostics)")
            }
            if allJoined {
                #expect(env.upstream.count("GET", path) == 1,
                        "single flight: three concurrent clients caused \(env.upstream.count("GET", path)) upstream GETs\n\(env.diagnostics)")
            }
            await expectNothingCached(env, layer.digest, "concurrent truncate")

            env.upstream.setFault(.none, for: layer.digest)
            let before = env.upstream.count("GET", path)
            let good = try await FaultRequest.get(port: env.port, path: path)
            expectDelivered(good, layer.bytes, digest: layer.digest, "GET after clearing the fault\n\(env.diagnostics)")
            #expect(env.upstream.count("GET", path) == before + 1, "after clearing, the fake saw \(env.upstream.count("GET", path) - before) more GETs, expected 1")
            let cachedFile = await env.awaitBlobFile(layer.digest)
            #expect(cachedFile, "the verified blob is not at \(env.blobFile(layer.digest).path)")
        }
    }

    @Test("a manifest by digest whose bytes do not match → 502 envelope, nothing stored; after clearing → 200")
    func manifestWrongDigest() async throws {
        try await FaultEnvironment.with(layerSizes: [1 << 20]) { env in
            let digest = env.image.manifestDigest
            let path = FaultEnvironment.manifestPath(digest.description)
            env.upstream.setFault(.manifestWrongDigest, for: digest)

            for attempt in 1...2 {
                let bad = try await FaultRequest.get(port: env.port, path: path, headers: Self.manifestAccept)
                #expect(bad.status == 502, "attempt \(attempt): \(bad)\n\(env.diagnostics)")
                #expect(bad.errorCodes == ["UNKNOWN"], "attempt \(attempt): \(bad)")
                #expect(bad.header("Content-Type")?.hasPrefix("application/json") == true, "attempt \(attempt): \(bad)")
                #expect(bad.contentLength == bad.body.count, "attempt \(attempt): \(bad)")
                let served = bad.body == env.image.manifest
                #expect(!served, "attempt \(attempt): the manifest was served")
                // Not stored, not negatively cached: every request goes upstream again.
                #expect(env.upstream.count("GET", path) == attempt,
                        "attempt \(attempt): the fake saw \(env.upstream.count("GET", path)) GETs of the manifest\n\(env.diagnostics)")
                #expect(env.blobFiles.isEmpty, "attempt \(attempt): something was stored: \(env.blobFiles)")
            }

            env.upstream.setFault(.none, for: digest)
            let good = try await FaultRequest.get(port: env.port, path: path, headers: Self.manifestAccept)
            #expect(good.status == 200, "\(good)\n\(env.diagnostics)")
            let same = good.body == env.image.manifest
            #expect(same, "\(good)")
            #expect(good.header("Docker-Content-Digest") == digest.description, "\(good)")
            #expect(good.header("Content-Type") == MediaType.ociManifest, "\(good)")
            #expect(env.upstream.count("GET", path) == 3)
            let stored = env.blobFileExists(digest)
            #expect(stored, "the verified manifest is not stored: \(env.blobFiles)")
        }
    }

    @Test("500 twice, then the blob: the retry delivers it (3 upstream GETs, with backoff)")
    func retryAfterServerErrors() async throws {
        try await FaultEnvironment.with(layerSizes: [1 << 20]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(.status(500, times: 2), for: layer.digest)

            let clock = ContinuousClock()
            let started = clock.now
            let response = try await FaultRequest.get(port: env.port, path: path)
            let elapsed = clock.now - started
            expectDelivered(response, layer.bytes, digest: layer.digest, "GET through two 500s\n\(env.diagnostics)")
            #expect(env.upstream.count("GET", path) == 3, "the fake saw \(env.upstream.count("GET", path)) GETs, expected 3\n\(env.diagnostics)")
            // Backoff 250 ms, then 500 ms.
            #expect(elapsed >= .milliseconds(700), "two retries took only \(elapsed): no backoff?")
            let cachedFile = await env.awaitBlobFile(layer.digest)
            #expect(cachedFile, "the verified blob is not at \(env.blobFile(layer.digest).path)")
        }
    }

    @Test("a transport failure before any body byte is retried: the client gets the blob",
          arguments: [FaultMode.dropConnection(times: 2), .resetAfterHeaders(times: 2)])
    func retryAfterTransportErrors(mode: FaultMode) async throws {
        try await FaultEnvironment.with(layerSizes: [1 << 20]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(mode, for: layer.digest)

            let response = try await FaultRequest.get(port: env.port, path: path)
            Progress.step("fault: \(mode): client saw \(response)")
            expectDelivered(response, layer.bytes, digest: layer.digest, "\(mode)\n\(env.diagnostics)")
            #expect(env.upstream.count("GET", path) == 3, "\(mode): the fake saw \(env.upstream.count("GET", path)) GETs, expected 3\n\(env.diagnostics)")
            let cachedFile = await env.awaitBlobFile(layer.digest)
            #expect(cachedFile, "\(mode): the blob was not cached at \(env.blobFile(layer.digest).path)")
            #expect(await env.settledPartFiles().isEmpty)
        }
    }

    @Test("500 on every attempt: three upstream GETs, then an error status, nothing cached")
    func retriesExhausted() async throws {
        try await FaultEnvironment.with(layerSizes: [1 << 20]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(.status(500, times: 1000), for: layer.digest)

            let response = try await FaultRequest.get(port: env.port, path: path)
            #expect(response.status.map { $0 >= 500 } == true, "\(response)\n\(env.diagnostics)")
            #expect(response.errorCodes?.isEmpty == false, "no error envelope: \(response)")
            #expect(!response.isCompleteOK)
            #expect(env.upstream.count("GET", path) == 3, "the fake saw \(env.upstream.count("GET", path)) GETs, expected 3 attempts")
            await expectNothingCached(env, layer.digest, "500 forever")
        }
    }

    @Test("skopeo copy through the mirror fails cleanly with a corrupt layer, and succeeds once it is fixed")
    func skopeoCopy() async throws {
        _ = try TestPaths.executable("skopeo")
        try await FaultEnvironment.with(layerSizes: [1 << 20, (3 << 20) / 2]) { env in
            let bad = env.image.layers[1]
            env.upstream.setFault(.wrongBytes, for: bad.digest)
            let source = "docker://\(env.mirror.host)/\(FaultImage.repository):\(FaultImage.tag)"

            let failing = env.work.url.appendingPathComponent("out-failing")
            let first = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--preserve-digests", source, "oci:\(failing.path):v1"],
                                              timeout: .seconds(90))
            Progress.step("fault: skopeo copy with a corrupt layer exited \(first.status): \(first.stderr.suffix(400))")
            #expect(!first.timedOut, "\(first.summary)")
            #expect(first.status != 0, "skopeo copy succeeded although a layer was corrupt: \(first.summary)\n\(env.diagnostics)")
            await expectNothingCached(env, bad.digest, "skopeo with a corrupt layer")

            env.upstream.setFault(.none, for: bad.digest)
            let out = env.work.url.appendingPathComponent("out")
            let second = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--preserve-digests", source, "oci:\(out.path):v1"],
                                               timeout: .seconds(90))
            try #require(second.succeeded, "\(second.summary)\n\(env.diagnostics)")
            let copiedFiles = Files.regularFiles(under: out.appendingPathComponent("blobs"))
            let root = try MirrorFixture.layoutRootDigest(out, tag: "v1")
            #expect(root == env.image.manifestDigest, "copied layout's root \(root), expected \(env.image.manifestDigest); blobs: \(copiedFiles)\n\(second.summary)")
            for (digest, bytes) in env.image.blobs {
                let copied = try? Files.read(out.appendingPathComponent("blobs/sha256/\(digest.hex)"))
                let same = copied == bytes
                #expect(same, "blob \(digest) in the copied layout differs or is missing (\(copied?.count ?? -1) of \(bytes.count) bytes); blobs: \(copiedFiles)")
            }
            let repairedCached = await env.awaitBlobFile(bad.digest)
            #expect(repairedCached, "the repaired layer was not cached")
        }
    }
}
