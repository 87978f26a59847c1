import Foundation
import OCI
import Testing

/// The mirror serving images it imported from bundles, checked against a real registry with the
/// real clients (skopeo, podman) and at the HTTP level.
@Suite("registry-mirror end to end", .serialized, .mirrorEnvironment)
struct MirrorEndToEndTests {
    static let manifestAccept = MediaType.manifestAccept.joined(separator: ", ")

    func fixture() throws -> MirrorFixture {
        try #require(MirrorFixture.current, "the suite's MirrorFixture was not set up")
    }

    /// Upstream's view of a manifest: its bytes (skopeo) and the digest it announces.
    func upstreamManifest(_ env: MirrorFixture, _ repository: String, _ reference: String) async throws -> (bytes: [UInt8], digest: Digest) {
        let bytes = try await env.rawManifest(host: env.upstream.host, repository, reference)
        let head = try RawHTTP.head(port: env.upstream.port, path: "/v2/\(repository)/manifests/\(reference.dropFirst())",
                                    headers: [("Accept", Self.manifestAccept)])
        try #require(head.status == 200, "upstream HEAD \(repository)\(reference): \(head)")
        let digest = try Digest(parsing: try #require(head.header("Docker-Content-Digest")))
        return (bytes, digest)
    }

    @Test("import loads the layout directory and the tar; ls lists both with upstream's digests")
    func importAndList() async throws {
        let env = try fixture()
        #expect(env.importMulti.succeeded, "\(env.importMulti.summary)")
        #expect(env.importSingle.succeeded, "\(env.importSingle.summary)")

        let multi = try await upstreamManifest(env, MirrorFixture.multiRepository, ":v1")
        let single = try await upstreamManifest(env, MirrorFixture.singleRepository, ":v1")
        #expect(env.importMulti.stdout.contains("test/multi:v1"), "\(env.importMulti.stdout)")
        #expect(env.importMulti.stdout.contains(multi.digest.description), "\(env.importMulti.stdout)")
        #expect(env.importMulti.stdout.contains("(3/3 platforms)"), "\(env.importMulti.stdout)")
        #expect(env.importSingle.stdout.contains("test/single:v1"), "\(env.importSingle.stdout)")
        #expect(env.importSingle.stdout.contains(single.digest.description), "\(env.importSingle.stdout)")

        let ls = try await MirrorCLI.list(dataDirectory: env.dataDirectory)
        try #require(ls.succeeded, "\(ls.summary)")
        // `repo:tag  digest  size`, the repository possibly qualified with its (default) host.
        let rows = ls.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        func listed(_ name: String, _ digest: Digest) -> Bool {
            rows.contains { $0.count >= 2 && ($0[0] == name || $0[0] == "docker.io/" + name) && $0[1] == digest.description }
        }
        #expect(listed("test/multi:v1", multi.digest), "ls: \(ls.stdout)")
        #expect(listed("test/single:v1", single.digest), "ls: \(ls.stdout)")
        #expect(rows.filter { !$0.isEmpty }.count == 2, "ls: \(ls.stdout)")
    }

    @Test("skopeo: manifests are byte-identical to upstream's, and copying back yields the same index and blobs")
    func skopeoRoundTrip() async throws {
        let env = try fixture()
        let repository = MirrorFixture.multiRepository

        // The index by tag: same bytes, and they hash to the digest upstream announces.
        let upstreamIndex = try await upstreamManifest(env, repository, ":v1")
        let mirrorIndex = try await env.rawManifest(host: env.mirror.host, repository, ":v1")
        #expect(mirrorIndex == upstreamIndex.bytes, "index bytes differ: mirror \(mirrorIndex.count) B, upstream \(upstreamIndex.bytes.count) B")
        #expect(mirrorIndex.sha256 == upstreamIndex.digest)
        let document = try ManifestDocument(bytes: upstreamIndex.bytes)
        #expect(document.isIndex)
        #expect(document.manifests.count == 3)

        // Every child manifest by digest.
        for child in document.manifests {
            let fromUpstream = try await env.rawManifest(host: env.upstream.host, repository, "@\(child.digest)")
            let fromMirror = try await env.rawManifest(host: env.mirror.host, repository, "@\(child.digest)")
            #expect(fromMirror == fromUpstream, "child \(child.digest) (\(child.platform?.description ?? "-")) differs")
            #expect(fromMirror.sha256 == child.digest)
        }

        // The single image, by tag.
        let upstreamSingle = try await upstreamManifest(env, MirrorFixture.singleRepository, ":v1")
        let mirrorSingle = try await env.rawManifest(host: env.mirror.host, MirrorFixture.singleRepository, ":v1")
        #expect(mirrorSingle == upstreamSingle.bytes)
        #expect(mirrorSingle.sha256 == upstreamSingle.digest)

        // Copy everything back out of the mirror: same root digest, same blobs, same bytes.
        for (repo, original) in [(repository, env.multiLayout), (MirrorFixture.singleRepository, env.singleLayout)] {
            let back = env.work.url.appendingPathComponent("back-\(repo.replacingOccurrences(of: "/", with: "-"))")
            try await Command.check("skopeo", [
                "copy", "--all", "--src-tls-verify=false", "docker://\(env.mirror.host)/\(repo):v1", "oci:\(back.path):v1",
            ])
            let backRoot = try MirrorFixture.layoutRootDigest(back, tag: "v1")
            let originalRoot = try MirrorFixture.layoutRootDigest(original, tag: "v1")
            #expect(backRoot == originalRoot, "\(repo): copied back \(backRoot), exported from upstream \(originalRoot)")
            let backBlobs = Files.regularFiles(under: back.appendingPathComponent("blobs"))
            let originalBlobs = Files.regularFiles(under: original.appendingPathComponent("blobs"))
            #expect(backBlobs == originalBlobs, "\(repo): blob sets differ")
            for relative in backBlobs where originalBlobs.contains(relative) {
                let a = try Files.read(back.appendingPathComponent("blobs/\(relative)"))
                let b = try Files.read(original.appendingPathComponent("blobs/\(relative)"))
                #expect(a == b, "\(repo): blob \(relative) differs")
                #expect("sha256/" + a.sha256.hex == relative, "\(repo): blob \(relative) does not hash to its name")
            }
        }
    }

    @Test("podman pulls the arm64 image from the index, and the single image")
    func podmanPull() async throws {
        let env = try fixture()
        let client = try PodmanClient(env.work)
        func podman(_ arguments: [String]) async throws -> CommandResult { try await client.run(arguments) }

        // linux/arm64 out of the three-platform index.
        let multiRef = "\(env.mirror.host)/\(MirrorFixture.multiRepository):v1"
        let index = try await upstreamManifest(env, MirrorFixture.multiRepository, ":v1")
        let arm64 = try #require(try ManifestDocument(bytes: index.bytes).manifests.first { $0.platform?.architecture == "arm64" })
        let arm64Manifest = try ManifestDocument(bytes: try await env.rawManifest(host: env.upstream.host, MirrorFixture.multiRepository, "@\(arm64.digest)"))
        let arm64Config = try #require(arm64Manifest.config).digest

        let pull = try await podman(["pull", "--tls-verify=false", "--platform", "linux/arm64", multiRef])
        try #require(pull.succeeded, "\(pull.summary)\n--- mirror stderr ---\n\(env.mirror.stderr.suffix(2000))")
        let inspect = try await podman(["image", "inspect", "--format", "{{.Digest}}|{{.Id}}|{{.Os}}|{{.Architecture}}", multiRef])
        try #require(inspect.succeeded, "\(inspect.summary)")
        let fields = inspect.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "|").map(String.init)
        try #require(fields.count == 4, "unexpected inspect output: \(inspect.stdout)")
        #expect([index.digest.description, arm64.digest.description].contains(fields[0]),
                "podman reports digest \(fields[0]); index is \(index.digest), arm64 child is \(arm64.digest)")
        #expect(fields[1] == arm64Config.hex, "image ID \(fields[1]) is not the arm64 config \(arm64Config)")
        #expect(fields[2] == "linux")
        #expect(fields[3] == "arm64")

