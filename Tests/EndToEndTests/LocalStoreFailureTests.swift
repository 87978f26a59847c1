import Foundation
import OCI
import Testing

/// The mirror's own store failing (issue 10, item 6): a full disk, a locked index. It must be
/// reported as the mirror's failure (never as the upstream sending bad content), count only
/// the bytes that went out, and leave nothing unverified or unindexed behind.
///
/// The data directory is a small tmpfs mounted by the test (the tests run as root).
@Suite("the local store failing", .serialized)
struct LocalStoreFailureTests {
    /// Mounts a tmpfs of `size` at a fresh directory for `body`, and unmounts it after.
    static func withSmallDisk(_ size: String, _ body: (URL) async throws -> Void) async throws {
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-disk")
        defer { work.remove() }
        let mount = try work.subdirectory("disk")
        try await Command.check("mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", mount.path])
        do {
            try await body(mount)
        } catch {
            _ = try? await Command.run("umount", ["-l", mount.path])
            throw error
        }
        _ = try await Command.run("umount", ["-l", mount.path])
    }

    /// Fills the disk under `directory` with a file until writes fail; returns the file.
    static func fill(_ directory: URL) throws -> URL {
        let filler = directory.appendingPathComponent("filler")
        let fd = open(filler.path, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        guard fd >= 0 else { throw E2EError("cannot create \(filler.path)") }
        defer { close(fd) }
        let block = [UInt8](repeating: 0x5a, count: 64 << 10)
        var chunk = block.count
        while chunk > 0 {
            if block.withUnsafeBytes({ write(fd, $0.baseAddress, chunk) }) < 0 { chunk /= 2 }
        }
        return filler
    }

    @Test("a fill that runs out of disk is the local store's failure: logged and counted so, the bytes sent counted, nothing kept")
    func fullDiskDuringAFill() async throws {
        try await Self.withSmallDisk("6m") { disk in
            let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-disk-upstream")
            defer { work.remove() }
            let image = FaultImage.make(layerSizes: [12 << 20])
            let upstream = try FaultUpstream.start(image: image)
            let data = disk.appendingPathComponent("data")
            let mirror = try await MirrorProcess.start(dataDirectory: data, logDirectory: try work.subdirectory("logs"),
                                                       extraArguments: ["--upstream", "http://\(upstream.host)", "--log-level", "info"])
            defer { Task { await mirror.stop(); await upstream.stop() } }
            let layer = image.layers[0]
            let path = FaultEnvironment.blobPath(layer.digest)

            let response = try await FaultRequest.start(port: mirror.port, path: path, timeout: 20).result(timeout: .seconds(40))
            #expect(!response.isCompleteOK, "a 12 MiB blob cannot fit a 6 MiB disk: \(response)")
            #expect(response.body.count < layer.bytes.count)

            let stderr = mirror.stderr
            #expect(stderr.contains("local store"), "the log does not blame the local store:\n\(stderr.suffix(3000))")
            #expect(stderr.contains("No space left on device"), "the log does not say the disk is full:\n\(stderr.suffix(3000))")
            #expect(!stderr.contains("failed verification") && !stderr.contains("sent a bad blob"),
                    "the full disk was blamed on the upstream:\n\(stderr.suffix(3000))")
            // The request log counts what went out, not the Content-Length.
            let logged = stderr.split(separator: "\n").first { $0.contains("http.route=blob") || ($0.contains("\"http.route\":\"blob\"")) } ?? ""
            #expect(!logged.contains("bytes=\(layer.bytes.count)"), "the request log counted the whole blob: \(logged)")

            let metrics = try RawHTTP.get(port: mirror.port, path: "/metrics")
            let text = String(decoding: metrics.body, as: UTF8.self)
            #expect(text.contains("registry_mirror_store_failures_total 1"), "store failures not counted:\n\(text.split(separator: "\n").filter { $0.contains("failures") })")
            #expect(!text.contains("registry_mirror_verification_failures_total 1"), "counted as a verification failure")
            let served = text.split(separator: "\n").first { $0.hasPrefix("registry_mirror_served_bytes_total ") }
            let servedBytes = served.flatMap { Int64($0.split(separator: " ").last!) } ?? 0
            #expect(servedBytes < Int64(layer.bytes.count), "served bytes count the whole blob: \(served ?? "none")")

            // Nothing kept; with room again, the same GET succeeds and caches.
            let parts = Files.regularFiles(under: data.appendingPathComponent("tmp")).filter { $0.hasSuffix(".part") }
            #expect(parts.isEmpty, "partial files left: \(parts)")
            #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).isEmpty)
            await mirror.stop()
            await upstream.stop()
        }
    }

    @Test("a manifest GET on a full disk: 500 naming the local store, and no file left behind")
    func fullDiskForAManifest() async throws {
        try await Self.withSmallDisk("4m") { disk in
            let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-disk-upstream")
            defer { work.remove() }
            let image = FaultImage.make(layerSizes: [1024])
            let upstream = try FaultUpstream.start(image: image)
            let data = disk.appendingPathComponent("data")
            let mirror = try await MirrorProcess.start(dataDirectory: data, logDirectory: try work.subdirectory("logs"),
                                                       extraArguments: ["--upstream", "http://\(upstream.host)"])
            let filler = try Self.fill(disk)
            let response = try RawHTTP.request("GET", port: mirror.port, path: FaultEnvironment.manifestPath(image.manifestDigest.description),
                                               headers: FaultInjectionTests.manifestAccept)
            let body = String(decoding: response.body, as: UTF8.self)
            #expect(response.status == 500, "\(response)")
            #expect(body.contains("local store") && body.contains("\"code\":\"UNKNOWN\""), "the envelope does not name the local store: \(body)")
            #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).isEmpty, "a manifest file stayed behind")
            try FileManager.default.removeItem(at: filler)
            let retry = try RawHTTP.request("GET", port: mirror.port, path: FaultEnvironment.manifestPath(image.manifestDigest.description),
                                            headers: FaultInjectionTests.manifestAccept)
            #expect(retry.status == 200 && retry.body == image.manifest, "with room again: \(retry)")
            await mirror.stop()
            await upstream.stop()
        }
    }

    @Test("a manifest the index cannot record (held locked by another process) is not left in the store")
    func lockedIndexLeavesNoUnindexedFile() async throws {
        try await FaultEnvironment.with(layerSizes: [1024]) { env in
            // Another process holds the index's write lock past the busy timeout (10 s).
            let index = env.dataDirectory.appendingPathComponent("index.sqlite")
            #expect(FileManager.default.fileExists(atPath: index.path), "no index at \(index.path)")
            let locker = try ChildProcess(name: "sqlite-locker", program: try TestPaths.executable("python3"), arguments: [
                "-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(14)",
                index.path,
            ], logDirectory: try env.work.subdirectory("locker"))
            try await waitUntil("the index to be locked", process: locker) { locker.stdout.contains("locked") }
            let response = try RawHTTP.request("GET", port: env.port, path: FaultEnvironment.manifestPath(env.image.manifestDigest.description),
                                               headers: FaultInjectionTests.manifestAccept, timeout: 30)
            await locker.stop()
            #expect(response.status == 500, "\(response)")
            #expect(String(decoding: response.body, as: UTF8.self).contains("local index"), "\(response)")
            let left = env.blobFileExists(env.image.manifestDigest)
            #expect(!left, "the manifest file stayed in the store with no index row\n\(env.diagnostics)")
            let retry = try RawHTTP.request("GET", port: env.port, path: FaultEnvironment.manifestPath(env.image.manifestDigest.description),
                                            headers: FaultInjectionTests.manifestAccept)
            #expect(retry.status == 200, "after the lock: \(retry)")
            try await env.expectConsistentStore("after the locked index")
        }
    }
}
