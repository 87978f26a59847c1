import Foundation
import OCI
import Testing

/// Blob bodies sent as buffers on plain HTTP (`--no-sendfile`, and an upstream's relayed range
/// whatever the setting) wait for the socket, as they do over TLS: slow clients cannot make the
/// mirror hold the blob in memory. Real mirror processes in front of a real docker-registry,
/// curl as the clients.
@Suite("Paced buffered bodies on plain HTTP", .serialized)
struct PacedBodyTests {
    static let readers = 8
    /// What the readers may add to the mirror's peak RSS together. Measured here: paced, 4 MiB
    /// (no-sendfile) and 15 MiB (relayed ranges: 1 MiB of relay buffer each, and the download
    /// beside them); unpaced, 91 MiB (the fast readers) and 68 MiB.
    static let bound = 32 << 20

    @Test("with --no-sendfile, 8 fast and then 8 slow readers of a cached 32 MiB blob over plain HTTP get it whole, and the mirror's peak RSS grows by less than the blob")
    func slowReadersNoSendfile() async throws {
        try await PullThroughScope.run("paced no-sendfile") { scope in
            let registry = try await scope.registry()
            let bytes = try LazyPullTests.randomBytes(32 << 20)
            let digest = try PullThroughHTTP.uploadBlob(port: registry.port, "paced/layer", bytes)
            let mirror = try await scope.mirror(["--upstream", "http://\(registry.host)", "--no-sendfile"])
            let url = "http://\(mirror.host)/v2/paced/layer/blobs/\(digest)"
            let warm = try RawHTTP.get(port: mirror.port, path: "/v2/paced/layer/blobs/\(digest)")
            #expect(warm.status == 200 && warm.body.sha256 == digest, "the filling GET: HTTP \(warm.status), \(warm.body.count) bytes")

            let pid = try #require(mirror.serverPID)
            let before = try TLSEndToEndTests.peakRSS(pid)
            let fast = try await Self.curls(Self.readers) { index in
                let result = try await Command.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url])
                return (result, scope.unique("fast-\(index)"))
            }
            for (result, _) in fast { #expect(result.stdout == "200 \(bytes.count)", "\(result.summary)") }
            let afterFast = try TLSEndToEndTests.peakRSS(pid) - before
            // 8 MB/s each: 4 s for the blob, while the mirror could read it from disk in milliseconds.
            let results = try await Self.curls(Self.readers) { index in
                let file = scope.unique("slow-\(index)")
                let result = try await Command.run("curl", ["-sS", "--limit-rate", "8M", "-o", file.path, "-w", "%{http_code} %{size_download}", url])
                return (result, file)
            }
            for (result, file) in results {
                #expect(result.stdout == "200 \(bytes.count)", "\(result.summary)")
                #expect(try Files.read(file).sha256 == digest, "a slow reader's blob does not match its digest")
            }
            let growth = try TLSEndToEndTests.peakRSS(pid) - before
            Progress.step("paced: \(Self.readers) fast, then slow readers of a \(bytes.count >> 20) MiB blob with --no-sendfile raised peak RSS by \(afterFast >> 20) MiB after the fast ones, \(growth >> 20) MiB in all (from \(before >> 20) MiB)")
            #expect(growth < Self.bound, "peak RSS grew by \(growth >> 20) MiB with \(Self.readers) fast, then slow readers of a \(bytes.count >> 20) MiB blob")
        }
    }

    @Test("8 slow readers of the last 16 MiB of a cold 48 MiB blob get the upstream's relayed 206, and the mirror's peak RSS grows by far less than their bodies")
    func slowRelayedRanges() async throws {
        try await PullThroughScope.run("paced ranges") { scope in
            let registry = try await scope.registry()
            let size = 48 << 20, tail = 16 << 20
            let bytes = try LazyPullTests.randomBytes(size)
            let digest = try PullThroughHTTP.uploadBlob(port: registry.port, "paced/ranges", bytes)
            // An unpaced proxy, only to see which ranges the mirror asked the upstream for.
            try await LazyPullTests.withProxy(to: registry, bytesPerSecond: nil, scope: scope) { proxy in
                let mirror = try await scope.mirror(["--upstream", "http://\(proxy.host)"])
                let path = "/v2/paced/ranges/blobs/\(digest)"
                let pid = try #require(mirror.serverPID)
                let before = try TLSEndToEndTests.peakRSS(pid)
                let range = "\(size - tail)-\(size - 1)"
                let results = try await Self.curls(Self.readers) { index in
                    let file = scope.unique("range-\(index)")
                    let result = try await Command.run("curl", ["-sS", "--limit-rate", "4M", "-r", range, "-o", file.path,
                                                                "-w", "%{http_code} %{size_download}", "http://\(mirror.host)\(path)"])
                    return (result, file)
                }
                let expected = Array(bytes.suffix(tail)).sha256
                for (result, file) in results {
                    #expect(result.stdout == "206 \(tail)", "\(result.summary)")
                    #expect(try Files.read(file).sha256 == expected, "a slow reader's range has the wrong bytes")
                }
                let growth = try TLSEndToEndTests.peakRSS(pid) - before
                // Ranges the download had not reached were relayed; the rest came from the download.
                let relayed = proxy.requests(for: path).filter { $0 == "GET bytes=\(range)" }.count
                Progress.step("paced: \(Self.readers) slow readers of a \(tail >> 20) MiB range (\(relayed) relayed) raised peak RSS by \(growth >> 20) MiB (from \(before >> 20) MiB)")
                #expect(relayed >= Self.readers / 2, "only \(relayed) of \(Self.readers) ranges were relayed: \(proxy.requests(for: path))")
                #expect(growth < Self.bound, "peak RSS grew by \(growth >> 20) MiB with \(Self.readers) slow readers of relayed \(tail >> 20) MiB ranges")
            }
        }
    }

    /// Runs `count` clients at once; their results in any order.
    static func curls(_ count: Int, _ client: @escaping @Sendable (Int) async throws -> (CommandResult, URL)) async throws -> [(CommandResult, URL)] {
        try await withThrowingTaskGroup(of: (CommandResult, URL).self) { group in
            for index in 0..<count { group.addTask { try await client(index) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }
}
