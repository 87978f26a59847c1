import Foundation
import OCI
import Testing

/// The mirror's upstream client against protocol-level upstream behaviour: a redirect to
/// another origin (credentials must not follow), redirect loops, 429 with `Retry-After`,
/// and manifests over the 4 MiB cap. In the same serialized suite as the other fault tests.
extension FaultInjectionTests {
    static func basicAuthorization(_ username: String, _ password: String) -> String {
        "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
    }

    /// A second fake (the "CDN", a different port and so a different origin), stopped afterwards.
    func withCDN(_ image: FaultImage, _ body: (FaultUpstream) async throws -> Void) async throws {
        let cdn = try FaultUpstream.start(image: image)
        do {
            try await body(cdn)
        } catch {
            await cdn.stop()
            throw error
        }
        await cdn.stop()
    }

    /// The mirror's log holds neither the password nor the Basic credentials derived from it.
    func expectNoCredentials(in log: String, username: String, password: String, _ context: String,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        let encoded = Data("\(username):\(password)".utf8).base64EncodedString()
        #expect(!log.contains(password), "\(context): the mirror logged the upstream password", sourceLocation: sourceLocation)
        #expect(!log.contains(encoded), "\(context): the mirror logged the Basic credentials (\(encoded))", sourceLocation: sourceLocation)
    }

