import Foundation
import OCI
import Testing

/// Signatures, SBOMs and attestations travel with their image, through a pull-through mirror
/// and across the air gap. The upstream is Debian's docker-registry (distribution 2.8): it has
/// no referrers API, so the artifacts are pushed as oras and cosign push them to such a
/// registry: OCI 1.1 manifests with a `subject`, listed in the `sha256-<hex>` index of the
/// referrers tag scheme, and a cosign signature under `sha256-<hex>.sig`.
@Suite("Referrers and signatures", .serialized)
struct ReferrersEndToEndTests {
    static let sbomType = "application/spdx+json"
    static let attestationType = "application/vnd.in-toto+json"

    @Test("tag-scheme referrers through the mirror; seed → export → upstream gone → import → offline: referrers API, artifactType filter, the .sig by tag, and it verifies")
    func signaturesCrossTheAirGap() async throws {
        try await PullThroughScope.run("referrers") { scope in
            let upstream = try await scope.registry()
            let (image, pushed, publicKey) = try await Self.signedImage(scope, upstream: upstream)
            let reference = "\(upstream.host)/site/signed:v1"
            let noAPI = try RawHTTP.get(port: upstream.port, path: "/v2/site/signed/referrers/\(image)")
            #expect(noAPI.status == 404, "the upstream was meant to lack the referrers API: \(noAPI)")

            // Pull-through: the mirror answers from the upstream's tag scheme.
            let live = try await scope.mirror(["--upstream", "http://\(upstream.host)"])
            try Self.expectReferrers(port: live.port, image, pushed)
            let unknown = try Self.referrers(port: live.port, try Digest(parsing: "sha256:" + String(repeating: "0", count: 64)))
            #expect(unknown.response.status == 200 && unknown.index.manifests.isEmpty, "\(unknown.response)")

            // Connected side: seed (referrers on by default) and export.
            let seedData = scope.unique("connected")
            let seed = try await MirrorCLI.run(["seed", "--upstream", "http://\(upstream.host)", "--data-dir", seedData.path, reference])
            try #require(seed.succeeded, "\(seed.summary)")
            #expect(seed.stdout.contains("3 referrers"), "\(seed.stdout)")
            let bundle = scope.unique("bundle").appendingPathExtension("tar")
            let export = try await MirrorCLI.run(["export", "--data-dir", seedData.path, "--output", bundle.path, reference])
            try #require(export.succeeded, "\(export.summary)")
            #expect(export.stdout.contains("\(upstream.host)/site/signed:sha256-\(image.hex).sig"), "\(export.stdout)")
            for digest in pushed.referrers { #expect(export.stdout.contains("\(upstream.host)/site/signed@\(digest)"), "\(export.stdout)") }

            // Across the gap: the upstream is gone, the bundle is imported and served offline.
            await upstream.stop()
            let siteData = scope.unique("air-gapped")
            let imported = try await MirrorCLI.run(["import", bundle.path, "--pin", "--data-dir", siteData.path])
            try #require(imported.succeeded, "\(imported.summary)")
            let offline = try await scope.mirrorOn(siteData, ["--offline", "--upstream", "http://\(upstream.host)"])
            try Self.expectReferrers(port: offline.port, image, pushed)

            // The cosign signature pulls by tag with a real client, and still verifies.
            let sigTag = "sha256-\(image.hex).sig"
            let inspect = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(offline.host)/site/signed:\(sigTag)"])
            #expect(inspect.succeeded && Array(inspect.stdoutData).sha256 == pushed.signature, "\(inspect.summary)")
            let copy = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "docker://\(offline.host)/site/signed:\(sigTag)",
                                                       "oci:\(scope.unique("sig").path):sig"])
            #expect(copy.succeeded, "\(copy.summary)")
            let verified = try await Command.run("python3", ["-c", Self.verifyScript, "http://\(offline.host)", "site/signed", sigTag, publicKey.path, image.description])
            #expect(verified.succeeded && verified.stdout.contains("verified"), "\(verified.summary)")
        }
    }

    @Test("seed --no-referrers: the offline mirror has no signature, and says so with 200 and an empty index")
    func noReferrersLeavesThemBehind() async throws {
        try await PullThroughScope.run("no-referrers") { scope in
            let upstream = try await scope.registry()
            let (image, _, _) = try await Self.signedImage(scope, upstream: upstream)
            let reference = "\(upstream.host)/site/signed:v1"
            let seedData = scope.unique("connected")
            let seed = try await MirrorCLI.run(["seed", "--no-referrers", "--upstream", "http://\(upstream.host)", "--data-dir", seedData.path, reference])
            try #require(seed.succeeded, "\(seed.summary)")
            let bundle = scope.unique("bundle").appendingPathExtension("tar")
            let export = try await MirrorCLI.run(["export", "--data-dir", seedData.path, "--output", bundle.path, reference])
            try #require(export.succeeded, "\(export.summary)")
            await upstream.stop()
            let siteData = scope.unique("air-gapped")
            try #require(try await MirrorCLI.run(["import", bundle.path, "--data-dir", siteData.path]).succeeded)
            let offline = try await scope.mirrorOn(siteData, ["--offline", "--upstream", "http://\(upstream.host)"])
            let listed = try Self.referrers(port: offline.port, image)
            #expect(listed.response.status == 200 && listed.index.manifests.isEmpty, "\(listed.response)")
            let sig = try PullThroughHTTP.manifest(port: offline.port, "/v2/site/signed/manifests/sha256-\(image.hex).sig")
            #expect(sig.status == 404 && String(decoding: sig.body, as: UTF8.self).contains("MANIFEST_UNKNOWN"), "\(sig)")
        }
    }

    // MARK: Helpers

    struct Pushed {
        let referrers: [Digest]
        let signature: Digest
    }

    /// A single image at site/signed:v1 with two OCI referrers and a cosign signature, pushed
    /// by the registry's own upload API. Returns the image digest and the signature's public key.
    static func signedImage(_ scope: PullThroughScope, upstream: DistributionRegistry) async throws -> (Digest, Pushed, URL) {
        try await scope.push(try scope.singleImage(seed: 801), to: upstream.host, "site/signed")
        let publicKey = scope.unique("cosign").appendingPathExtension("pub")
        let run = try await Command.run("python3", ["-c", pushScript, "http://\(upstream.host)", "site/signed", "\(upstream.host)/site/signed:v1", publicKey.path])
        try #require(run.succeeded, "\(run.summary)")
        struct Output: Decodable { let subject: String; let referrers: [String]; let signature: String }
        let output = try JSONDecoder().decode(Output.self, from: run.stdoutData)
        let pushed = Pushed(referrers: try output.referrers.map { try Digest(parsing: $0) }, signature: try Digest(parsing: output.signature))
        return (try Digest(parsing: output.subject), pushed, publicKey)
    }

    static func referrers(port: Int, _ subject: Digest, query: String = "") throws -> (response: RawResponse, index: ImageIndex) {
        let response = try RawHTTP.get(port: port, path: "/v2/site/signed/referrers/\(subject)\(query)")
        let index = (try? JSONDecoder().decode(ImageIndex.self, from: Data(response.body))) ?? ImageIndex(manifests: [])
        return (response, index)
    }

    /// Both OCI referrers listed with their artifactType; the filter keeps one and says so.
    static func expectReferrers(port: Int, _ subject: Digest, _ pushed: Pushed) throws {
        let all = try referrers(port: port, subject)
        #expect(all.response.status == 200 && all.response.header("Content-Type") == MediaType.ociIndex, "\(all.response)")
        #expect(Set(all.index.manifests.map(\.digest)) == Set(pushed.referrers), "\(all.response)")
        #expect(Set(all.index.manifests.compactMap(\.artifactType)) == [sbomType, attestationType], "\(all.response)")
        #expect(all.index.manifests.allSatisfy { $0.annotations?["org.example.kind"] == $0.artifactType }, "\(all.response)")
        #expect(all.response.header("OCI-Filters-Applied") == nil)
        // Percent-encoded as Go clients send it: a bare "+" in a query is a space.
        let sboms = try referrers(port: port, subject, query: "?artifactType=\(sbomType.replacingOccurrences(of: "+", with: "%2B"))")
        #expect(sboms.index.manifests.map(\.artifactType) == [sbomType], "\(sboms.response)")
        #expect(sboms.response.header("OCI-Filters-Applied") == "artifactType", "\(sboms.response)")
    }

    /// Pushes, as oras and cosign do against a registry without the referrers API: two
    /// artifacts with a `subject` (an SBOM, an attestation), the tag-scheme index listing them,
    /// and a cosign simple-signing signature of the image under `sha256-<hex>.sig`.
    static let pushScript = #"""
        import sys, json, hashlib, base64, urllib.request
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives import hashes, serialization
        base, repo, identity, keyout = sys.argv[1:5]
        def req(method, path, body=None, headers={}):
            r = urllib.request.Request(base + path, data=body, method=method, headers=headers)
            with urllib.request.urlopen(r) as resp:
                return dict(resp.headers), resp.read()
        def blob(data, media_type):
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            headers, _ = req("POST", f"/v2/{repo}/blobs/uploads/", b"")
            location = headers["Location"]
            location = location if location.startswith("/") else "/" + location.split("/", 3)[3]
            req("PUT", location + ("&" if "?" in location else "?") + "digest=" + digest, data, {"Content-Type": "application/octet-stream"})
            return {"mediaType": media_type, "digest": digest, "size": len(data)}
        def manifest(obj, tag=None):
            data = json.dumps(obj, separators=(",", ":")).encode()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            req("PUT", f"/v2/{repo}/manifests/{tag or digest}", data, {"Content-Type": obj["mediaType"]})
            return {"mediaType": obj["mediaType"], "digest": digest, "size": len(data)}
        headers, body = req("GET", f"/v2/{repo}/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        subject = {"mediaType": headers["Content-Type"], "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body)}
        empty = blob(b"{}", "application/vnd.oci.empty.v1+json")
        referrers = []
        for kind, content in [("application/spdx+json", b'{"spdxVersion":"SPDX-2.3"}'),
                              ("application/vnd.in-toto+json", b'{"_type":"https://in-toto.io/Statement/v1"}')]:
            annotations = {"org.example.kind": kind}
            pushed = manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": kind,
                               "config": empty, "layers": [blob(content, kind)], "subject": subject, "annotations": annotations})
            referrers.append(dict(pushed, artifactType=kind, annotations=annotations))
        hexdigest = subject["digest"].split(":")[1]
        manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": referrers}, "sha256-" + hexdigest)
        key = ec.generate_private_key(ec.SECP256R1())
        payload = json.dumps({"critical": {"identity": {"docker-reference": identity}, "image": {"docker-manifest-digest": subject["digest"]},
                              "type": "cosign container image signature"}, "optional": None}).encode()
        layer = blob(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
        layer["annotations"] = {"dev.cosignproject.cosign/signature": base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()}
        config = blob(b'{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}', "application/vnd.oci.image.config.v1+json")
        signature = manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]},
                             f"sha256-{hexdigest}.sig")
        open(keyout, "wb").write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        print(json.dumps({"subject": subject["digest"], "referrers": [r["digest"] for r in referrers], "signature": signature["digest"]}))
        """#

    /// What `cosign verify --key` checks of a simple-signing signature: the payload blob's
    /// signature against the key, and that it names the image's digest.
    static let verifyScript = #"""
        import sys, json, base64, urllib.request
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives import hashes, serialization
        base, repo, tag, keyfile, digest = sys.argv[1:6]
        def get(path, accept="*/*"):
            with urllib.request.urlopen(urllib.request.Request(base + path, headers={"Accept": accept})) as resp:
                return resp.read()
        manifest = json.loads(get(f"/v2/{repo}/manifests/{tag}", "application/vnd.oci.image.manifest.v1+json"))
        layer = manifest["layers"][0]
        payload = get(f"/v2/{repo}/blobs/{layer['digest']}")
        key = serialization.load_pem_public_key(open(keyfile, "rb").read())
        key.verify(base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"]), payload, ec.ECDSA(hashes.SHA256()))
        assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digest
        print("verified")
        """#
}
