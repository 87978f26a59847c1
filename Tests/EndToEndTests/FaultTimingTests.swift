import Foundation
import OCI
import Testing

/// The upstream faults FaultInjectionTests leaves out: a wrong `Content-Length`, a body or a
/// head dripping below `low_speed_limit`, an upstream that never answers (`response_timeout`),
/// 502 and 503, and an index naming a child the upstream does not have. Each ends in a
/// clear client error or a successful retry, caches nothing unverified (`verify` agrees), and
/// leaves the mirror serving other clients meanwhile. In the same serialized suite.
extension FaultInjectionTests {
    /// `low_speed_time` is 2 s, not 1: the window in which a healthy request must finish
    /// while the slow one is still running.
    static let lowSpeedSettings: [(key: String, value: String)] = [("low_speed_limit", "1000"), ("low_speed_time", "2s")]

    /// A cold GET of `layer` succeeds promptly; when `during` is given, it finishes while that
    /// faulty request is still running.
    func expectServedMeanwhile(_ env: FaultEnvironment, _ layer: (digest: Digest, bytes: [UInt8]), during fault: FaultRequest?,
                               _ context: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let response = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(layer.digest))
        let elapsed = clock.now - started
        expectDelivered(response, layer.bytes, digest: layer.digest, "\(context): a healthy blob\n\(env.diagnostics)", sourceLocation: sourceLocation)
        #expect(elapsed < .seconds(5), "\(context): a healthy blob took \(elapsed)", sourceLocation: sourceLocation)
        if let fault {
            let overlapped = !fault.isFinished
            #expect(overlapped, "\(context): the faulty request ended before the healthy one did, so nothing ran meanwhile", sourceLocation: sourceLocation)
        }
    }

    /// Clears the fault on `layer`, then one more upstream GET delivers and caches it.
    func expectRecovers(_ env: FaultEnvironment, _ layer: (digest: Digest, bytes: [UInt8]), _ context: String,
                        sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let path = FaultEnvironment.blobPath(layer.digest)
        env.upstream.setFault(.none, for: layer.digest)
        let before = env.upstream.count("GET", path)
        let good = try await FaultRequest.get(port: env.port, path: path)
        expectDelivered(good, layer.bytes, digest: layer.digest, "\(context): after clearing the fault\n\(env.diagnostics)", sourceLocation: sourceLocation)
        let after = env.upstream.count("GET", path)
        #expect(after == before + 1, "\(context): after clearing, \(after - before) more upstream GETs, expected 1", sourceLocation: sourceLocation)
        let cached = await env.awaitBlobFile(layer.digest)
        #expect(cached, "\(context): the verified blob was not cached", sourceLocation: sourceLocation)
    }

    @Test("a Content-Length longer or shorter than the body: no complete body reaches a client, nothing is stored",
          arguments: [4096, -4096])
    func wrongContentLength(delta: Int) async throws {
        try await FaultEnvironment.with(layerSizes: [1 << 20, 64 << 10]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(.contentLength(delta: delta), for: layer.digest)

            let bad = try await FaultRequest.get(port: env.port, path: path)
            Progress.step("fault: Content-Length off by \(delta): client saw \(bad)")
            #expect(!bad.isCompleteOK, "Content-Length off by \(delta): \(bad)\n\(env.diagnostics)")
            if bad.status == 200 {
                // The head had gone out with the upstream's length: the body must fall short of it.
                #expect(bad.contentLength == layer.bytes.count + delta, "\(bad)")
                #expect(bad.body.count < bad.contentLength ?? 0, "the client got its full Content-Length: \(bad)")
            } else {
                #expect(bad.status.map { $0 >= 500 } == true && bad.errorCodes?.isEmpty == false, "\(bad)")
            }
            // Body bytes were accepted, so a retry could not be clean: none.
            #expect(env.upstream.count("GET", path) == 1, "\(env.upstream.count("GET", path)) upstream GETs\n\(env.diagnostics)")

            // A manifest by digest: a 5xx envelope, nothing stored.
            let manifestDigest = env.image.manifestDigest
            env.upstream.setFault(.contentLength(delta: delta), for: manifestDigest)
            let manifest = try await FaultRequest.get(port: env.port, path: FaultEnvironment.manifestPath(manifestDigest.description),
                                                      headers: Self.manifestAccept)
            #expect(manifest.status == 502 || manifest.status == 503, "manifest, Content-Length off by \(delta): \(manifest)\n\(env.diagnostics)")
            #expect(manifest.errorCodes?.isEmpty == false, "no error envelope: \(manifest)")
            let stored = env.blobFileExists(manifestDigest)
            #expect(!stored, "a manifest with a wrong Content-Length was stored")

            try await expectServedMeanwhile(env, env.image.layers[1], during: nil, "after a wrong Content-Length")
            try await expectCleanFailure(env, "Content-Length off by \(delta)")
        }
    }

    /// Sets `mode` on the first layer and GETs it; once `begun` holds for that request, the
    /// second layer must be served while it still runs. The faulty response and its duration.
    func faultyGet(_ env: FaultEnvironment, _ mode: FaultMode, begun what: String,
                   _ begun: @escaping @Sendable (FaultRequest) -> Bool) async throws -> (response: FaultResponse, elapsed: Duration) {
        let layer = env.image.layers[0]
        env.upstream.setFault(mode, for: layer.digest)
        let clock = ContinuousClock()
        let started = clock.now
        let client = FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(layer.digest))
        try await waitUntil(what, timeout: .seconds(10)) { begun(client) }
        try await expectServedMeanwhile(env, env.image.layers[1], during: client, "during \(mode)")
        let response = try await client.result()
        let elapsed = clock.now - started
        Progress.step("fault: \(mode): client saw \(response) after \(elapsed)")
        return (response, elapsed)
    }

    /// After a failed fill of the first layer: nothing of it cached, a retry once cleared
    /// succeeds, and `verify` agrees with DATA/blobs.
    func expectCleanFailure(_ env: FaultEnvironment, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        await expectNothingCached(env, env.image.layers[0].digest, context, sourceLocation: sourceLocation)
        try await expectRecovers(env, env.image.layers[0], context, sourceLocation: sourceLocation)
        try await env.expectConsistentStore(context, sourceLocation: sourceLocation)
    }

    @Test("a body dripping below low_speed_limit: the client's 200 is cut within seconds, not retried, nothing cached; others are served meanwhile")
    func slowBody() async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10], upstreamSettings: Self.lowSpeedSettings) { env in
            let slow = env.image.layers[0]
            let path = FaultEnvironment.blobPath(slow.digest)
            let (response, elapsed) = try await faultyGet(env, .dripBody, begun: "the slow blob's response head") { $0.headersSeen }
            #expect(response.status == 200, "the head had gone out, so the error is a cut body: \(response)\n\(env.diagnostics)")
            expectFailedDelivery(response, expected: slow.bytes, "dripping body\n\(env.diagnostics)")
            #expect(elapsed < .seconds(10), "a body at 4 B/s against a 1000 B/s limit over 2 s took \(elapsed) to fail")
            #expect(env.upstream.count("GET", path) == 1, "body bytes had arrived, so no retry; the fake saw \(env.upstream.count("GET", path)) GETs")
            try await expectCleanFailure(env, "dripping body")
        }
    }

    @Test("a response head dripping below low_speed_limit: retried, then a 503 UNAVAILABLE envelope; nothing cached; others served meanwhile")
    func slowHead() async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10], upstreamSettings: Self.lowSpeedSettings) { env in
            let path = FaultEnvironment.blobPath(env.image.layers[0].digest)
            let (response, elapsed) = try await faultyGet(env, .dripHead, begun: "the fake to start dripping") { _ in env.upstream.count("GET", path) >= 1 }
            #expect(response.status == 503, "\(response)\n\(env.diagnostics)")
            #expect(response.errorCodes == ["UNAVAILABLE"], "\(response)")
            // Three attempts of about 2 s each, 0.75 s of backoff.
            #expect(elapsed < .seconds(20), "a dripping head took \(elapsed) to fail")
            #expect(env.upstream.count("GET", path) == 3, "no body byte was accepted, so 3 attempts; the fake saw \(env.upstream.count("GET", path))\n\(env.diagnostics)")
            try await expectCleanFailure(env, "dripping head")
        }
    }

    @Test("an upstream that never answers: response_timeout (2 s) per attempt, then a 503 UNAVAILABLE envelope; others served meanwhile")
    func hangBeforeHeaders() async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10], upstreamSettings: [("response_timeout", "2s")]) { env in
            let path = FaultEnvironment.blobPath(env.image.layers[0].digest)
            let (response, elapsed) = try await faultyGet(env, .hang, begun: "the fake to hold the first attempt") { _ in env.upstream.count("GET", path) >= 1 }
            #expect(response.status == 503, "\(response)\n\(env.diagnostics)")
            #expect(response.errorCodes == ["UNAVAILABLE"], "\(response)")
            #expect(response.header("Content-Type")?.hasPrefix("application/json") == true, "\(response)")
            // 3 attempts × 2 s, plus 0.25 + 0.5 s of backoff: not before the timeouts, not much after.
            #expect(elapsed >= .seconds(6), "failed after \(elapsed), before three 2 s timeouts could pass")
            #expect(elapsed < .seconds(12), "a 2 s response_timeout took \(elapsed) to fail the request")
            #expect(env.upstream.count("GET", path) == 3, "the fake saw \(env.upstream.count("GET", path)) GETs, expected 3\n\(env.diagnostics)")
            try await expectCleanFailure(env, "hang")
        }
    }

    @Test("502 and 503 are retried: twice then the blob → delivered; always → 503 UNAVAILABLE after 3 attempts, nothing cached",
          arguments: [502, 503])
    func serverErrors(code: Int) async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10]) { env in
            let passing = env.image.layers[0]
            let passingPath = FaultEnvironment.blobPath(passing.digest)
            env.upstream.setFault(.status(code, times: 2), for: passing.digest)
            let retried = try await FaultRequest.get(port: env.port, path: passingPath)
            expectDelivered(retried, passing.bytes, digest: passing.digest, "\(code) twice, then 200\n\(env.diagnostics)")
            #expect(env.upstream.count("GET", passingPath) == 3, "\(code) twice: the fake saw \(env.upstream.count("GET", passingPath)) GETs, expected 3")
            let cached = await env.awaitBlobFile(passing.digest)
            #expect(cached, "\(code) twice: the blob was not cached after the retry")

            let failing = env.image.layers[1]
            let failingPath = FaultEnvironment.blobPath(failing.digest)
            env.upstream.setFault(.status(code, times: 1000), for: failing.digest)
            let refused = try await FaultRequest.get(port: env.port, path: failingPath)
            #expect(refused.status == 503, "\(code) always: \(refused)\n\(env.diagnostics)")
            #expect(refused.errorCodes == ["UNAVAILABLE"], "\(code) always: \(refused)")
            #expect(env.upstream.count("GET", failingPath) == 3, "\(code) always: the fake saw \(env.upstream.count("GET", failingPath)) GETs, expected 3")
            await expectNothingCached(env, failing.digest, "\(code) always")
            try await env.expectConsistentStore("\(code)")
        }
    }

    @Test("an index naming a child the upstream lacks: the index is served, the child is 404 MANIFEST_UNKNOWN, nothing bogus is stored")
    func indexWithMissingChild() async throws {
        try await FaultEnvironment.with(layerSizes: [64 << 10]) { env in
            let image = env.image
            let missing = Array("a manifest nobody has \(UUID())".utf8).sha256
            let entries = [
                #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#(image.manifestDigest)","size":\#(image.manifest.count),"platform":{"architecture":"amd64","os":"linux"}}"#,
                #"{"mediaType":"\#(MediaType.ociManifest)","digest":"\#(missing)","size":1234,"platform":{"architecture":"arm64","os":"linux"}}"#,
            ]
            let index = Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(entries.joined(separator: ","))]}"#.utf8)
            let indexDigest = index.sha256
            for reference in ["multi", indexDigest.description] {
                env.upstream.setRoute(.content(index, contentType: MediaType.ociIndex, digest: indexDigest), for: FaultEnvironment.manifestPath(reference))
            }

            let served = try await FaultRequest.get(port: env.port, path: FaultEnvironment.manifestPath("multi"), headers: Self.manifestAccept)
            #expect(served.status == 200, "the index: \(served)\n\(env.diagnostics)")
            let same = served.body == index
            #expect(same, "the index was not served byte for byte: \(served)")
            #expect(served.header("Docker-Content-Digest") == indexDigest.description, "\(served)")

            let missingPath = FaultEnvironment.manifestPath(missing.description)
            for method in ["GET", "HEAD"] {
                let child = try await FaultRequest.start(method, port: env.port, path: missingPath, headers: Self.manifestAccept).result()
                #expect(child.status == 404, "\(method) of the missing child: \(child)\n\(env.diagnostics)")
                if method == "GET" { #expect(child.errorCodes == ["MANIFEST_UNKNOWN"], "\(child)") }
            }
            let present = try await FaultRequest.get(port: env.port, path: FaultEnvironment.manifestPath(image.manifestDigest.description),
                                                     headers: Self.manifestAccept)
            #expect(present.status == 200 && present.body == image.manifest, "the child that exists: \(present)")
            try await expectServedMeanwhile(env, image.layers[0], during: nil, "beside an index with a missing child")

            // The background prefetch of the children asks for the missing one too, and fails.
            try await waitUntil("the child prefetch to give up on the missing child", timeout: .seconds(10)) {
                env.mirror.stderr.contains("prefetch of an index child failed") && env.mirror.stderr.contains(missing.hex)
            }
            // The layer's last byte went out once verified; its rename into the store may land just after.
            #expect(await env.awaitBlobFile(image.layers[0].digest), "the layer was not cached\n\(env.diagnostics)")
            let stored = Set(env.blobFiles.map { String($0.split(separator: "/").last ?? "") })
            let expected: Set = [indexDigest.hex, image.manifestDigest.hex, image.layers[0].digest.hex]
            #expect(stored == expected, "stored blobs \(stored), expected the index, the present child and its layer \(expected)")
            let listing = try await MirrorCLI.list(dataDirectory: env.dataDirectory)
            #expect(listing.succeeded && listing.stdout.contains("test/img:multi") && listing.stdout.contains(indexDigest.description),
                    "ls: \(listing.summary)")
            #expect(!listing.stdout.contains(missing.hex), "ls names the missing child: \(listing.stdout)")
            try await env.expectConsistentStore("index with a missing child")
        }
    }
}
