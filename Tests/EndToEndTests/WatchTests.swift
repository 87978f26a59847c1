import Foundation
import OCI
import Testing

/// The watch list (`watch:` in the configuration) against a real docker-registry, and short
/// names in `export`, `pin` and `unpin` resolved as `seed` resolves them.
@Suite("Watch list and short names", .serialized)
struct WatchTests {
    @Test("a watched tag is fetched at start and again when it moves upstream, with no client asking")
    func watchedTagFollowsTheUpstream() async throws {
        try await PullThroughScope.run("watch") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: 91), to: upstream.host, "lab/app")
            let first = try PullThroughHTTP.upstreamImage(port: upstream.port, "lab/app", tag: "v1")
            let config = scope.unique("watch").appendingPathExtension("yaml")
            try """
            watch:
              interval: 1s
              images:
                - {ref: lab/app:v1, platforms: all}
            """.write(to: config, atomically: true, encoding: .utf8)
            let data = scope.unique("watch-data")
            let mark = upstream.requests.count
            let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(upstream.host)", "--config", config.path])

            // The status page names the digest once the whole image is stored.
            func watchRow() throws -> String {
                let page = String(decoding: try RawHTTP.get(port: mirror.port, path: "/").body, as: UTF8.self)
                guard let section = page.range(of: "<section id=\"watch\">") else { return "" }
                return String(page[section.lowerBound...].prefix { $0 != "\n" })
            }
            func shows(_ digest: Digest) throws -> Bool { try watchRow().contains(String(digest.description.prefix(19))) }
            try await waitUntil("the watch list to fetch v1", timeout: .seconds(15)) { try shows(first.rootDigest) }
            let fetched = PullThroughLog.blobGets(await upstream.requests(since: mark))
            for blob in first.blobs {
                #expect(fetched["/v2/lab/app/blobs/\(blob)"] != nil, "the watch did not GET \(blob)")
                #expect(CacheFiles.exists(blob, in: data), "\(blob) is not in the store")
            }
            #expect(try watchRow().contains("\(upstream.host)/lab/app:v1"))

            // Runs that find everything in place ask the upstream a HEAD and count no client lookups.
            func number(before suffix: String) throws -> Int {
                let page = String(decoding: try RawHTTP.get(port: mirror.port, path: "/").body, as: UTF8.self)
                guard let end = page.range(of: suffix) else { throw E2EError("no \"\(suffix)\" on the status page") }
                return Int(String(page[..<end.lowerBound].reversed().prefix { $0.isNumber }.reversed())) ?? -1
            }
            let lookups = try number(before: " manifest and blob lookups since start")
            let runs = try number(before: " runs</p>")
            try await waitUntil("two more watch runs", timeout: .seconds(10)) { try number(before: " runs</p>") >= runs + 2 }
            #expect(try number(before: " manifest and blob lookups since start") == lookups)

            // The tag moves upstream: the new digest and its blobs arrive by themselves.
            try await scope.push(try scope.singleImage(seed: 92), to: upstream.host, "lab/app")
            let second = try PullThroughHTTP.upstreamImage(port: upstream.port, "lab/app", tag: "v1")
            try #require(second.rootDigest != first.rootDigest)
            try await waitUntil("the watch list to fetch the moved v1", timeout: .seconds(15)) { try shows(second.rootDigest) }
            for blob in second.blobs { #expect(CacheFiles.exists(blob, in: data), "\(blob) of the new digest is not in the store") }
            let row = try watchRow()
            #expect(row.contains("updated") && row.contains("fetched"), "\(row)")
            let ls = try await MirrorCLI.list(dataDirectory: data)
            #expect(ls.stdout.contains("\(upstream.host)/lab/app:v1") && ls.stdout.contains(second.rootDigest.description), "\(ls.summary)")
            // Not pinned: a watch that pinned every digest would fill the disk.
            let pins = try await MirrorCLI.run(["pin", "--data-dir", data.path])
            #expect(!pins.stdout.contains("sha256:"), "\(pins.summary)")
        }
    }

    @Test("a shutdown during a refresh stops the server at once, though the watch is waiting on a stalled download")
    func shutdownCancelsARefresh() async throws {
        try await PullThroughScope.run("watch-shutdown") { scope in
            let image = FaultImage.make(layerSizes: [200_000])
            let upstream = try FaultUpstream.start(image: image)
            do {
                let layer = image.layers[0].digest
                upstream.setFault(.stall(afterBytes: 1000), for: layer)
                let config = scope.unique("watch").appendingPathExtension("yaml")
                try "watch: {images: [\(FaultImage.repository):\(FaultImage.tag)]}\n".write(to: config, atomically: true, encoding: .utf8)
                let mirror = try await scope.mirrorOn(scope.unique("data"), ["--upstream", "http://\(upstream.host)", "--config", config.path])
                try await waitUntil("the watch's download of the layer to stall") {
                    upstream.count("GET", FaultEnvironment.blobPath(layer)) >= 1
                }
                let clock = ContinuousClock()
                let started = clock.now
                await mirror.stop()
                let took = clock.now - started
                // `stop()` kills it 10 s after the SIGTERM; a drain that waited for the download would show.
                #expect(took < .seconds(4), "the server took \(took) to stop after SIGTERM")
            } catch {
                await upstream.stop()
                throw error
            }
            await upstream.stop()
        }
    }

    @Test("export, pin and unpin resolve short names with --upstream as seed does; a miss lists the other upstreams' copy")
    func shortNamesResolveLikeSeed() async throws {
        try await PullThroughScope.run("short-names") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: 93), to: upstream.host, "lab/app", tag: "1")
            let data = scope.unique("short-data")
            let local = ["--upstream", "http://\(upstream.host)", "--data-dir", data.path]
            let full = "\(upstream.host)/lab/app:1"

            let seed = try await MirrorCLI.run(["seed"] + local + ["lab/app:1"])
            try #require(seed.succeeded, "\(seed.summary)")
            #expect(seed.stdout.contains("seeded \(full) "), "\(seed.stdout)")

            let bundle = scope.unique("bundle").appendingPathExtension("tar")
            let export = try await MirrorCLI.run(["export"] + local + ["lab/app:1", "-o", bundle.path])
            #expect(export.succeeded && export.stdout.contains("exported \(full) "), "\(export.summary)")
            let unpin = try await MirrorCLI.run(["unpin"] + local + ["lab/app:1"])
            #expect(unpin.succeeded && unpin.stdout.contains("unpinned \(full) "), "\(unpin.summary)")
            let pin = try await MirrorCLI.run(["pin"] + local + ["lab/app:1"])
            #expect(pin.succeeded && pin.stdout.contains("pinned \(full) "), "\(pin.summary)")

            // Another upstream (or none: Docker Hub) means another image; the error says where it is.
            let other = scope.unique("other").appendingPathExtension("tar")
            for arguments in [["export", "-o", other.path], ["export", "--upstream", "http://127.0.0.1:1", "-o", other.path], ["pin"]] {
                let miss = try await MirrorCLI.run(arguments + ["--data-dir", data.path, "lab/app:1"])
                #expect(miss.status == 1, "\(arguments): \(miss.summary)")
                #expect(miss.stderr.contains("lab/app:1 is not in the cache") && miss.stderr.contains(full), "\(arguments): \(miss.stderr)")
                #expect(!miss.stderr.contains("registry-mirror seed"), "\(arguments): the image is cached; seeding is not the fix: \(miss.stderr)")
            }
            #expect(!FileManager.default.fileExists(atPath: other.path))
        }
    }
}
