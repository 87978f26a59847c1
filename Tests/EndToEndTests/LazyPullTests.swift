import Foundation
import OCI
import Testing

/// Lazy pulling (issue 13): a Range on a blob the mirror has not cached is answered from the
/// upstream at once, while the one whole-blob download fills the cache beside it. The
/// upstream is a real docker-registry behind a proxy that paces it like a slow link.
@Suite("Lazy pulling", .serialized)
struct LazyPullTests {
    /// 128 MiB at 32 MiB/s: the whole blob takes 4 s, its last MiB about 30 ms. (The
    /// benchmark uses 256 MiB; half keeps this test's upload and fill short.)
    static let size = 128 << 20
    static let rate = 32 << 20
    static let tail = 1 << 20

    @Test("the last MiB of a cold blob arrives in about the time a direct ranged request takes; the blob is still fetched whole once, verified, and serves later ranges")
    func coldTail() async throws {
        try await PullThroughScope.run("lazy tail") { scope in
            let registry = try await scope.registry()
            let bytes = try Self.randomBytes(Self.size)
            let digest = try PullThroughHTTP.uploadBlob(port: registry.port, "lazy/layer", bytes)
            try await Self.withProxy(to: registry, bytesPerSecond: Self.rate, scope: scope) { proxy in
                let data = scope.unique("mirror").appendingPathComponent("data")
                let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(proxy.host)"])
                let path = "/v2/lazy/layer/blobs/\(digest)"
                let range = [("Range", "bytes=-\(Self.tail)")]
                let contentRange = "bytes \(Self.size - Self.tail)-\(Self.size - 1)/\(Self.size)"
                let expected = Array(bytes.suffix(Self.tail))

                let (direct, directTime) = try Self.timed { try RawHTTP.get(port: proxy.port, path: path, headers: range) }
                #expect(direct.status == 206 && direct.body == expected, "direct ranged GET: \(direct)")

                let (cold, coldTime) = try Self.timed { try RawHTTP.get(port: mirror.port, path: path, headers: range) }
                let whole = Duration.seconds(Double(Self.size) / Double(Self.rate))
                Progress.step("last MiB of a cold \(Self.size >> 20) MiB blob at \(Self.rate >> 20) MiB/s: direct \(directTime), through the mirror \(coldTime); the whole blob takes \(whole)")
                #expect(cold.status == 206 && cold.header("Content-Range") == contentRange && cold.header("X-Cache") == "MISS", "cold tail: \(cold)")
                #expect(cold.body == expected, "the cold tail's bytes are wrong (\(cold.body.count) bytes)")
                #expect(coldTime < whole / 4, "the cold tail took \(coldTime), direct \(directTime): it waited for the download\n\(mirror.stderr.suffix(3000))")

                // The one download of the whole blob went on meanwhile; a plain GET joins it.
                let full = try RawHTTP.get(port: mirror.port, path: path)
                #expect(full.status == 200 && full.body.count == Self.size && full.body.sha256 == digest, "whole blob: HTTP \(full.status), \(full.body.count) bytes")
                let stored = data.appendingPathComponent("blobs/\(digest.shardedPath)")
                try await waitUntil("the blob to be published in the cache") { FileManager.default.fileExists(atPath: stored.path) }

                let later = try RawHTTP.get(port: mirror.port, path: path, headers: range)
                #expect(later.status == 206 && later.header("Content-Range") == contentRange && later.header("X-Cache") == "HIT", "cached tail: \(later)")
                #expect(later.body == expected, "the cached tail's bytes are wrong")

                // Upstream: the direct range, the mirror's range, and one whole-blob GET. The
                // ranged bytes were never stored: the cache holds the verified whole.
                #expect(proxy.requests(for: path) == ["GET -", "GET bytes=-\(Self.tail)", "GET bytes=-\(Self.tail)"], "\(proxy.requests)")
                #expect(try Files.read(stored).sha256 == digest)
            }
        }
    }

