import Foundation
import OCI
import Testing

/// SIGTERM while a client reads a download that has stalled: the fill service gives it its
/// grace (10 s), then cancels it cleanly. The process exits 0 within the grace and a margin,
/// the client's body is cut (never completed with wrong bytes), no `.part` file and no blob
/// is left, and the next start downloads the blob anew and serves it whole.
@Suite("registry-mirror on SIGTERM during a fill", .serialized)
struct ShutdownTests {
    static let blobSize = 32 << 20
    static let stallAt = 4 << 20
    /// `ServeSettings.fillShutdownGrace`.
    static let grace: Duration = .seconds(10)

    @Test("SIGTERM during a stalled fill with a reader: exit 0 within the grace, nothing partial kept; the next start serves the blob")
    func sigtermDuringFill() async throws {
        try await FaultEnvironment.with(layerSizes: [Self.blobSize]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            env.upstream.setFault(.stall(afterBytes: Self.stallAt), for: layer.digest)

            let client = FaultRequest.start(port: env.port, path: path)
            try await waitUntil("the fill to stall at \(Self.stallAt >> 20) MiB", timeout: .seconds(30)) {
                env.partFiles.contains { CrashSafetyTests.size(env.dataDirectory.appendingPathComponent("tmp").appendingPathComponent($0)) >= Int64(Self.stallAt) }
            }
            let clock = ContinuousClock()
            let started = clock.now
            let status = await env.mirror.terminate(timeout: Self.grace + .seconds(10))
            let took = clock.now - started
            Progress.step("shutdown: exit status \(status.map(String.init) ?? "none") after \(took)")
            #expect(status == 0, "the mirror did not exit cleanly after SIGTERM (status \(status.map(String.init) ?? "none: still running")) \n\(env.mirror.stderr.suffix(3000))")
            #expect(took < Self.grace + .seconds(5), "the mirror took \(took) to exit after SIGTERM")

            let cut = try await client.result()
            #expect(!cut.isCompleteOK, "the client got a complete body from a fill that was cancelled: \(cut)")
            #expect(env.partFiles.isEmpty, "partial files left under DATA/tmp: \(env.partFiles)")
            #expect(!env.blobFileExists(layer.digest), "an unverified blob was published under DATA/blobs")

            env.upstream.setFault(.none, for: layer.digest)
            let restarted = try await env.startAnotherMirror()
            try await restarted.stopping { mirror in
                let response = try await FaultRequest.get(port: mirror.port, path: path)
                #expect(response.isCompleteOK, "GET after the restart: \(response)\n\(mirror.stderr.suffix(3000))")
                #expect(response.body.sha256 == layer.digest, "the body after the restart hashes to \(response.body.sha256)")
                #expect(env.upstream.count("GET", path) == 2, "\(env.diagnostics)")
                let cached = await env.awaitBlobFile(layer.digest)
                #expect(cached, "the blob was not cached after the restart")
                try await env.expectConsistentStore("after the refill")
            }
        }
    }
}