    @Test("a blob redirected to another origin: fetched there with no Authorization; the origin got Basic credentials")
    func crossOriginRedirectDropsCredentials() async throws {
        let username = "alice"
        let password = "fault-pw-\(UUID().uuidString.prefix(12))"
        let authorization = Self.basicAuthorization(username, password)
        try await FaultEnvironment.with(layerSizes: [1 << 20], credentials: (username, password)) { env in
            try await withCDN(env.image) { cdn in
                let layer = env.image.layers[0]
                let path = FaultEnvironment.blobPath(layer.digest)
                cdn.setRoute(.content(layer.bytes, contentType: "application/octet-stream"), for: "/blob-data")
                env.upstream.requiredAuthorization = authorization
                env.upstream.setRoute(.redirect("http://\(cdn.host)/blob-data", status: 307), for: path)
                let context = { "\(env.diagnostics)\n--- origin requests ---\n\(env.upstream.requests().map(\.description).joined(separator: "\n"))\n--- CDN requests ---\n\(cdn.requests().map(\.description).joined(separator: "\n"))" }

                let response = try await FaultRequest.get(port: env.port, path: path)
                expectDelivered(response, layer.bytes, digest: layer.digest, "GET through a cross-origin redirect\n\(context())")

                let origin = env.upstream.requests(path)
                #expect(origin.contains { $0.header("Authorization") == authorization },
                        "the origin never saw the configured Basic credentials\n\(context())")
                #expect(origin.allSatisfy { $0.header("Authorization") == nil || $0.header("Authorization") == authorization },
                        "the origin saw an unexpected Authorization\n\(context())")

                let atCDN = cdn.requests()
                #expect(cdn.count("GET", "/blob-data") == 1, "the CDN saw \(cdn.count("GET", "/blob-data")) GETs of /blob-data, expected 1\n\(context())")
                #expect(!atCDN.isEmpty, "the redirect was not followed\n\(context())")
                for request in atCDN {
                    #expect(request.header("Authorization") == nil, "credentials followed the redirect to another origin: \(request)")
                    let encoded = Data("\(username):\(password)".utf8).base64EncodedString()
                    let leaked = request.headers.contains { $0.value.contains(password) || $0.value.contains(encoded) }
                    #expect(!leaked, "a header sent to the CDN carries the credentials: \(request)")
                }
                let cached = await env.awaitBlobFile(layer.digest)
                #expect(cached, "the verified blob was not cached at \(env.blobFile(layer.digest).path)\n\(context())")
                expectNoCredentials(in: env.mirror.stderr, username: username, password: password, "debug log after a credentialed fetch")
            }
        }
    }

    @Test("redirect loops (to itself, A→B→A): 502 UNKNOWN envelope quickly, at most 5 redirects followed, nothing cached")
    func redirectLoop() async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10]) { env in
            let selfLoop = env.image.layers[0]
            let selfPath = FaultEnvironment.blobPath(selfLoop.digest)
            env.upstream.setRoute(.redirect(selfPath, status: 307), for: selfPath)  // relative, to itself

            let pingPong = env.image.layers[1]
            let pathA = FaultEnvironment.blobPath(pingPong.digest)
            let pathB = "/loop-b"
            env.upstream.setRoute(.redirect("http://\(env.upstream.host)\(pathB)", status: 302), for: pathA)
            env.upstream.setRoute(.redirect(pathA, status: 308), for: pathB)

            for (name, digest, paths) in [("self", selfLoop.digest, [selfPath]), ("A→B→A", pingPong.digest, [pathA, pathB])] {
                let clock = ContinuousClock()
                let started = clock.now
                let response = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(digest))
                let elapsed = clock.now - started
                Progress.step("fault: redirect loop \(name): client saw \(response) after \(elapsed)")
                #expect(response.status == 502, "\(name): \(response)\n\(env.diagnostics)")
                #expect(response.errorCodes == ["UNKNOWN"], "\(name): \(response)")
                #expect(response.header("Content-Type")?.hasPrefix("application/json") == true, "\(name): \(response)")
                #expect(elapsed < .seconds(5), "\(name): the loop took \(elapsed) to fail")
                // The first request plus 5 followed redirects; the 6th Location is refused, and
                // a protocol error is not retried.
                let requests = paths.map { env.upstream.count("GET", $0) }.reduce(0, +)
                #expect(requests == 6, "\(name): the fake saw \(requests) GETs in the loop, expected 6 (1 + 5 redirects)\n\(env.diagnostics)")
                await expectNothingCached(env, digest, "redirect loop \(name)")
            }
        }
    }

    @Test("429 with Retry-After: 1 is waited out and retried (200 after ≥ 1 s); Retry-After: 3600 reaches the client as 429 TOOMANYREQUESTS")
    func rateLimited() async throws {
        try await FaultEnvironment.with(layerSizes: [256 << 10, 256 << 10]) { env in
            let short = env.image.layers[0]
            let shortPath = FaultEnvironment.blobPath(short.digest)
            env.upstream.setFault(.rateLimited(retryAfter: "1", times: 1), for: short.digest)
            let clock = ContinuousClock()
            var started = clock.now
            let waited = try await FaultRequest.get(port: env.port, path: shortPath)
            var elapsed = clock.now - started
            Progress.step("fault: 429 Retry-After 1: client saw \(waited) after \(elapsed)")
            expectDelivered(waited, short.bytes, digest: short.digest, "429 Retry-After: 1, then 200\n\(env.diagnostics)")
            #expect(elapsed >= .seconds(1), "the retry came after only \(elapsed): Retry-After ignored?")
            #expect(env.upstream.count("GET", shortPath) == 2, "the fake saw \(env.upstream.count("GET", shortPath)) GETs, expected 2\n\(env.diagnostics)")
            let cached = await env.awaitBlobFile(short.digest)
            #expect(cached, "the blob was not cached after the retry: \(env.blobFiles)")

            let long = env.image.layers[1]
            let longPath = FaultEnvironment.blobPath(long.digest)
            env.upstream.setFault(.rateLimited(retryAfter: "3600", times: 1000), for: long.digest)
            started = clock.now
            let refused = try await FaultRequest.get(port: env.port, path: longPath)
            elapsed = clock.now - started
            Progress.step("fault: 429 Retry-After 3600: client saw \(refused) after \(elapsed)")
            #expect(refused.status == 429, "\(refused)\n\(env.diagnostics)")
            #expect(refused.errorCodes == ["TOOMANYREQUESTS"], "\(refused)")
            let retryAfter = refused.header("Retry-After")
            #expect(retryAfter.flatMap { Int($0) }.map { $0 > 0 } == true, "no usable Retry-After header for the client: \(refused)")
            #expect(elapsed < .seconds(5), "a 1-hour Retry-After took \(elapsed) to reach the client")
            #expect(env.upstream.count("GET", longPath) == 1, "the fake saw \(env.upstream.count("GET", longPath)) GETs, expected 1 (no retry)\n\(env.diagnostics)")
            await expectNothingCached(env, long.digest, "429 Retry-After: 3600")
        }
    }

    /// A valid image manifest of exactly `size` bytes, padded in an annotation.
    static func paddedManifest(_ image: FaultImage, size: Int) -> [UInt8] {
        let layers = image.layers.map { #"{"mediaType":"\#(FaultImage.layerType)","digest":"\#($0.digest)","size":\#($0.bytes.count)}"# }
        let prefix = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"\#(FaultImage.configType)","digest":"\#(image.configDigest)","size":\#(image.config.count)},"layers":[\#(layers.joined(separator: ","))],"annotations":{"org.example.padding":""#
        let suffix = #""}}"#
        let padding = size - prefix.utf8.count - suffix.utf8.count
        return Array((prefix + String(repeating: "a", count: padding) + suffix).utf8)
    }

    @Test("a manifest by digest of 4 MiB + 1 byte → 502 UNKNOWN, not stored (refetched); exactly 4 MiB is served and stored")
    func oversizedManifest() async throws {
        try await FaultEnvironment.with(layerSizes: [64 << 10]) { env in
            let limit = 4 * 1024 * 1024
            let over = Self.paddedManifest(env.image, size: limit + 1)
            let overDigest = over.sha256
            let overPath = FaultEnvironment.manifestPath(overDigest.description)
            let overSize = over.count
            #expect(overSize == limit + 1)
            let parses = (try? JSONSerialization.jsonObject(with: Data(over))) != nil
            #expect(parses, "the padded manifest is not valid JSON")
            env.upstream.setRoute(.content(over, contentType: MediaType.ociManifest, digest: overDigest), for: overPath)

            for attempt in 1...2 {
                let response = try await FaultRequest.get(port: env.port, path: overPath, headers: Self.manifestAccept)
                Progress.step("fault: oversized manifest, attempt \(attempt): client saw \(response)")
                #expect(response.status == 502, "attempt \(attempt): \(response)\n\(env.diagnostics)")
                #expect(response.errorCodes == ["UNKNOWN"], "attempt \(attempt): \(response)")
                #expect(response.body.count < 64 << 10, "attempt \(attempt): \(response.body.count) body bytes")
                #expect(env.upstream.count("GET", overPath) == attempt,
                        "attempt \(attempt): the fake saw \(env.upstream.count("GET", overPath)) GETs, expected \(attempt) (not stored, not retried)\n\(env.diagnostics)")
                let stored = env.blobFiles
                #expect(stored.isEmpty, "attempt \(attempt): something was stored (the oversized manifest is \(overDigest)): \(stored)")
            }

            // The boundary: exactly 4 MiB is not "larger than 4 MiB".
            let atLimit = Self.paddedManifest(env.image, size: limit)
            let atLimitDigest = atLimit.sha256
            let atLimitPath = FaultEnvironment.manifestPath(atLimitDigest.description)
            env.upstream.setRoute(.content(atLimit, contentType: MediaType.ociManifest, digest: atLimitDigest), for: atLimitPath)
            for attempt in 1...2 {
                let response = try await FaultRequest.get(port: env.port, path: atLimitPath, headers: Self.manifestAccept)
                #expect(response.status == 200, "4 MiB manifest, attempt \(attempt): \(response)\n\(env.diagnostics)")
                let same = response.body == atLimit
                #expect(same, "4 MiB manifest, attempt \(attempt): \(response.body.count) bytes, not the upstream's")
                #expect(response.header("Docker-Content-Digest") == atLimitDigest.description, "\(response)")
            }
            #expect(env.upstream.count("GET", atLimitPath) == 1, "the 4 MiB manifest was fetched \(env.upstream.count("GET", atLimitPath)) times, expected once")
            let stored = env.blobFileExists(atLimitDigest)
            #expect(stored, "the 4 MiB manifest was not stored: \(env.blobFiles)")
        }
    }
}
