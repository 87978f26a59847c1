import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 10, item 6: `/readyz` said ready on a 100% full disk (it checked a permission bit,
/// which root passes anyway). A real full filesystem, without touching the host's mounts: the
/// mirror runs in a mount namespace of its own, where its data directory is an 8 MiB tmpfs,
/// and the test fills that tmpfs through /proc/PID/root.
@Suite("Readiness on a full disk", .serialized)
struct FullDiskTests {
    @Test("/readyz answers 503 naming the write error when the store's filesystem is full, 200 again once space is freed")
    func fullDiskIsNotReady() async throws {
        _ = try TestPaths.executable("unshare")
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-fulldisk")
        defer { work.remove() }
        let data = try work.subdirectory("data")
        // No free-space floor: the write probe alone must notice.
        let config = work.url.appendingPathComponent("mirror.yaml")
        try "storage:\n  min_free_space: 0\n".write(to: config, atomically: true, encoding: .utf8)
        let mirror = try await MirrorProcess.start(
            dataDirectory: data, logDirectory: try work.subdirectory("logs"), extraArguments: ["--offline", "--config", config.path],
            launcher: ["unshare", "--mount", "--propagation", "private",
                       "sh", "-c", #"mount -t tmpfs -o size=8m registry-mirror-test "$0" && exec "$@""#, data.path])
        try await mirror.stopping { try await fill($0, data: data) }
    }

    func fill(_ mirror: MirrorProcess, data: URL) async throws {
        let pid = try #require(mirror.serverPID)
        let store = "/proc/\(pid)/root\(data.path)"
        var fs = statvfs()
        try #require(statvfs(store, &fs) == 0 && Int64(fs.f_blocks) * Int64(fs.f_frsize) <= 8 << 20,
                     "the mirror's data directory is not the small tmpfs: \(Int64(fs.f_blocks) * Int64(fs.f_frsize)) bytes")
        let ready = try RawHTTP.get(port: mirror.port, path: "/readyz")
        #expect(ready.status == 200, "\(ready)")

        let filler = store + "/filler"
        let fd = open(filler, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        try #require(fd >= 0, "open \(filler): errno \(errno)")
        let chunk = [UInt8](repeating: 0xff, count: 64 << 10)
        var failure: Int32 = 0
        while failure == 0 {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            if n < 0 { failure = errno }
        }
        close(fd)
        #expect(failure == ENOSPC, "filling the tmpfs stopped with errno \(failure)")

        var full = ready
        try await waitUntil("/readyz to answer 503 on the full disk", timeout: .seconds(30)) {
            full = try RawHTTP.get(port: mirror.port, path: "/readyz")
            return full.status == 503
        }
        let reason = String(decoding: full.body, as: UTF8.self)
        #expect(reason.contains("the store cannot be written") && reason.contains("No space left on device"), "\(reason)")
        #expect(try RawHTTP.get(port: mirror.port, path: "/healthz").status == 200, "alive, though not ready")

        unlink(filler)
        try await waitUntil("/readyz to answer 200 once space is freed", timeout: .seconds(30)) {
            try RawHTTP.get(port: mirror.port, path: "/readyz").status == 200
        }
    }
}
