import Foundation
import OCI
import Testing

/// `upstreams[].allow`, `deny` and `deny_status` against a real docker-registry, with skopeo
/// and the real `seed`: a refused repository costs the upstream nothing, whether it is
/// cached or not, and whichever route asks.
@Suite("Allow and deny lists", .serialized)
struct AccessListEndToEndTests {
    /// Every read route of `repository`, GET and HEAD, must be refused with `status` and `code`.
    static func expectRefused(_ mirror: MirrorProcess, _ repository: String, _ image: PullThroughUpstreamImage,
                              status: Int, code: String) throws {
        let root = image.rootDigest
        let blob = image.blobs[0]
        for route in ["manifests/v1", "manifests/\(root)", "blobs/\(blob)", "tags/list", "referrers/\(root)"] {
            for method in ["GET", "HEAD"] {
                let path = "/v2/\(repository)/\(route)"
                let response = try RawHTTP.request(method, port: mirror.port, path: path, headers: [("Accept", PullThroughHTTP.manifestAccept)])
                #expect(response.status == status, "\(method) \(path): \(response)")
                if method == "GET" { #expect(response.errorCodes == [code], "\(method) \(path): \(response)") }
            }
        }
    }

    static func touching(_ repositories: [String], _ requests: [DistributionRegistry.Request]) -> [DistributionRegistry.Request] {
        requests.filter { request in repositories.contains { request.path.hasPrefix("/v2/\($0)/") } }
    }

    @Test("an allowed repository pulls; a denied one gets 404 (403 when configured) and the upstream sees no request, cached or not; seed of it fails")
    func allowAndDenyLists() async throws {
        try await PullThroughScope.run("access-lists") { scope in
            let upstream = try await scope.registry()
            for (seed, repository) in [(UInt64(301), "lab/app"), (302, "lab/secret"), (303, "other/app")] {
                try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, repository)
            }
            let app = try PullThroughHTTP.upstreamImage(port: upstream.port, "lab/app", tag: "v1")
            let secret = try PullThroughHTTP.upstreamImage(port: upstream.port, "lab/secret", tag: "v1")
            let other = try PullThroughHTTP.upstreamImage(port: upstream.port, "other/app", tag: "v1")
            func config(_ rules: String) throws -> URL {
                let file = scope.unique("access").appendingPathExtension("yaml")
                try "upstreams:\n  - url: http://\(upstream.host)\n\(rules)".write(to: file, atomically: true, encoding: .utf8)
                return file
            }
            let data = scope.unique("data")

            // lab/* allowed, lab/secret denied (deny wins), other/app outside the allow list.
            let rules = try config("    allow: [lab/*]\n    deny: [lab/secret]\n")
            let mirror = try await scope.mirrorOn(data, ["--config", rules.path])
            let pulled = try await scope.pull("\(mirror.host)/lab/app:v1")
            #expect(pulled.result.succeeded, "\(pulled.result.summary)")
            #expect(try PullThroughLayout.root(pulled.layout) == app.rootDigest)

            let mark = upstream.requests.count
            for repository in ["lab/secret", "other/app"] {
                let refused = try await scope.pull("\(mirror.host)/\(repository):v1")
                #expect(!refused.result.succeeded, "\(repository) was pulled: \(refused.result.summary)")
            }
            try Self.expectRefused(mirror, "lab/secret", secret, status: 404, code: "NAME_UNKNOWN")
            try Self.expectRefused(mirror, "other/app", other, status: 404, code: "NAME_UNKNOWN")

            // seed obeys the same rules, and says which one refused it.
            let seed = try await MirrorCLI.run(["seed", "--config", rules.path, "--data-dir", scope.unique("seed-data").path, "lab/secret:v1"])
            #expect(seed.status == 1, "\(seed.summary)")
            #expect(seed.stderr.contains("lab/secret is refused by upstreams[\(upstream.host)].deny pattern \"lab/secret\""), "\(seed.summary)")

            let asked = Self.touching(["lab/secret", "other/app"], await upstream.requests(since: mark))
            #expect(asked.isEmpty, "the upstream was asked for refused repositories: \(PullThroughLog.describe(asked))")
            await mirror.stop()

            // A new rule for a repository already cached: 403 with deny_status, and the cache is not read.
            let stricter = try config("    deny: [lab/app]\n    deny_status: 403\n")
            let again = try await scope.mirrorOn(data, ["--config", stricter.path])
            let second = upstream.requests.count
            try Self.expectRefused(again, "lab/app", app, status: 403, code: "DENIED")
            let cachedButDenied = try await scope.pull("\(again.host)/lab/app:v1")
            #expect(!cachedButDenied.result.succeeded, "\(cachedButDenied.result.summary)")
            let askedAgain = Self.touching(["lab/app"], await upstream.requests(since: second))
            #expect(askedAgain.isEmpty, "\(PullThroughLog.describe(askedAgain))")
            // What the old rules refused now pulls: the rules, not the repositories, made the difference.
            let nowAllowed = try await scope.pull("\(again.host)/lab/secret:v1")
            #expect(nowAllowed.result.succeeded, "\(nowAllowed.result.summary)")
        }
    }

    @Test("a watch list entry the rules refuse stops the start and names the rule")
    func watchListObeysTheRules() async throws {
        try await PullThroughScope.run("access-watch") { scope in
            let upstream = try await scope.registry()
            let config = scope.unique("access-watch").appendingPathExtension("yaml")
            try """
            upstreams:
              - url: http://\(upstream.host)
                deny: [lab/**]
            watch:
              images: [lab/team/app:v1]
            """.write(to: config, atomically: true, encoding: .utf8)
            let check = try await MirrorCLI.run(["config", "check", config.path])
            #expect(check.status == 2, "\(check.summary)")
            #expect(check.stderr.contains("watch.images[0].ref: lab/team/app:v1: \(upstream.host)/lab/team/app is refused by upstreams[\(upstream.host)].deny pattern \"lab/**\""),
                    "\(check.summary)")
            let serve = try await MirrorCLI.run(["serve", "--config", config.path, "--listen", "127.0.0.1:0", "--data-dir", scope.unique("data").path])
            #expect(serve.status != 0 && serve.stderr.contains("deny pattern \"lab/**\""), "\(serve.summary)")
            #expect(Self.touching(["lab/team/app"], upstream.requests).isEmpty)
        }
    }
}
