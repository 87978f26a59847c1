import Foundation
import OCI
import RegistryMirror
import Testing

/// `watch:` in the configuration: parsed and checked when loaded, resolved at start.
@Suite struct WatchConfigurationTests {
    func load(_ yaml: String, environment: [String: String] = [:]) throws -> MirrorConfiguration {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/watch.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        return try MirrorConfiguration.load(file: file, environment: environment)
    }

    @Test func entriesWithPlatformsPlainReferencesAndTheInterval() throws {
        let config = try load("""
            watch:
              interval: 10m
              images:
                - {ref: library/alpine:3.20, platforms: [linux/amd64, linux/arm64/v8]}
                - {ref: ghcr.io/org/app:stable, platforms: all}
                - busybox
            upstreams:
              - {url: https://registry-1.docker.io}
              - {url: https://ghcr.io}
            """)
        #expect(config.watchInterval == .seconds(600))
        #expect(config.watchImages == [
            WatchEntry(reference: "library/alpine:3.20", platforms: .specific([try Platform(parsing: "linux/amd64"), try Platform(parsing: "linux/arm64/v8")])),
            WatchEntry(reference: "ghcr.io/org/app:stable", platforms: .all),
            WatchEntry(reference: "busybox", platforms: .system),
        ])
        let images = try config.serveSettings.resolvedWatchImages()
        #expect(images.map(\.name) == ["docker.io/library/alpine:3.20", "ghcr.io/org/app:stable", "docker.io/library/busybox:latest"])
        #expect(try load("watch: {interval: 5s}", environment: ["REGISTRY_MIRROR_WATCH_INTERVAL": "2h"]).watchInterval == .seconds(7200))
    }

    @Test func everyBadEntryIsNamedByItsKeyPath() throws {
        do {
            _ = try load("""
                offline: true
                watch:
                  interval: often
                  images:
                    - {ref: "Bad Name:1"}
                    - {ref: library/alpine:3.20, platforms: [linux]}
                    - {platforms: all}
                    - {ref: alpine, colour: blue}
                """)
            Issue.record("a bad watch list was accepted")
        } catch let error as ConfigurationError {
            for key in ["watch.interval:", "watch.images[0].ref:", "watch.images[1].platforms[0]:", "watch.images[2].ref: required",
                        "watch.images[3].colour: unknown key", "watch.images: an offline mirror"] {
                #expect(error.problems.contains { $0.hasPrefix(key) }, "\(key) is not reported: \(error.problems)")
            }
        }
    }

    /// Hosts are checked against the upstreams the server starts with, every bad entry at once;
    /// `config check` checks them against the file's own.
    @Test func entriesNamingNoUpstreamFailTheStart() throws {
        let yaml = """
            watch:
              images: [quay.io/org/a:1, library/alpine:3.20, ghcr.io/org/b:2]
            """
        let config = try load(yaml)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try yaml.write(toFile: dir.path + "/watch.yaml", atomically: true, encoding: .utf8)
        let check = try Tools.mirror(["config", "check", dir.path + "/watch.yaml"])
        #expect(check.status == 2 && check.stderr.contains("watch.images[0].ref:") && check.stderr.contains("watch.images[2].ref:"), "\(check)")
        do {
            _ = try config.serveSettings.resolvedWatchImages()
            Issue.record("entries for unconfigured upstreams were accepted")
        } catch {
            #expect(error.problems.count == 2)
            #expect(error.problems.first?.hasPrefix("watch.images[0].ref:") == true && error.problems.last?.hasPrefix("watch.images[2].ref:") == true,
                    "\(error.problems)")
        }
    }
}
