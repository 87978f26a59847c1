import Foundation
import OCI
import Testing
import Upstream

/// Being a better neighbour to the upstream: a `User-Agent` on every request, an upstream
/// that is down remembered (stale tags and 503s at once, one probe at a time), Docker Hub's
/// rate limit kept in reserve, and a plain 404 for a missing blob not logged as a warning.
@Suite("registry-mirror and an unwell upstream", .serialized)
struct UpstreamHealthTests {
    static let manifestAccept = [("Accept", MediaType.manifestAccept.joined(separator: ", "))]

    static func timed<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
        let clock = ContinuousClock()
        let started = clock.now
        let result = try body()
        return (result, clock.now - started)
    }

    @Test("a stopped upstream is marked down: stale tags and 503s at once, shown on the status page and /metrics; a probe finds it back")
    func stoppedUpstreamIsRememberedAndProbed() async throws {
        try await PullThroughScope.run("upstream-down") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: 1313), to: upstream.host, "health/app")
            // Every tag request revalidates, so each one would ask the dead upstream.
            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)", "--tag-ttl", "0s"])
            let tagPath = "/v2/health/app/manifests/v1"
            let warm = try PullThroughHTTP.manifest(port: mirror.port, tagPath)
            try #require(warm.status == 200, "\(warm)")
            #expect(warm.header("Warning") == nil, "\(warm)")
            let userAgent = RegistryMirrorVersion.userAgent
            #expect(upstream.accessLog.contains("\"\(userAgent)\""), "the upstream's access log shows no \(userAgent):\n\(upstream.accessLog.suffix(2000))")

            await upstream.stop()
            // down_after is 3: the first three failing revalidations each pay for the retries.
            var slow: [Duration] = []
            for i in 1...3 {
                let (stale, elapsed) = try Self.timed { try PullThroughHTTP.manifest(port: mirror.port, tagPath) }
                #expect(stale.status == 200 && stale.body == warm.body, "stale answer \(i): \(stale)")
                #expect(stale.header("Warning")?.hasPrefix("110") == true, "stale answer \(i): \(stale)")
                slow.append(elapsed)
            }
            // Marked down: the stale tag comes at once, with no upstream attempt.
            let (fast, fastElapsed) = try Self.timed { try PullThroughHTTP.manifest(port: mirror.port, tagPath) }
            Progress.step("upstream down: stale answers took \(slow) before it was marked down, \(fastElapsed) after")
            #expect(fast.status == 200 && fast.body == warm.body, "\(fast)")
            #expect(fast.header("Warning")?.hasPrefix("110") == true, "\(fast)")
            #expect(slow[0] >= .milliseconds(500), "the first failing answer took only \(slow[0]): were there no retries?")
            #expect(fastElapsed < .milliseconds(300), "a stale answer while marked down took \(fastElapsed)\n\(mirror.stderr.suffix(3000))")
            #expect(fastElapsed * 3 < slow[0], "marked down: \(fastElapsed), the first failing answer: \(slow[0])")

            // Uncached content: a clear 503 at once, naming the upstream.
            let uncachedBlob = "/v2/health/app/blobs/\(Array("never cached \(UUID())".utf8).sha256)"
            for path in ["/v2/health/other/manifests/v1", uncachedBlob] {
                let (refused, elapsed) = try Self.timed {
                    try RawHTTP.request("GET", port: mirror.port, path: path, headers: Self.manifestAccept)
                }
                #expect(refused.status == 503 && refused.errorCodes == ["UNAVAILABLE"], "\(path): \(refused)")
                let detail = PullThroughHTTP.errorDetails(refused).joined()
                #expect(detail.contains(upstream.host) && detail.contains("marked down"), "\(path): \(detail)")
                #expect(refused.header("Retry-After").flatMap { Int($0) }.map { $0 >= 1 } == true, "\(path): \(refused)")
                #expect(elapsed < .milliseconds(300), "\(path): a 503 while marked down took \(elapsed)")
            }

            let metrics = try RawHTTP.get(port: mirror.port, path: "/metrics").bodyText
            let downSeries = #"registry_mirror_upstream_down{upstream="\#(upstream.host)"}"#
            #expect(metrics.contains(downSeries + " ") && MetricsText.value(metrics, downSeries) == 1, "\(metrics)")
            #expect(MetricsText.value(metrics, #"registry_mirror_upstream_marked_down_total{upstream="\#(upstream.host)"}"#) == 1, "\(metrics)")
            let page = try RawHTTP.get(port: mirror.port, path: "/").bodyText
            #expect(page.contains("<span class=\"bad\">down</span>") && page.contains("next check in"), "\(page)")
            let warnings = mirror.stderr.split(separator: "\n").filter { $0.contains("upstream marked down") }
            #expect(warnings.count == 1 && warnings.allSatisfy { $0.contains(" warning ") }, "\(warnings)")

            // The upstream comes back on the same port: a probe (after 1 s, 2 s, 4 s …) finds it.
            let back = try await upstream.restarted()
            do {
                let clock = ContinuousClock()
                let restarted = clock.now
                var fresh: RawResponse?
                try await waitUntil("a tag answer that is not stale", timeout: .seconds(20)) {
                    let response = try PullThroughHTTP.manifest(port: mirror.port, tagPath)
                    if response.status == 200, response.header("Warning") == nil { fresh = response }
                    return fresh != nil
                }
                Progress.step("upstream down: fresh again \(clock.now - restarted) after the upstream restarted")
                #expect(fresh?.body == warm.body)
                let cold = try PullThroughHTTP.manifest(port: mirror.port, "/v2/health/other/manifests/v1")
                #expect(cold.status == 404 && cold.errorCodes == ["MANIFEST_UNKNOWN"], "an answer again, not a refusal: \(cold)")
                let after = try RawHTTP.get(port: mirror.port, path: "/metrics").bodyText
                #expect(after.contains(downSeries + " ") && MetricsText.value(after, downSeries) == 0, "\(after)")
                let upPage = try RawHTTP.get(port: mirror.port, path: "/").bodyText
                #expect(!upPage.contains("<span class=\"bad\">down</span>") && upPage.contains("<span class=\"ok\">up</span>"), "\(upPage)")
                #expect(mirror.stderr.contains("upstream is back"), "\(mirror.stderr.suffix(3000))")
                #expect(back.accessLog.contains("\"\(userAgent)\""), "\(back.accessLog.suffix(2000))")
            } catch {
                await back.stop()
                throw error
            }
            await back.stop()
        }
    }

    @Test("a dead host behind the upstream's redirect (a CDN) fails those blobs but does not mark the upstream down")
    func deadRedirectTargetIsNotTheUpstreamDown() async throws {
        try await FaultEnvironment.with(layerSizes: [4096, 4096, 4096]) { env in
            let deadCDN = try Ports.free()
            for (i, layer) in env.image.layers.enumerated() {
                env.upstream.setRoute(.redirect("http://127.0.0.1:\(deadCDN)/blob-\(i)", status: 307), for: FaultEnvironment.blobPath(layer.digest))
                let failed = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(layer.digest))
                #expect(failed.status == 503 && failed.errorCodes == ["UNAVAILABLE"], "blob \(i): \(failed)\n\(env.diagnostics)")
                #expect(env.upstream.count("GET", FaultEnvironment.blobPath(layer.digest)) == 3, "blob \(i): retried as before\n\(env.diagnostics)")
            }
            // The registry itself answered every time: its manifests are still asked for.
            let manifest = try await FaultRequest.get(port: env.port, path: FaultEnvironment.manifestPath(FaultImage.tag), headers: Self.manifestAccept)
            #expect(manifest.status == 200 && manifest.body == env.image.manifest, "\(manifest)\n\(env.diagnostics)")
            #expect(!env.mirror.stderr.contains("upstream marked down"), "\(env.diagnostics)")
        }
    }

    @Test("at Docker Hub's rate-limit reserve, a moved tag keeps its cached digest (stale, with Warning) instead of spending a pull")
    func rateLimitReserveKeepsTheLastPulls() async throws {
        try await FaultEnvironment.with(layerSizes: [4096], upstreamSettings: [("tag_ttl", "0s"), ("rate_limit_reserve", "10")]) { env in
            let tagPath = FaultEnvironment.manifestPath(FaultImage.tag)
            env.upstream.extraHeaders = [("RateLimit-Limit", "100;w=21600"), ("RateLimit-Remaining", "50;w=21600")]
            let first = try await FaultRequest.get(port: env.port, path: tagPath, headers: Self.manifestAccept)
            try #require(first.status == 200 && first.header("Docker-Content-Digest") == env.image.manifestDigest.description, "\(first)\n\(env.diagnostics)")

            // The tag moves; 50 pulls left is above the reserve: the new digest is fetched.
            let second = try moveTag(env, annotation: "second")
            let moved = try await FaultRequest.get(port: env.port, path: tagPath, headers: Self.manifestAccept)
            #expect(moved.status == 200 && moved.header("Docker-Content-Digest") == second.digest.description, "\(moved)\n\(env.diagnostics)")
            #expect(moved.header("Warning") == nil, "\(moved)")
            #expect(env.upstream.count("GET", FaultEnvironment.manifestPath(second.digest.description)) == 1, "\(env.diagnostics)")

            // It moves again, and the HEAD says 10 are left: the reserve. No GET; the cached digest, stale.
            env.upstream.extraHeaders = [("RateLimit-Limit", "100;w=21600"), ("RateLimit-Remaining", "10;w=21600")]
            let third = try moveTag(env, annotation: "third")
            let getsBefore = env.upstream.requests().filter { $0.method == "GET" && $0.path.contains("/manifests/") }.count
            let kept = try await FaultRequest.get(port: env.port, path: tagPath, headers: Self.manifestAccept)
            #expect(kept.status == 200 && kept.header("Docker-Content-Digest") == second.digest.description, "\(kept)\n\(env.diagnostics)")
            #expect(kept.body == second.bytes, "\(kept)")
            #expect(kept.header("Warning")?.hasPrefix("110") == true, "\(kept)")
            let getsAfter = env.upstream.requests().filter { $0.method == "GET" && $0.path.contains("/manifests/") }.count
            #expect(getsAfter == getsBefore, "a manifest GET was spent at the reserve\n\(env.diagnostics)")
            #expect(env.upstream.count("HEAD", tagPath) == 3, "the revalidation HEADs (free) still go out\n\(env.diagnostics)")

            let page = try RawHTTP.get(port: env.port, path: "/").bodyText
            #expect(page.contains("10 pulls left"), "\(page)")
            let metrics = try RawHTTP.get(port: env.port, path: "/metrics").bodyText
            #expect(MetricsText.value(metrics, #"registry_mirror_upstream_ratelimit_remaining{upstream="up"}"#) == 10, "\(metrics)")
            #expect(MetricsText.value(metrics, #"registry_mirror_stale_serves_total{upstream="up"}"#) == 1, "\(metrics)")

            // The window refills: the next revalidation fetches the new digest.
            env.upstream.extraHeaders = [("RateLimit-Limit", "100;w=21600"), ("RateLimit-Remaining", "99;w=21600")]
            let fresh = try await FaultRequest.get(port: env.port, path: tagPath, headers: Self.manifestAccept)
            #expect(fresh.status == 200 && fresh.header("Docker-Content-Digest") == third.digest.description && fresh.header("Warning") == nil,
                    "\(fresh)\n\(env.diagnostics)")

            // Every request the upstream saw said who was calling.
            let requests = env.upstream.requests()
            #expect(!requests.isEmpty && requests.allSatisfy { $0.header("User-Agent") == RegistryMirrorVersion.userAgent },
                    "\(requests.filter { $0.header("User-Agent") != RegistryMirrorVersion.userAgent })")
        }
    }

    /// Points the fake's tag at a new manifest over the same blobs (it differs by an annotation).
    func moveTag(_ env: FaultEnvironment, annotation: String) throws -> (digest: Digest, bytes: [UInt8]) {
        var text = String(decoding: env.image.manifest, as: UTF8.self)
        text.removeLast()
        text += #","annotations":{"moved":"\#(annotation)"}}"#
        let bytes = Array(text.utf8)
        let digest = bytes.sha256
        for reference in [FaultImage.tag, digest.description] {
            env.upstream.setRoute(.content(bytes, contentType: MediaType.ociManifest, digest: digest), for: FaultEnvironment.manifestPath(reference))
        }
        return (digest, bytes)
    }

    @Test("a blob the upstream does not have: 404 BLOB_UNKNOWN, logged at debug, not as a warning")
    func missingBlobIsNoWarning() async throws {
        try await FaultEnvironment.with(layerSizes: [4096]) { env in
            let missing = Array("a blob nobody has \(UUID())".utf8).sha256
            let response = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(missing))
            #expect(response.status == 404 && response.errorCodes == ["BLOB_UNKNOWN"], "\(response)\n\(env.diagnostics)")
            let lines = env.mirror.stderr.split(separator: "\n").filter { $0.contains("blob download failed") && $0.contains(missing.description) }
            #expect(lines.count == 1 && lines.allSatisfy { $0.contains(" debug ") }, "\(lines)\n\(env.diagnostics)")
            let warnings = env.mirror.stderr.split(separator: "\n").filter { $0.contains(" warning ") }
            #expect(warnings.isEmpty, "\(warnings)")

            // A real fault is still a warning.
            let layer = env.image.layers[0]
            env.upstream.setFault(.wrongBytes, for: layer.digest)
            _ = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(layer.digest))
            let faults = env.mirror.stderr.split(separator: "\n").filter { $0.contains("blob download failed") && $0.contains(layer.digest.description) }
            #expect(faults.count == 1 && faults.allSatisfy { $0.contains(" warning ") }, "\(faults)\n\(env.diagnostics)")
        }
    }
}
