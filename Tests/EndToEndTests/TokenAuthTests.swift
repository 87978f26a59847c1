import Foundation
import OCI
import Testing

/// The mirror against an upstream behind Bearer-token auth: a real docker-registry (distribution
/// 2.8) trusting a test token issuer that signs RS256 JWTs (x5c chain → `rootcertbundle`).
///
/// Each test runs its own mirror on a fresh data directory; the issuer's request log and the
/// registry's access log are read relative to marks taken before the step under test.
@Suite("registry-mirror upstream Bearer-token auth", .serialized, .tokenAuthEnvironment)
struct TokenAuthTests {
    static let manifestAccept = [("Accept", MediaType.manifestAccept.joined(separator: ", "))]

    func fixture() throws -> TokenAuthFixture {
        try #require(TokenAuthFixture.current, "the suite's TokenAuthFixture was not set up")
    }

    @Test("alice pushed public/img and private/img; the upstream enforces the issuer's policy")
    func upstreamPolicy() async throws {
        let env = try fixture()
        let upstream = env.upstream

        // Alice sees both. (skopeo compresses the synthetic tar layers on push, so the digests
        // differ from the layouts'; every later check compares against what the upstream serves.)
        var publicBytes: [UInt8] = []
        for repository in ["public/img", "private/img"] {
            let bytes = try await env.upstreamManifest(repository, "v1")
            let document = try ManifestDocument(bytes: bytes)
            #expect(document.layers.count == 3 && document.config != nil, "\(repository): \(String(decoding: bytes, as: UTF8.self))")
            if repository == "public/img" { publicBytes = bytes }
        }
        // The pushes asked for and got push access as alice.
        let pushes = env.issuer.log.filter { $0.user == "alice" && $0.granted.contains { $0.hasSuffix(":pull,push") || $0.hasSuffix(":push,pull") } }
        #expect(pushes.contains { $0.granted.contains { $0.hasPrefix("repository:public/img:") } }, "\(env.issuer.log)")
        #expect(pushes.contains { $0.granted.contains { $0.hasPrefix("repository:private/img:") } }, "\(env.issuer.log)")

        // Without a token the registry challenges, naming the scope.
        let bare = try RawHTTP.get(port: upstream.port, path: "/v2/public/img/manifests/v1", headers: Self.manifestAccept)
        #expect(bare.status == 401, "\(bare)")
        let challenge = bare.header("WWW-Authenticate") ?? ""
        #expect(challenge.hasPrefix("Bearer "), "\(bare)")
        #expect(challenge.contains(#"scope="repository:public/img:pull""#), "\(challenge)")
        #expect(challenge.contains(#"service="\#(TokenAuthIssuer.service)""#), "\(challenge)")

        // Anonymous: public yes, private no.
        let anonymousPublic = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(upstream.host)/public/img:v1"])
        #expect(anonymousPublic.succeeded, "\(anonymousPublic.summary)")
        #expect([UInt8](anonymousPublic.stdoutData) == publicBytes)
        let anonymousPrivate = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(upstream.host)/private/img:v1"])
        #expect(!anonymousPrivate.succeeded, "anonymous read of private/img succeeded upstream: \(anonymousPrivate.summary)")
    }