        // The single-platform image.
        let singleRef = "\(env.mirror.host)/\(MirrorFixture.singleRepository):v1"
        let single = try await upstreamManifest(env, MirrorFixture.singleRepository, ":v1")
        let singleConfig = try #require(try ManifestDocument(bytes: single.bytes).config).digest
        let pullSingle = try await podman(["pull", "--tls-verify=false", singleRef])
        try #require(pullSingle.succeeded, "\(pullSingle.summary)\n--- mirror stderr ---\n\(env.mirror.stderr.suffix(2000))")
        let inspectSingle = try await podman(["image", "inspect", "--format", "{{.Digest}}|{{.Id}}", singleRef])
        try #require(inspectSingle.succeeded, "\(inspectSingle.summary)")
        let singleFields = inspectSingle.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "|").map(String.init)
        #expect(singleFields == [single.digest.description, singleConfig.hex], "podman inspect: \(inspectSingle.stdout)")
    }

    @Test("HTTP: HEAD matches GET, byte ranges, and error envelopes")
    func httpSemantics() async throws {
        let env = try fixture()
        let port = env.mirror.port
        let accept = [("Accept", Self.manifestAccept)]
        let index = try await upstreamManifest(env, MirrorFixture.multiRepository, ":v1")

        // HEAD and GET of a manifest: identical headers, and HEAD has no body.
        let manifestPath = "/v2/test/multi/manifests/v1"
        let get = try RawHTTP.get(port: port, path: manifestPath, headers: accept)
        let head = try RawHTTP.head(port: port, path: manifestPath, headers: accept)
        #expect(get.status == 200, "\(get)")
        #expect(head.status == 200, "\(head)")
        for name in ["Content-Length", "Content-Type", "Docker-Content-Digest"] {
            #expect(get.header(name) != nil, "GET has no \(name)")
            #expect(head.header(name) == get.header(name), "\(name): HEAD \(head.header(name) ?? "-") vs GET \(get.header(name) ?? "-")")
        }
        #expect(head.body.isEmpty, "HEAD returned \(head.body.count) body bytes")
        #expect(get.body == index.bytes)
        #expect(get.header("Content-Length") == String(index.bytes.count))
        #expect(get.header("Content-Type") == MediaType.ociIndex)
        #expect(get.header("Docker-Content-Digest") == index.digest.description)
        #expect(get.header("Docker-Distribution-API-Version") == "registry/2.0")

        // A layer blob: full, HEAD, a range, and a range past the end.
        let document = try ManifestDocument(bytes: index.bytes)
        let child = try #require(document.manifests.first)
        let childManifest = try ManifestDocument(bytes: try await env.rawManifest(host: env.upstream.host, MirrorFixture.multiRepository, "@\(child.digest)"))
        let layer = try #require(childManifest.layers.first)
        let layerBytes = try MirrorFixture.blob(layer.digest, in: env.multiLayout)
        let size = layerBytes.count
        try #require(size > 20 && Int64(size) == layer.size)
        let blobPath = "/v2/test/multi/blobs/\(layer.digest)"

        let full = try RawHTTP.get(port: port, path: blobPath)
        #expect(full.status == 200, "\(full)")
        #expect(full.body == layerBytes, "full blob GET: \(full.body.count) bytes, expected \(size)")
        #expect(full.header("Content-Length") == String(size))
        #expect(full.header("Docker-Content-Digest") == layer.digest.description)

        let blobHead = try RawHTTP.head(port: port, path: blobPath)
        #expect(blobHead.status == 200, "\(blobHead)")
        #expect(blobHead.header("Content-Length") == String(size))
        #expect(blobHead.body.isEmpty, "blob HEAD returned \(blobHead.body.count) body bytes")

        let partial = try RawHTTP.get(port: port, path: blobPath, headers: [("Range", "bytes=10-19")])
        #expect(partial.status == 206, "\(partial)")
        #expect(partial.header("Content-Range") == "bytes 10-19/\(size)")
        #expect(partial.header("Content-Length") == "10")
        #expect(partial.body == Array(layerBytes[10...19]), "range body: \(partial.body)")

        let past = try RawHTTP.get(port: port, path: blobPath, headers: [("Range", "bytes=\(size)-")])
        #expect(past.status == 416, "\(past)")
        #expect(past.header("Content-Range") == "bytes */\(size)")

        // Error envelopes.
        let unknown = try RawHTTP.get(port: port, path: "/v2/test/multi/manifests/no-such-tag", headers: accept)
        #expect(unknown.status == 404, "\(unknown)")
        #expect(unknown.errorCodes == ["MANIFEST_UNKNOWN"], "\(unknown)")
        #expect(unknown.header("Content-Type")?.hasPrefix("application/json") == true, "\(unknown)")

        let badName = try RawHTTP.get(port: port, path: "/v2/Bad/manifests/v1", headers: accept)
        #expect(badName.status == 400, "\(badName)")
        #expect(badName.errorCodes == ["NAME_INVALID"], "\(badName)")

        let badDigest = try RawHTTP.get(port: port, path: "/v2/test/multi/blobs/sha256:not-a-digest")
        #expect(badDigest.status == 400, "\(badDigest)")
        #expect(badDigest.errorCodes == ["DIGEST_INVALID"], "\(badDigest)")
    }
}
