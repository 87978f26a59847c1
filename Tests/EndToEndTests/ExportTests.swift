import Foundation
import OCI
import Testing

/// `registry-mirror export` read back by skopeo and by `import` on a fresh mirror, and `import`
/// of docker-save archives pulled by podman, all against the suite's real upstream.
@Suite("registry-mirror export, and import of docker-save archives", .serialized, .mirrorEnvironment)
struct ExportEndToEndTests {
    func fixture() throws -> MirrorFixture {
        try #require(MirrorFixture.current, "the suite's MirrorFixture was not set up")
    }

    /// A cache keyed as a mirror of the fixture's upstream keys it (`<upstream host>/test/…`),
    /// imported from the layout and archive skopeo exported from that upstream.
    func makeCache(_ env: MirrorFixture) async throws -> (data: URL, multi: String, single: String) {
        let data = try env.work.subdirectory("export-cache-\(UUID().uuidString.prefix(6))", create: false)
        let multi = "\(env.upstream.host)/\(MirrorFixture.multiRepository)"
        let single = "\(env.upstream.host)/\(MirrorFixture.singleRepository)"
        for (bundle, name) in [(env.multiLayout.path, multi), (env.singleArchive.path, single)] {
            let result = try await MirrorCLI.importBundle(bundle, as: name, dataDirectory: data)
            try #require(result.succeeded, "\(result.summary)")
        }
        return (data, "\(multi):\(MirrorFixture.tag)", "\(single):\(MirrorFixture.tag)")
    }

    func export(_ references: [String], to output: URL, data: URL, _ extra: [String] = []) async throws -> CommandResult {
        try await MirrorCLI.run(["export"] + references + ["--output", output.path, "--data-dir", data.path] + extra)
    }

    func upstreamDigest(_ env: MirrorFixture, _ repository: String) async throws -> Digest {
        try await env.rawManifest(host: env.upstream.host, repository, ":\(MirrorFixture.tag)").sha256
    }

    @Test("skopeo reads the exported tar and directory by full reference, with upstream's digests and blobs")
    func skopeoReadsExports() async throws {
        let env = try fixture()
        let cache = try await makeCache(env)
        let tar = env.work.url.appendingPathComponent("exported.tar")
        let directory = env.work.url.appendingPathComponent("exported-dir")
        let upstreamBlobs = Set(Files.regularFiles(under: env.multiLayout.appendingPathComponent("blobs")))
            .union(Files.regularFiles(under: env.singleLayout.appendingPathComponent("blobs")))
        for output in [tar, directory] {
            let result = try await export([cache.multi, cache.single], to: output, data: cache.data)
            try #require(result.succeeded, "\(result.summary)")
            #expect(result.stdout.contains("wrote 2 images, \(upstreamBlobs.count) blobs"), "\(result.stdout)")
            #expect(result.stdout.contains("exported \(cache.multi) ") && result.stdout.contains("(3/3 platforms)"), "\(result.stdout)")
        }
        #expect(Set(Files.regularFiles(under: directory.appendingPathComponent("blobs"))) == upstreamBlobs)

        for (reference, repository) in [(cache.multi, MirrorFixture.multiRepository), (cache.single, MirrorFixture.singleRepository)] {
            let expected = try await upstreamDigest(env, repository)
            for source in ["oci-archive:\(tar.path):\(reference)", "oci:\(directory.path):\(reference)"] {
                let raw = try await Command.check("skopeo", ["inspect", "--raw", source])
                #expect(raw.stdoutData.sha256 == expected, "\(source)")
                let copy = try env.work.subdirectory("copy-\(UUID().uuidString.prefix(8))", create: false)
                try await Command.check("skopeo", ["copy", "--all", source, "dir:\(copy.path)"])
                #expect(try Data(contentsOf: copy.appendingPathComponent("manifest.json")).sha256 == expected, "\(source) → dir:")
            }
        }

        // With one image in the archive, skopeo needs no reference.
        let one = env.work.url.appendingPathComponent("one.tar")
        let result = try await export([cache.single], to: one, data: cache.data)
        try #require(result.succeeded, "\(result.summary)")
        let copy = try env.work.subdirectory("copy-one", create: false)
        try await Command.check("skopeo", ["copy", "oci-archive:\(one.path)", "dir:\(copy.path)"])
        #expect(try Data(contentsOf: copy.appendingPathComponent("manifest.json")).sha256 == (try await upstreamDigest(env, MirrorFixture.singleRepository)))
    }

