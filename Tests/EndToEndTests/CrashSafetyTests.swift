import Foundation
import OCI
import Testing

/// `kill -9` in the middle of a fill: after a restart on the same data directory no partial
/// blob is visible, the dead process's temp folder is swept, `verify` is clean, and the same
/// GET downloads the blob once more and serves it whole.
@Suite("registry-mirror after kill -9 mid-fill", .serialized)
struct CrashSafetyTests {
    static let blobSize = 256 << 20
    /// Where the fake stalls: the partial file is this big when the mirror is killed.
    static let stallAt = 8 << 20

    @Test("kill -9 during a 256 MiB fill: nothing partial published, tmp swept, verify clean; the GET then succeeds with one more download")
    func killMidFill() async throws {
        try await FaultEnvironment.with(layerSizes: [Self.blobSize]) { env in
            let layer = env.image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)
            let tmp = env.dataDirectory.appendingPathComponent("tmp")
            env.upstream.setFault(.stall(afterBytes: Self.stallAt), for: layer.digest)

            let client = FaultRequest.start(port: env.port, path: path)
            var partial: String?
            try await waitUntil("a partial file of \(Self.stallAt >> 20) MiB under DATA/tmp", timeout: .seconds(30)) {
                partial = env.partFiles.first { Self.size(tmp.appendingPathComponent($0)) >= Int64(Self.stallAt) }
                return partial != nil
            }
            let oldFolder = try #require(partial?.split(separator: "/").first.map(String.init))
            Progress.step("crash: \(partial ?? "") holds \(Self.stallAt >> 20) MiB; kill -9")
            await env.mirror.kill()

            let cut = try await client.result()
            #expect(!cut.isCompleteOK, "the client of the killed mirror got a complete body: \(cut)")
            #expect(cut.body.count <= Self.stallAt, "\(cut)")
            #expect(env.upstream.count("GET", path) == 1, "\(env.diagnostics)")
            // The crash left its partial file, unpublished: the situation the restart must clean up.
            #expect(FileManager.default.fileExists(atPath: tmp.appendingPathComponent(partial ?? "-").path), "the partial file vanished with the process")
            let published = env.blobFileExists(layer.digest)
            #expect(!published, "a partial blob was published under DATA/blobs")

            env.upstream.setFault(.none, for: layer.digest)
            let restarted = try await env.startAnotherMirror()
            do {
                let folders = try FileManager.default.contentsOfDirectory(atPath: tmp.path)
                #expect(folders.count == 1 && !folders.contains(oldFolder), "DATA/tmp after the restart: \(folders); the dead process's was \(oldFolder)")
                let leftovers = Files.regularFiles(under: tmp).filter { !$0.hasSuffix("/.lock") }
                #expect(leftovers.isEmpty, "files left under DATA/tmp after the restart: \(leftovers)")
                #expect(env.blobFiles.isEmpty, "DATA/blobs after the restart: \(env.blobFiles)")
                try await env.expectConsistentStore("after kill -9 and restart")

                let clock = ContinuousClock()
                let started = clock.now
                let response = try await FaultRequest.get(port: restarted.port, path: path)
                Progress.step("crash: GET after the restart: \(response.status.map(String.init) ?? "none"), \(response.body.count) B in \(clock.now - started)")
                #expect(response.isCompleteOK, "GET after the restart: \(response)\n\(restarted.stderr.suffix(3000))")
                let digest = response.body.sha256
                #expect(digest == layer.digest, "the body after the restart hashes to \(digest)")
                #expect(env.upstream.count("GET", path) == 2, "the upstream saw \(env.upstream.count("GET", path)) GETs in all, expected 2\n\(env.diagnostics)")
                let cached = await env.awaitBlobFile(layer.digest)
                #expect(cached, "the blob was not cached after the restart")
                try await env.expectConsistentStore("after the refill")
            } catch {
                await restarted.stop()
                throw error
            }
            await restarted.stop()
        }
    }

    static func size(_ url: URL) -> Int64 {
        ((try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? NSNumber)?.int64Value ?? 0
    }
}