    @Test("several ranges of a cold blob are forwarded (206 multipart), of a cached one answered whole; an upstream without Range support leaves the range to the download")
    func multipleRangesAndNoRangeSupport() async throws {
        try await PullThroughScope.run("lazy ranges") { scope in
            let registry = try await scope.registry()
            let bytes = try Self.randomBytes(4 << 20)
            let digest = try PullThroughHTTP.uploadBlob(port: registry.port, "lazy/multi", bytes)
            let path = "/v2/lazy/multi/blobs/\(digest)"
            let other = try Self.randomBytes(64 << 10)
            let otherPath = "/v2/lazy/multi/blobs/\(try PullThroughHTTP.uploadBlob(port: registry.port, "lazy/multi", other))"

            try await Self.withProxy(to: registry, bytesPerSecond: nil, scope: scope) { proxy in
                let data = scope.unique("mirror").appendingPathComponent("data")
                let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(proxy.host)"])
                let ranges = [("Range", "bytes=0-9,100-109")]
                let cold = try RawHTTP.get(port: mirror.port, path: path, headers: ranges)
                #expect(cold.status == 206 && cold.header("Content-Type")?.hasPrefix("multipart/byteranges") == true, "cold multi-range: \(cold)")
                for (first, last) in [(0, 9), (100, 109)] {
                    #expect(cold.body.contains(Array("Content-Range: bytes \(first)-\(last)/\(bytes.count)".utf8)), "part \(first)-\(last) missing: \(cold)")
                    #expect(cold.body.contains(Array(bytes[first...last])), "the bytes of part \(first)-\(last) are missing")
                }
                let stored = data.appendingPathComponent("blobs/\(digest.shardedPath)")
                try await waitUntil("the blob to be published in the cache") { FileManager.default.fileExists(atPath: stored.path) }
                let cached = try RawHTTP.get(port: mirror.port, path: path, headers: ranges)
                #expect(cached.status == 200 && cached.body == bytes && cached.header("X-Cache") == "HIT", "cached multi-range: \(cached)")
                #expect(proxy.requests(for: path) == ["GET -", "GET bytes=0-9,100-109"], "\(proxy.requests)")
            }

            // The proxy drops `Range`: the registry answers 200, and the download answers the range.
            try await Self.withProxy(to: registry, bytesPerSecond: nil, stripRange: true, scope: scope) { proxy in
                let mirror = try await scope.mirror(["--upstream", "http://\(proxy.host)"])
                let tail = try RawHTTP.get(port: mirror.port, path: path, headers: [("Range", "bytes=-100")])
                #expect(tail.status == 206 && tail.header("Content-Range") == "bytes \(bytes.count - 100)-\(bytes.count - 1)/\(bytes.count)", "\(tail)")
                #expect(tail.body == Array(bytes.suffix(100)), "the tail's bytes are wrong")
                // The mirror did ask for the range; the answer without one was not relayed.
                #expect(proxy.requests(for: path) == ["GET -", "GET bytes=-100"], "\(proxy.requests)")
                // Nor is this upstream asked for ranges again: that would cost an aborted GET each.
                let second = try RawHTTP.get(port: mirror.port, path: otherPath, headers: [("Range", "bytes=-100")])
                #expect(second.status == 206 && second.body == Array(other.suffix(100)), "\(second)")
                #expect(proxy.requests(for: otherPath) == ["GET -"], "\(proxy.requests)")
            }
        }
    }

    // MARK: Support

    static func withProxy(to registry: DistributionRegistry, bytesPerSecond: Int?, stripRange: Bool = false, scope: PullThroughScope,
                          _ body: (ThrottledUpstream) async throws -> Void) async throws {
        let proxy = try await ThrottledUpstream.start(to: registry.port, bytesPerSecond: bytesPerSecond, stripRange: stripRange, in: scope.unique("throttle"))
        do {
            try await body(proxy)
        } catch {
            await proxy.stop()
            throw error
        }
        await proxy.stop()
    }

    static func randomBytes(_ count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? handle.close() }
        return [UInt8](try handle.read(upToCount: count) ?? Data())
    }

    static func timed<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
        let clock = ContinuousClock()
        let start = clock.now
        let value = try body()
        return (value, clock.now - start)
    }
}