    @Test("--platform writes the index whole and one instance; a platform the index lacks fails and writes nothing")
    func platformSelection() async throws {
        let env = try fixture()
        let cache = try await makeCache(env)
        let arm64 = env.work.url.appendingPathComponent("arm64.tar")
        let result = try await export([cache.multi], to: arm64, data: cache.data, ["--platform", "linux/arm64"])
        try #require(result.succeeded, "\(result.summary)")
        #expect(result.stdout.contains("(1/3 platforms)"), "\(result.stdout)")
        let source = "oci-archive:\(arm64.path):\(cache.multi)"
        let raw = try await Command.check("skopeo", ["inspect", "--raw", source])
        #expect(raw.stdoutData.sha256 == (try await upstreamDigest(env, MirrorFixture.multiRepository)), "the index is byte-exact")
        let copy = try env.work.subdirectory("copy-arm64", create: false)
        try await Command.check("skopeo", ["--override-os", "linux", "--override-arch", "arm64", "copy", source, "dir:\(copy.path)"])
        let amd64 = try await Command.run("skopeo", ["--override-os", "linux", "--override-arch", "amd64", "copy", source, "dir:\(copy.path)-amd64"])
        #expect(!amd64.succeeded, "amd64 was not exported, yet skopeo copied it: \(amd64.summary)")
        let all = try await Command.run("skopeo", ["copy", "--all", source, "dir:\(copy.path)-all"])
        #expect(!all.succeeded, "skopeo copy --all of a partial bundle succeeded: \(all.summary)")

        let s390x = env.work.url.appendingPathComponent("s390x.tar")
        let refused = try await export([cache.multi], to: s390x, data: cache.data, ["--platform", "linux/s390x"])
        #expect(refused.status == 1, "\(refused.summary)")
        #expect(refused.stderr.contains("error:") && refused.stderr.contains("linux/s390x"), "\(refused.summary)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: env.work.path).filter { $0.hasPrefix("s390x.tar") }
        #expect(leftovers.isEmpty, "a failed export left \(leftovers)")
    }

    @Test("export, import into a fresh data directory, serve offline: skopeo sees upstream's digests and blobs")
    func roundTripThroughAFreshMirror() async throws {
        let env = try fixture()
        let cache = try await makeCache(env)
        let tar = env.work.url.appendingPathComponent("roundtrip.tar")
        let exported = try await export([cache.multi, cache.single], to: tar, data: cache.data)
        try #require(exported.succeeded, "\(exported.summary)")

        let fresh = try env.work.subdirectory("roundtrip-data", create: false)
        let imported = try await MirrorCLI.importBundle(tar.path, as: nil, dataDirectory: fresh)
        try #require(imported.succeeded, "\(imported.summary)")
        #expect(imported.stdout.contains("imported \(cache.multi) "), "\(imported.stdout)")
        #expect(imported.stdout.contains("imported \(cache.single) "), "\(imported.stdout)")
        let before = try await MirrorCLI.list(dataDirectory: cache.data)
        let after = try await MirrorCLI.list(dataDirectory: fresh)
        #expect(after.stdout == before.stdout, "tags, digests and sizes differ after the round trip")

        // The fresh mirror names the fixture's upstream as its default, so /v2/test/… is that upstream's; it never calls it.
        let mirror = try await MirrorProcess.start(
            dataDirectory: fresh, logDirectory: try env.work.subdirectory("roundtrip-logs"),
            extraArguments: ["--offline", "--upstream", "http://\(env.upstream.host)"])
        do {
            for repository in [MirrorFixture.multiRepository, MirrorFixture.singleRepository] {
                let upstream = try await env.rawManifest(host: env.upstream.host, repository, ":v1")
                let served = try await env.rawManifest(host: mirror.host, repository, ":v1")
                #expect(served == upstream, "\(repository): manifest bytes differ")
                for child in try ManifestDocument(bytes: upstream).manifests {
                    let fromMirror = try await env.rawManifest(host: mirror.host, repository, "@\(child.digest)")
                    #expect(fromMirror.sha256 == child.digest, "\(repository)@\(child.digest)")
                }
            }
            let back = try env.work.subdirectory("roundtrip-back", create: false)
            try await Command.check("skopeo", [
                "copy", "--all", "--src-tls-verify=false", "docker://\(mirror.host)/\(MirrorFixture.multiRepository):v1", "oci:\(back.path):v1",
            ])
            #expect(Files.regularFiles(under: back.appendingPathComponent("blobs")) == Files.regularFiles(under: env.multiLayout.appendingPathComponent("blobs")))
        } catch {
            await mirror.stop()
            throw error
        }
        await mirror.stop()
    }

