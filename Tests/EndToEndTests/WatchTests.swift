import Foundation
import OCI
import Testing

/// The watch list (`watch:` in the configuration) against a real docker-registry, and short
/// names in `export`, `pin` and `unpin` resolved as `seed` resolves them.
@Suite("Watch list and short names", .serialized)
struct WatchTests {
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
