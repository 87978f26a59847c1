import Foundation
import OCI
import Testing

/// `forward_client_credentials` against the token-auth upstream of `TokenAuthTests` (same
/// suite, so the same running issuer and registry): carol may read `team-c/*` and dave
/// `team-d/*`, nothing else. Their images share a layer.
extension TokenAuthTests {
    static let carol = "carol:" + TokenAuthIssuer.users["carol"]!
    static let dave = "dave:" + TokenAuthIssuer.users["dave"]!

    static func basic(_ credentials: String) -> (String, String) {
        ("Authorization", "Basic " + Data(credentials.utf8).base64EncodedString())
    }

    @Test("forwarded credentials: each user pulls its own private image and never the other's, even cached; shared blobs are fetched once; no password is logged or stored")
    func forwardedCredentials() async throws {
        let env = try fixture()
        let (carolBytes, daveBytes) = try await env.pushTeamImages()
        let carolImage = try ManifestDocument(bytes: carolBytes), daveImage = try ManifestDocument(bytes: daveBytes)
        let carolBlobs = Set(([carolImage.config].compactMap { $0 } + carolImage.layers).map(\.digest))
        let daveBlobs = Set(([daveImage.config].compactMap { $0 } + daveImage.layers).map(\.digest))
        let shared = try #require(carolBlobs.intersection(daveBlobs).first, "the two images share no layer upstream")
        let daveOnly = try #require(daveImage.layers.map(\.digest).first { !carolBlobs.contains($0) })
        let config = try env.forwardingConfig()

        let data = try await env.withMirror("forwarding", arguments: ["--config", config]) { mirror, data in
            // Both pull their own image at once, from a cold cache.
            let accessMark = env.upstream.requests.count
            let issuerMark = env.issuer.mark
            async let carolPull = env.pull(mirror, "team-c/app", credentials: Self.carol)
            async let davePull = env.pull(mirror, "team-d/app", credentials: Self.dave)
            let (carol, carolLayout) = try await carolPull, (dave, daveLayout) = try await davePull
            try #require(carol.succeeded, "\(carol.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try #require(dave.succeeded, "\(dave.summary)\n--- mirror stderr ---\n\(mirror.stderr.suffix(3000))")
            try env.expectLayout(carolLayout, tag: "v1", matches: carolBytes)
            try env.expectLayout(daveLayout, tag: "v1", matches: daveBytes)

            // Each user's tokens were asked for as that user.
            let carolTokens = env.issuer.requests(since: issuerMark, scope: "repository:team-c/app:pull")
            let daveTokens = env.issuer.requests(since: issuerMark, scope: "repository:team-d/app:pull")
            #expect(!carolTokens.isEmpty && carolTokens.allSatisfy { $0.user == "carol" && $0.granted == ["repository:team-c/app:pull"] }, "\(carolTokens)")
            #expect(!daveTokens.isEmpty && daveTokens.allSatisfy { $0.user == "dave" && $0.granted == ["repository:team-d/app:pull"] }, "\(daveTokens)")

            // One download per blob, the shared layer included, however many users pulled it.
            let requests = await env.upstream.requests(since: accessMark)
            let kinds = Dictionary(grouping: requests) { "\($0.method) \($0.path.contains("/blobs/") ? "blob" : "manifest") \($0.status)" }.mapValues(\.count)
            Progress.step("forwarding: two cold pulls cost the upstream \(kinds.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")); "
                          + "\(env.issuer.log.count - issuerMark) token requests")
            for digest in carolBlobs.union(daveBlobs) {
                let gets = requests.filter { $0.method == "GET" && $0.path.hasSuffix("/blobs/\(digest)") }
                #expect(gets.count == 1, "\(digest)\(digest == shared ? " (shared)" : ""): \(gets)")
            }