    @Test("docker-save archives (synthetic with a gzip layer and a symlinked repeat, and one skopeo wrote) import, serve offline, and podman pulls them")
    func dockerArchivesPullWithPodman() async throws {
        let env = try fixture()
        let saved = try await DockerSaveArchive.write(in: env.work, name: "saved", repoTag: "test/saved:v1", seed: env.seed)
        let fromSkopeo = env.work.url.appendingPathComponent("skopeo-saved.tar")
        try await Command.check("skopeo", [
            "copy", "--src-tls-verify=false", "docker://\(env.upstream.host)/\(MirrorFixture.singleRepository):v1",
            "docker-archive:\(fromSkopeo.path):test/from-skopeo:v1",
        ])

        let data = try env.work.subdirectory("docker-archive-data", create: false)
        for (archive, name) in [(saved.tar, "docker.io/test/saved:v1"), (fromSkopeo, "docker.io/test/from-skopeo:v1")] {
            let result = try await MirrorCLI.importBundle(archive.path, as: nil, dataDirectory: data)
            try #require(result.succeeded, "\(result.summary)")
            #expect(result.stdout.contains("imported \(name) "), "\(result.stdout)")
        }
        let singleManifest = try ManifestDocument(bytes: try await env.rawManifest(host: env.upstream.host, MirrorFixture.singleRepository, ":v1"))
        let singleConfig = try #require(singleManifest.config).digest

        let mirror = try await MirrorProcess.start(dataDirectory: data, logDirectory: try env.work.subdirectory("docker-archive-logs"))
        do {
            let podman = try PodmanClient(env.work)
            for (repository, config) in [("test/saved", saved.config), ("test/from-skopeo", singleConfig)] {
                let reference = "\(mirror.host)/\(repository):v1"
                // podman 4.3 (containers/image 5.23) does not compare layers with the config's diff_ids
                // (tried: a mismatched archive pulled fine), so the importer's own check is what guards that.
                let pull = try await podman.run(["pull", "--tls-verify=false", reference])
                try #require(pull.succeeded, "\(pull.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(2000))")
                let inspect = try await podman.run(["image", "inspect", "--format", "{{.Id}}", reference])
                try #require(inspect.succeeded, "\(inspect.summary)")
                #expect(inspect.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == config.hex, "\(repository): image ID is not the config digest")
            }
        } catch {
            await mirror.stop()
            throw error
        }
        await mirror.stop()
    }