    @Test("anonymous mirror pulls public/img with one token, reused for every later upstream request")
    func anonymousPublicPull() async throws {
        let env = try fixture()
        let scope = "repository:public/img:pull"
        let upstreamBytes = try await env.upstreamManifest("public/img", "v1")
        try await env.withMirror("anonymous-public") { mirror, _ in
            let issuerMark = env.issuer.mark
            let accessMark = env.upstream.requests.count

            let (pull, layout) = try await env.pullThroughMirror(mirror, "public/img", "v1")
            try #require(pull.succeeded, "\(pull.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(layout, tag: "v1", matches: upstreamBytes)

            // The mirror's manifest is upstream's, byte for byte.
            let fromMirror = try await Command.check("skopeo", ["inspect", "--raw", "--tls-verify=false", "docker://\(mirror.host)/public/img:v1"])
            #expect([UInt8](fromMirror.stdoutData) == upstreamBytes)

            let tokens = env.issuer.requests(since: issuerMark, scope: scope)
            let upstreamRequests = await env.upstream.requests(since: accessMark).filter { $0.path.hasPrefix("/v2/public/img/") }
            let challenged = upstreamRequests.filter { $0.status == 401 }
            Progress.step("tokenauth: \(tokens.count) token request(s) for \(scope); upstream: \(upstreamRequests.map(\.description))")
            #expect((1...3).contains(tokens.count), "token requests for \(scope): \(tokens)")
            #expect(tokens.allSatisfy { $0.status == 200 && $0.user == nil && $0.granted == [scope] }, "\(tokens)")
            #expect(env.issuer.log.dropFirst(issuerMark).allSatisfy { $0.scopes == [scope] },
                    "the mirror asked for other scopes: \(Array(env.issuer.log.dropFirst(issuerMark)))")
            // Manifest + config + 3 layers at least, nearly all sent with the cached token.
            #expect(upstreamRequests.count >= 5, "upstream requests: \(upstreamRequests)")
            #expect(challenged.count <= 3, "\(challenged.count) upstream 401s: \(upstreamRequests)")
            #expect(upstreamRequests.filter { $0.status == 200 }.count >= 5, "\(upstreamRequests)")

            // Later requests for the same repository: the cached token, no new token, no 401.
            let issuerMark2 = env.issuer.mark
            let accessMark2 = env.upstream.requests.count
            // (The blobs are cached now; an unknown tag is sure to go upstream.)
            let unknownTag = try RawHTTP.get(port: mirror.port, path: "/v2/public/img/manifests/no-such-tag", headers: Self.manifestAccept)
            #expect(unknownTag.status == 404, "\(unknownTag)")
            #expect(unknownTag.errorCodes == ["MANIFEST_UNKNOWN"], "\(unknownTag)")
            let later = await env.upstream.requests(since: accessMark2)
            #expect(later.contains { $0.path.hasPrefix("/v2/public/img/manifests/no-such-tag") && $0.status == 404 }, "\(later)")
            #expect(env.issuer.requests(since: issuerMark2, scope: scope).isEmpty, "\(Array(env.issuer.log.dropFirst(issuerMark2)))")
            #expect(!later.contains { $0.status == 401 }, "the cached token was not sent: \(later)")
        }
    }

    @Test("anonymous mirror: private/img is 404 MANIFEST_UNKNOWN (never a 5xx), and nothing is cached")
    func anonymousPrivateIsUnknown() async throws {
        let env = try fixture()
        let scope = "repository:private/img:pull"
        // Digests that do exist upstream, so a 404 is about access, not about the content.
        let privateBytes = try await env.upstreamManifest("private/img", "v1")
        let layer = try #require(try ManifestDocument(bytes: privateBytes).layers.first).digest
        let data = try await env.withMirror("anonymous-private") { mirror, data in
            let issuerMark = env.issuer.mark

            let get = try RawHTTP.get(port: mirror.port, path: "/v2/private/img/manifests/v1", headers: Self.manifestAccept)
            #expect(get.status == 404, "\(get)\n--- mirror stderr ---\n\(mirror.stderr.suffix(2000))")
            #expect(get.errorCodes == ["MANIFEST_UNKNOWN"], "\(get)")
            let head = try RawHTTP.head(port: mirror.port, path: "/v2/private/img/manifests/v1", headers: Self.manifestAccept)
            #expect(head.status == 404, "\(head)")
            let byDigest = try RawHTTP.get(port: mirror.port, path: "/v2/private/img/manifests/\(privateBytes.sha256)", headers: Self.manifestAccept)
            #expect(byDigest.status == 404, "\(byDigest)")
            #expect(byDigest.errorCodes == ["MANIFEST_UNKNOWN"], "\(byDigest)")
            let blob = try RawHTTP.get(port: mirror.port, path: "/v2/private/img/blobs/\(layer)")
            #expect(blob.status == 404, "\(blob)")
            #expect(blob.errorCodes == ["BLOB_UNKNOWN"], "\(blob)")

            let pull = try await env.pullThroughMirror(mirror, "private/img", "v1").0
            #expect(!pull.succeeded, "an anonymous mirror served private/img: \(pull.summary)")
            // The mirror's address is in skopeo's message, and its port may contain "500".
            let said = pull.stderr.replacingOccurrences(of: mirror.host, with: "<mirror>")
            #expect(!said.contains("500") && !said.contains("502") && !said.contains("503"), "\(pull.summary)")

            // The mirror did try, anonymously, and got a token that grants nothing.
            let tokens = env.issuer.requests(since: issuerMark, scope: scope)
            #expect(!tokens.isEmpty, "the mirror never asked the issuer for \(scope)")
            #expect(tokens.allSatisfy { $0.user == nil && $0.granted.isEmpty }, "\(tokens)")
            return data
        }
        let ls = try await MirrorCLI.list(dataDirectory: data)
        #expect(ls.succeeded, "\(ls.summary)")
        #expect(!ls.stdout.contains("private/img"), "ls: \(ls.stdout)")
        #expect(!ls.stdout.contains("sha256:"), "ls: \(ls.stdout)")
        let blobs = Files.regularFiles(under: data.appendingPathComponent("blobs"))
        #expect(blobs.isEmpty, "blobs cached from a refused pull: \(blobs)")
    }

    @Test("mirror with alice's credentials (--config, password_file) pulls private/img")
    func credentialedPrivatePull() async throws {
        let env = try fixture()
        let scope = "repository:private/img:pull"
        let upstreamBytes = try await env.upstreamManifest("private/img", "v1")
        let config = try env.credentialsConfig("alice", username: "alice", password: "secret")
        try await env.withMirror("alice", arguments: ["--config", config]) { mirror, _ in
            let issuerMark = env.issuer.mark
            let (pull, layout) = try await env.pullThroughMirror(mirror, "private/img", "v1")
            try #require(pull.succeeded, "\(pull.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(layout, tag: "v1", matches: upstreamBytes)

            let tokens = env.issuer.requests(since: issuerMark, scope: scope)
            #expect((1...3).contains(tokens.count), "\(tokens)")
            #expect(tokens.allSatisfy { $0.user == "alice" && $0.status == 200 && $0.granted == [scope] },
                    "token requests not made as alice: \(tokens)")
            #expect(env.issuer.log.dropFirst(issuerMark).allSatisfy { $0.user == "alice" },
                    "anonymous token requests from a mirror with credentials: \(Array(env.issuer.log.dropFirst(issuerMark)))")
            // This mirror runs at the default log level (info; no --log-level, none in the
            // config): neither the password nor its Basic form may appear in its log.
            let mirrorLog = mirror.stderr
            #expect(!mirrorLog.contains("secret"), "the mirror logged the upstream password")
            let basic = Data("alice:secret".utf8).base64EncodedString()
            #expect(!mirrorLog.contains(basic), "the mirror logged the Basic credentials (\(basic))")
        }
    }

    @Test("credentials the upstream refuses become 403 DENIED, never 404 or 5xx")
    func refusedCredentialsAreDenied() async throws {
        let env = try fixture()
        // A wrong password: the token endpoint itself answers 401.
        let wrong = try env.credentialsConfig("wrong", username: "alice", password: "not-the-secret")
        try await env.withMirror("wrong-password", arguments: ["--config", wrong]) { mirror, data in
            let issuerMark = env.issuer.mark
            let get = try RawHTTP.get(port: mirror.port, path: "/v2/private/img/manifests/v1", headers: Self.manifestAccept)
            #expect(get.status == 403, "\(get)\n--- mirror stderr ---\n\(mirror.stderr.suffix(2000))")
            #expect(get.errorCodes == ["DENIED"], "\(get)")
            let refused = Array(env.issuer.log.dropFirst(issuerMark))
            #expect(!refused.isEmpty && refused.allSatisfy { $0.status == 401 }, "\(refused)")
            #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).isEmpty)
        }
        // Valid credentials without access to the repository: a token granting nothing, then the registry's 401.
        let bob = try env.credentialsConfig("bob", username: "bob", password: "builder")
        try await env.withMirror("bob", arguments: ["--config", bob]) { mirror, _ in
            let get = try RawHTTP.get(port: mirror.port, path: "/v2/private/img/manifests/v1", headers: Self.manifestAccept)
            #expect(get.status == 403, "\(get)\n--- mirror stderr ---\n\(mirror.stderr.suffix(2000))")
            #expect(get.errorCodes == ["DENIED"], "\(get)")
            // The same credentials still pull what they may.
            let upstreamBytes = try await env.upstreamManifest("public/img", "v1")
            let (pull, layout) = try await env.pullThroughMirror(mirror, "public/img", "v1")
            try #require(pull.succeeded, "\(pull.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(layout, tag: "v1", matches: upstreamBytes)
        }
    }

    @Test("a token past expires_in that the upstream refuses is replaced by a fresh one; the pull succeeds")
    func expiredTokenIsRefreshed() async throws {
        let env = try fixture()
        let scope = "repository:public/exp:pull"
        // Two tags with different blobs, pushed while tokens are long-lived.
        let old = try SyntheticImages.single(at: try env.work.subdirectory("exp-v1"), tag: "v1", seed: env.seed &+ 10)
        let new = try SyntheticImages.single(at: try env.work.subdirectory("exp-v2"), tag: "v2", seed: env.seed &+ 11)
        try await TokenAuthFixture.push(old, to: "\(env.upstream.host)/public/exp:v1")
        try await TokenAuthFixture.push(new, to: "\(env.upstream.host)/public/exp:v2")
        let oldBytes = try await env.upstreamManifest("public/exp", "v1")
        let newBytes = try await env.upstreamManifest("public/exp", "v2")

        env.issuer.setExpiresIn(2)
        defer { env.issuer.setExpiresIn(300) }
        try await env.withMirror("expiry") { mirror, _ in
            let mark0 = env.issuer.mark
            let (first, firstLayout) = try await env.pullThroughMirror(mirror, "public/exp", "v1")
            try #require(first.succeeded, "\(first.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(firstLayout, tag: "v1", matches: oldBytes)
            let firstTokens = env.issuer.requests(since: mark0, scope: scope)
            #expect((1...3).contains(firstTokens.count), "\(firstTokens)")
            let staleToken = try #require(firstTokens.last?.token)

            try await Task.sleep(for: .seconds(3))

            // Harness check: the registry now refuses the old token.
            let stale = try RawHTTP.get(port: env.upstream.port, path: "/v2/public/exp/manifests/v2",
                                        headers: Self.manifestAccept + [("Authorization", "Bearer \(staleToken)")])
            try #require(stale.status == 401, "the registry still accepts a token issued with expires_in 2 after 3 s: \(stale)")

            let mark1 = env.issuer.mark
            let accessMark = env.upstream.requests.count
            func expiredTokenRefusals() -> Int { env.upstream.stderr.components(separatedBy: "token not to be used after").count - 1 }
            let refusalsBefore = expiredTokenRefusals()
            let (second, secondLayout) = try await env.pullThroughMirror(mirror, "public/exp", "v2")
            try #require(second.succeeded, "\(second.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(secondLayout, tag: "v2", matches: newBytes)
            let secondTokens = env.issuer.requests(since: mark1, scope: scope)
            let upstreamRequests = await env.upstream.requests(since: accessMark)
            // Diagnostic only: whether the mirror still sent the expired token (its cache keeps a
            // token at least 10 s) or had dropped it; both end in a 401 and a fresh token.
            Progress.step("tokenauth: after expiry, \(secondTokens.count) token request(s); the registry refused an expired token \(expiredTokenRefusals() - refusalsBefore) time(s); upstream: \(upstreamRequests.map(\.description))")
            #expect(!secondTokens.isEmpty, "no fresh token after expiry; upstream saw \(upstreamRequests)")
            #expect(secondTokens.count <= 3, "\(secondTokens)")
            #expect(secondTokens.allSatisfy { $0.status == 200 && $0.token != staleToken }, "\(secondTokens)")
            #expect(!upstreamRequests.contains { $0.status >= 500 }, "\(upstreamRequests)")
        }
    }

    @Test("a repository the upstream does not have is 404 through the mirror")
    func missingRepositoryIsNotFound() async throws {
        let env = try fixture()
        try await env.withMirror("missing") { mirror, data in
            let get = try RawHTTP.get(port: mirror.port, path: "/v2/public/nothing/manifests/v1", headers: Self.manifestAccept)
            #expect(get.status == 404, "\(get)\n--- mirror stderr ---\n\(mirror.stderr.suffix(2000))")
            #expect(get.errorCodes == ["MANIFEST_UNKNOWN"] || get.errorCodes == ["NAME_UNKNOWN"], "\(get)")
            let head = try RawHTTP.head(port: mirror.port, path: "/v2/public/nothing/manifests/v1", headers: Self.manifestAccept)
            #expect(head.status == 404, "\(head)")
            // A blob the registry holds, but not in this repository.
            let digest = try #require(try ManifestDocument(bytes: try await env.upstreamManifest("public/img", "v1")).layers.first).digest
            let blob = try RawHTTP.get(port: mirror.port, path: "/v2/public/nothing/blobs/\(digest)")
            #expect(blob.status == 404, "\(blob)")
            #expect(blob.errorCodes == ["BLOB_UNKNOWN"], "\(blob)")
            let pull = try await env.pullThroughMirror(mirror, "public/nothing", "v1").0
            #expect(!pull.succeeded, "\(pull.summary)")
            #expect(Files.regularFiles(under: data.appendingPathComponent("blobs")).isEmpty)
        }
    }
}