            // The warm cache holds everything; carol still gets nothing of dave's.
            let warmAccess = env.upstream.requests.count
            let warmIssuer = env.issuer.mark
            let cross = try await env.pull(mirror, "team-d/app", credentials: Self.carol).0
            #expect(!cross.succeeded, "carol pulled dave's image through the cache: \(cross.summary)")
            let asCarol = [Self.basic(Self.carol)]
            for path in ["/v2/team-d/app/manifests/v1", "/v2/team-d/app/manifests/\(daveBytes.sha256)",
                         "/v2/team-d/app/blobs/\(shared)", "/v2/team-d/app/blobs/\(daveOnly)"] {
                let get = try RawHTTP.get(port: mirror.port, path: path, headers: Self.manifestAccept + asCarol)
                #expect(get.status == 401 && get.errorCodes == ["UNAUTHORIZED"], "carol GET \(path): \(get)")
                #expect(get.header("WWW-Authenticate")?.hasPrefix("Basic realm=") == true, "\(get)")
                let head = try RawHTTP.head(port: mirror.port, path: path, headers: Self.manifestAccept + asCarol)
                #expect(head.status == 401, "carol HEAD \(path): \(head)")
            }
            // Nor does anyone without credentials, nor dave with carol's repository.
            let anonymous = try RawHTTP.get(port: mirror.port, path: "/v2/team-d/app/blobs/\(daveOnly)")
            #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate")?.hasPrefix("Basic") == true, "\(anonymous)")
            let daveOnCarol = try RawHTTP.get(port: mirror.port, path: "/v2/team-c/app/manifests/v1", headers: Self.manifestAccept + [Self.basic(Self.dave)])
            #expect(daveOnCarol.status == 401, "\(daveOnCarol)")
            let wrong = try RawHTTP.get(port: mirror.port, path: "/v2/team-c/app/manifests/v1", headers: Self.manifestAccept + [Self.basic("carol:guess")])
            #expect(wrong.status == 401, "\(wrong)")
            // Carol's own repository does not hold dave's layer: the upstream says so (repository scoping).
            let scoped = try RawHTTP.get(port: mirror.port, path: "/v2/team-c/app/blobs/\(daveOnly)", headers: asCarol)
            #expect(scoped.status == 404 && scoped.errorCodes == ["BLOB_UNKNOWN"], "\(scoped)")
            // Clients learn to send credentials at /v2/.
            let base = try RawHTTP.get(port: mirror.port, path: "/v2/")
            #expect(base.status == 401 && base.header("WWW-Authenticate")?.hasPrefix("Basic") == true, "\(base)")
            #expect(try RawHTTP.get(port: mirror.port, path: "/v2/", headers: asCarol).status == 200)
            // A login is checked by the upstream: skopeo login (as docker login) fails with a wrong password.
            let authFile = env.work.url.appendingPathComponent("auth-\(UUID().uuidString.prefix(6)).json").path
            for (password, accepted) in [(TokenAuthIssuer.users["carol"]!, true), ("guess", false)] {
                let login = try await Command.run("skopeo", ["login", "--authfile", authFile, "--tls-verify=false",
                                                             "--username", "carol", "--password", password, mirror.host])
                #expect(login.succeeded == accepted, "\(login.summary)")
            }
            let badLogin = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: [Self.basic("carol:guess")])
            #expect(badLogin.status == 401 && badLogin.header("WWW-Authenticate")?.hasPrefix("Basic") == true, "\(badLogin)")

            // The refusals were the upstream's: carol's token for team-d grants nothing, and the
            // registry refused it; nothing was downloaded for her.
            let refusedTokens = env.issuer.requests(since: warmIssuer, scope: "repository:team-d/app:pull")
            #expect(refusedTokens.contains { $0.user == "carol" && $0.granted.isEmpty }, "\(refusedTokens)")
            #expect(!refusedTokens.contains { $0.user == "carol" && !$0.granted.isEmpty }, "\(refusedTokens)")
            let warm = await env.upstream.requests(since: warmAccess)
            #expect(warm.contains { $0.path.hasPrefix("/v2/team-d/app/") && $0.status == 401 }, "\(warm)")
            #expect(!warm.contains { $0.method == "GET" && $0.path.contains("/blobs/") }, "\(warm)")

            // Without htpasswd too, the upstream's 401s count as failed logins of the address.
            var guesses: [Int] = []
            for i in 0..<30 where guesses.filter({ $0 == 429 }).count < 2 {
                guesses.append(try RawHTTP.get(port: mirror.port, path: "/v2/team-c/app/manifests/v1", headers: [Self.basic("carol:guess\(i)")]).status)
            }
            #expect(guesses.first == 401 && guesses.suffix(2) == [429, 429], "\(guesses)")

            // Neither password, nor its Basic form, in the log (at debug level) or on the status page.
            #expect(mirror.stderr.contains("the upstream refused this client"), "the log is not at debug level: the grep below would prove little")
            let status = try RawHTTP.get(port: mirror.port, path: "/")
            for credentials in [Self.carol, Self.dave] {
                let password = String(credentials.split(separator: ":")[1])
                let encoded = Data(credentials.utf8).base64EncodedString()
                #expect(!mirror.stderr.contains(password) && !mirror.stderr.contains(encoded), "the mirror logged \(credentials)")
                #expect(!String(decoding: status.body, as: UTF8.self).contains(password))
            }
            return data
        }
        // Nor anywhere in the data directory (index and blobs).
        for file in Files.regularFiles(under: data) {
            let bytes = try Data(contentsOf: data.appendingPathComponent(file))
            for credentials in [Self.carol, Self.dave] {
                let password = String(credentials.split(separator: ":")[1])
                #expect(bytes.range(of: Data(password.utf8)) == nil, "\(file) holds a password")
            }
        }
    }

    @Test("forwarded credentials beside auth.htpasswd: the upstream checks its clients, htpasswd the rest; 401s from either are throttled per address")
    func forwardedCredentialsBesideHtpasswd() async throws {
        let env = try fixture()
        _ = try await env.pushTeamImages()
        let htpasswd = env.work.url.appendingPathComponent("forwarding-htpasswd")
        try (try await PullThroughBcrypt.htpasswdLine(user: "ops", password: "ops-pw") + "\n").write(to: htpasswd, atomically: true, encoding: .utf8)
        // A second upstream on the same registry, without forwarding: htpasswd guards it.
        let config = try env.forwardingConfig(label: "htpasswd", extra: """
            auth:
              htpasswd:
                path: \(htpasswd.path)
              failures:
                limit: 3
                window: 10m
            """, plainUpstream: true)
        try await env.withMirror("forwarding-htpasswd", arguments: ["--config", config]) { mirror, _ in
            func get(_ path: String, _ credentials: String?) throws -> RawResponse {
                try RawHTTP.get(port: mirror.port, path: path, headers: Self.manifestAccept + (credentials.map { [Self.basic($0)] } ?? []))
            }
            let carolsOwn = try get("/v2/team-c/app/manifests/v1", Self.carol)
            #expect(carolsOwn.status == 200, "carol, unknown to htpasswd, reads her repository: \(carolsOwn)\n\(mirror.stderr.suffix(2000))")
            #expect(try get("/v2/plain/public/img/manifests/v1", "ops:ops-pw").status == 200)
            #expect(try get("/v2/plain/public/img/manifests/v1", nil).status == 401)
            #expect(try get("/", nil).status == 401, "the status page stays behind htpasswd")
            // Failed logins, from either side: htpasswd refusing carol (1), the upstream refusing ops (2) and a wrong password (3).
            #expect(try get("/v2/plain/public/img/manifests/v1", Self.carol).status == 401)
            #expect(try get("/v2/team-c/app/manifests/v1", "ops:ops-pw").status == 401)
            #expect(try get("/v2/team-c/app/manifests/v1", "carol:guess").status == 401)
            // Out of attempts: even carol's right password waits, and the upstream is not asked.
            let issuerMark = env.issuer.mark
            let throttled = try get("/v2/team-c/app/manifests/v1", "carol:guess-again")
            #expect(throttled.status == 429 && throttled.errorCodes == ["TOOMANYREQUESTS"], "\(throttled)")
            #expect(try get("/v2/team-c/app/manifests/v1", Self.carol).status == 429)
            #expect(env.issuer.mark == issuerMark, "\(Array(env.issuer.log.dropFirst(issuerMark)))")
        }
    }
}