    @Test("a docker-save archive whose diff_ids do not match its layers is refused and leaves nothing")
    func dockerArchiveWithWrongDiffIDs() async throws {
        let env = try fixture()
        let saved = try await DockerSaveArchive.write(in: env.work, name: "bad-saved", repoTag: "test/bad:v1", seed: env.seed, wrongDiffID: true)
        let data = env.work.url.appendingPathComponent("bad-archive-data")
        let result = try await MirrorCLI.importBundle(saved.tar.path, as: nil, dataDirectory: data)
        #expect(result.status == 1, "\(result.summary)")
        #expect(result.stderr.contains("error:") && result.stderr.contains("diff_ids"), "\(result.summary)")
        #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).isEmpty)
        let ls = try await MirrorCLI.list(dataDirectory: data)
        #expect(!ls.stdout.contains("test/bad"), "\(ls.stdout)")
    }
}

/// A `docker save` archive as docker before 25 wrote it: `<id>/layer.tar` per layer, the
/// fourth a symlink to the first (docker's way with a repeated layer), `<config hex>.json`,
/// `manifest.json` and `repositories`; tarred by tar(1). The second layer is gzip-compressed,
/// which docker never does but other writers may.
struct DockerSaveArchive {
    let tar: URL
    let config: Digest

    static func write(in work: TemporaryDirectory, name: String, repoTag: String, seed: UInt64, wrongDiffID: Bool = false) async throws -> DockerSaveArchive {
        let root = try work.subdirectory(name)
        var rng = SeededGenerator(seed: seed &+ 7)
        let layers = [
            Ustar.archive([("\(name)-a.bin", rng.bytes(120_000))]),
            Ustar.archive([("\(name)-b.bin", rng.bytes(200_000))]),
            Ustar.archive([("\(name)-c.bin", rng.bytes(30_000))]),
        ]
        let ids = (0..<4).map { "\(name)-\($0)".utf8.map { $0 }.sha256.hex }
        for (i, layer) in layers.enumerated() {
            let folder = try work.subdirectory("\(name)/\(ids[i])")
            try Files.write(layer, to: folder.appendingPathComponent("layer.tar"))
            try Files.write(Array("1.0".utf8), to: folder.appendingPathComponent("VERSION"))
        }
        try await Command.check("gzip", ["-n", root.appendingPathComponent("\(ids[1])/layer.tar").path])
        try FileManager.default.moveItem(at: root.appendingPathComponent("\(ids[1])/layer.tar.gz"), to: root.appendingPathComponent("\(ids[1])/layer.tar"))
        let repeated = try work.subdirectory("\(name)/\(ids[3])")
        try FileManager.default.createSymbolicLink(atPath: repeated.appendingPathComponent("layer.tar").path, withDestinationPath: "../\(ids[0])/layer.tar")

        var diffIDs = [layers[0].sha256, layers[1].sha256, layers[2].sha256, layers[0].sha256]
        if wrongDiffID { diffIDs[1] = try Files.read(root.appendingPathComponent("\(ids[1])/layer.tar")).sha256 }  // the compressed digest
        let configText = #"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/true"]},"rootfs":{"type":"layers","diff_ids":[\#(diffIDs.map { "\"\($0)\"" }.joined(separator: ","))]}}"#
        let config = Array(configText.utf8).sha256
        try Files.write(Array(configText.utf8), to: root.appendingPathComponent("\(config.hex).json"))
        let manifest = #"[{"Config":"\#(config.hex).json","RepoTags":["\#(repoTag)"],"Layers":[\#(ids.map { "\"\($0)/layer.tar\"" }.joined(separator: ","))]}]"#
        try Files.write(Array(manifest.utf8), to: root.appendingPathComponent("manifest.json"))
        let (repository, tag) = (repoTag.split(separator: ":")[0], repoTag.split(separator: ":")[1])
        try Files.write(Array(#"{"\#(repository)":{"\#(tag)":"\#(ids[3])"}}"#.utf8), to: root.appendingPathComponent("repositories"))

        let tar = work.url.appendingPathComponent("\(name).tar")
        try await Command.check("tar", ["-C", root.path, "-cf", tar.path, "."])
        return DockerSaveArchive(tar: tar, config: config)
    }
}
