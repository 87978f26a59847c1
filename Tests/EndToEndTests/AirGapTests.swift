import Foundation
import OCI
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The air-gapped flow of docs/operations.md, end to end with real tools: seed from a real
/// docker-registry, export to a tar, stop the upstream, import into a fresh data directory,
/// serve it offline, pull with skopeo and podman.
@Suite("Air-gapped flow", .serialized)
struct AirGapTests {
    @Test("seed --platform linux/arm64 → export → upstream gone → import → serve --offline: arm64 pulls, amd64 is a clear 404, digests identical")
    func seedExportImportServe() async throws {
        try await PullThroughScope.run("air-gap") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.multiImage(seed: 501), to: upstream.host, "site/multi")
            try await scope.push(try scope.singleImage(seed: 502), to: upstream.host, "site/single")
            let multi = try PullThroughHTTP.upstreamImage(port: upstream.port, "site/multi", tag: "v1")
            let single = try PullThroughHTTP.upstreamImage(port: upstream.port, "site/single", tag: "v1")
            let index = try ManifestDocument(bytes: multi.rootBytes)
            let arm64 = try #require(index.manifests.first { $0.platform?.architecture == "arm64" })
            let amd64 = try #require(index.manifests.first { $0.platform?.architecture == "amd64" })
            let refs = ["\(upstream.host)/site/multi:v1", "\(upstream.host)/site/single:v1"]

            // 1. Seed on the connected side.
            let seedData = scope.unique("connected")
            let seed = try await MirrorCLI.run(["seed", "--upstream", "http://\(upstream.host)", "--data-dir", seedData.path,
                                                "--platform", "linux/arm64"] + refs)
            try #require(seed.succeeded, "\(seed.summary)")

            // 2. Export both to one tar.
            let bundle = scope.unique("bundle").appendingPathExtension("tar")
            let export = try await MirrorCLI.run(["export", "--data-dir", seedData.path, "--output", bundle.path] + refs)
            try #require(export.succeeded, "\(export.summary)")

            // 3. The upstream goes away.
            await upstream.stop()

            // 4. Import into a fresh data directory.
            let siteData = scope.unique("air-gapped")
            let imported = try await MirrorCLI.run(["import", bundle.path, "--data-dir", siteData.path])
            try #require(imported.succeeded, "\(imported.summary)")
            #expect(imported.stdout.contains(multi.rootDigest.description) && imported.stdout.contains(single.rootDigest.description), "\(imported.stdout)")

            // 5. Serve offline. Naming the upstream only routes /v2/site/... to its cache entries.
            let mirror = try await scope.mirrorOn(siteData, ["--offline", "--upstream", "http://\(upstream.host)"])
            let served = try PullThroughHTTP.manifest(port: mirror.port, "/v2/site/multi/manifests/v1")
            #expect(served.status == 200 && served.body == multi.rootBytes, "the index is not the upstream's bytes: \(served)")
            let missing = try PullThroughHTTP.manifest(port: mirror.port, "/v2/site/multi/manifests/\(amd64.digest)")
            #expect(missing.status == 404 && String(decoding: missing.body, as: UTF8.self).contains("MANIFEST_UNKNOWN"), "\(missing)")

            // skopeo: arm64 copies with the upstream's digests; amd64 fails clearly.
            let armCopy = scope.unique("skopeo-arm64")
            let skopeoArm = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--override-arch", "arm64",
                                                            "docker://\(mirror.host)/site/multi:v1", "oci:\(armCopy.path):v1"])
            try #require(skopeoArm.succeeded, "\(skopeoArm.summary)\n\(mirror.stderr.suffix(3000))")
            #expect(try PullThroughLayout.root(armCopy) == arm64.digest)
            let armManifest = try ManifestDocument(bytes: try #require(multi.manifests[arm64.digest]))
            let armLayers = armManifest.layers
            for layer in armLayers {
                #expect(try PullThroughLayout.blob(armCopy, layer.digest).sha256 == layer.digest)
            }
            let skopeoAmd = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--override-arch", "amd64",
                                                            "docker://\(mirror.host)/site/multi:v1", "oci:\(scope.unique("skopeo-amd64").path):v1"])
            #expect(!skopeoAmd.succeeded)
            #expect(skopeoAmd.stderr.lowercased().contains("manifest unknown"), "skopeo's error is not clear: \(skopeoAmd.stderr)")
            let inspect = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(mirror.host)/site/single:v1"])
            #expect(inspect.succeeded && Array(inspect.stdoutData).sha256 == single.rootDigest, "\(inspect.summary)")

            // podman: arm64 and the single image pull, with the upstream's config digests; amd64 does not.
            let podman = try PodmanClient(scope.work)
            let pullArm = try await podman.run(["pull", "--tls-verify=false", "--platform", "linux/arm64", "\(mirror.host)/site/multi:v1"])
            try #require(pullArm.succeeded, "\(pullArm.summary)")
            let armConfig = try #require(armManifest.config).digest
            let armID = try await podman.run(["image", "inspect", "--format", "{{.Id}}", "\(mirror.host)/site/multi:v1"])
            #expect(armID.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == armConfig.hex, "\(armID.summary)")
            let pullAmd = try await podman.run(["pull", "--tls-verify=false", "--platform", "linux/amd64", "\(mirror.host)/site/multi:v1"])
            #expect(!pullAmd.succeeded, "podman pulled an instance that was never seeded")
            let pullSingle = try await podman.run(["pull", "--tls-verify=false", "\(mirror.host)/site/single:v1"])
            #expect(pullSingle.succeeded, "\(pullSingle.summary)")
            let singleID = try await podman.run(["image", "inspect", "--format", "{{.Digest}}", "\(mirror.host)/site/single:v1"])
            #expect(singleID.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == single.rootDigest.description, "\(singleID.summary)")
        }
    }
}

/// podman with its own storage under a test directory (vfs, no systemd, no events). The
/// run root lives in a short /tmp folder: podman refuses run roots over 50 characters.
final class PodmanClient: Sendable {
    let common: [String]
    let environment: [String: String]
    let runRoot: String

    init(_ work: TemporaryDirectory) throws {
        let id = UUID().uuidString.prefix(8)
        var template = Array("/tmp/podman-rr.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw E2EError("mkdtemp failed: errno \(errno)") }
        runRoot = String(cString: made)
        common = [
            "--root", try work.subdirectory("podman-root-\(id)").path,
            "--runroot", runRoot,
            "--tmpdir", try work.subdirectory("podman-libpod-tmp-\(id)").path,
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]
        environment = ["TMPDIR": try work.subdirectory("podman-tmp-\(id)").path]
    }

    deinit { try? FileManager.default.removeItem(atPath: runRoot) }

    func run(_ arguments: [String]) async throws -> CommandResult {
        try await Command.run("podman", common + arguments, environment: environment)
    }
}