extension TokenAuthFixture {
    /// `team-c/app:v1` and `team-d/app:v1`, pushed as alice: the same first layer, then one
    /// layer of each image's own. Returns the manifests as the upstream serves them.
    func pushTeamImages() async throws -> (carol: [UInt8], dave: [UInt8]) {
        for (repository, ownLayer) in [("team-c/app", 70_000), ("team-d/app", 50_000)] {
            let directory = try work.subdirectory("\(repository.replacingOccurrences(of: "/", with: "-"))-layout")
            // One seed: the first layer's bytes are the same in both; the second differs in size.
            var writer = try OCILayoutWriter(root: directory, seed: seed &+ 20)
            let platform = try writer.writeImage(architecture: "amd64", variant: nil, layerSizes: [120_000, ownLayer], label: "team")
            try writer.writeLayoutIndex(root: platform.manifest, tag: "v1")
            let image = SyntheticImage(layout: directory, tag: "v1", root: platform.manifest, platforms: [platform])
            try await Self.push(image, to: "\(upstream.host)/\(repository):v1")
        }
        return (try await upstreamManifest("team-c/app", "v1"), try await upstreamManifest("team-d/app", "v1"))
    }

    /// A `--config` whose first upstream, `up`, forwards client credentials, logging at debug
    /// level; `extra` YAML is added at the top level; `plainUpstream` adds `plain`, the same
    /// registry without forwarding.
    func forwardingConfig(label: String = "forwarding", extra: String? = nil, plainUpstream: Bool = false) throws -> String {
        let config = work.url.appendingPathComponent("\(label)-config.yaml")
        let yaml = """
            log:
              level: debug
            \(extra ?? """
            auth:
              failures:
                limit: 30
                window: 10m
            """)
            upstreams:
              - name: up
                url: "http://\(upstream.host)"
                forward_client_credentials: true
                access_memo: 60s
            \(plainUpstream ? "  - name: plain\n    url: \"http://\(upstream.host)\"" : "")

            """
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        return config.path
    }

    /// `skopeo copy --src-creds` of `repository:v1` out of the mirror into a fresh OCI layout.
    func pull(_ mirror: MirrorProcess, _ repository: String, credentials: String) async throws -> (CommandResult, URL) {
        let out = work.url.appendingPathComponent("out-\(repository.replacingOccurrences(of: "/", with: "-"))-\(UUID().uuidString.prefix(6))")
        let result = try await Command.run("skopeo", [
            "copy", "--src-tls-verify=false", "--src-creds", credentials, "docker://\(mirror.host)/\(repository):v1", "oci:\(out.path):v1",
        ])
        return (result, out)
    }
}
