import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
@testable import Mirror
import OCI
import RegistryMirror
import Testing

/// `upstreams[].allow` and `deny`: the glob grammar, the verdict, the configuration, and the
/// gate in `PullThroughRegistry` that every route, `seed` and the watch list pass through.
@Suite struct RepositoryPatternTests {
    static func matches(_ pattern: String, _ name: String) throws -> Bool {
        try RepositoryPattern(parsing: pattern).matches(RepositoryName(parsing: name))
    }

    @Test(arguments: [
        // `*`: one segment, or a run of characters within one.
        ("library/*", "library/nginx", true),
        ("library/*", "library/a/b", false),
        ("library/*", "library", false),
        ("library/*", "other/nginx", false),
        ("team/app-*", "team/app-web", true),
        ("team/app-*", "team/api-web", false),
        ("*/app", "x/app", true),
        ("*/app", "x/y/app", false),
        ("*", "alpine", true),
        ("*", "library/alpine", false),
        ("a*b*c", "abbbc", true),
        ("a*b*c", "acb", false),
        // `**`: any depth; at the end, one or more segments, so not the stem itself.
        ("myorg/**", "myorg/app", true),
        ("myorg/**", "myorg/team/deep/app", true),
        ("myorg/**", "myorg", false),
        ("myorg/**", "myorganisation/app", false),
        ("**", "alpine", true),
        ("**", "a/b/c/d", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false),
        ("**/app", "app", true),
        ("**/app", "x/y/app", true),
        ("**/app", "x/y/app2", false),
        ("**/*-dev/**", "org/app-dev/x", true),
        ("**/*-dev/**", "org/app-dev", false),
        // Exact names.
        ("library/nginx", "library/nginx", true),
        ("library/nginx", "library/nginx2", false),
        ("library/nginx", "library/nginx/sub", false),
    ])
    func globs(_ pattern: String, _ name: String, _ expected: Bool) throws {
        #expect(try Self.matches(pattern, name) == expected, "\(pattern) against \(name)")
    }

    @Test func manyDoubleStarsStayCheap() throws {
        let pattern = try RepositoryPattern(parsing: Array(repeating: "**", count: 40).joined(separator: "/") + "/z")
        let name = try RepositoryName(parsing: Array(repeating: "a", count: 120).joined(separator: "/"))
        let clock = ContinuousClock()
        let took = clock.measure { #expect(!pattern.matches(name)) }
        #expect(took < .milliseconds(200), "\(took)")
    }

    @Test(arguments: [
        ("", "empty"),
        ("library/", "library/* for the repositories right below it, or library/** for any depth"),
        ("/library/*", "must not start with /"),
        ("library//nginx", "empty path segment"),
        ("Library/*", "lowercase, so write \"library/*\""),
        ("myorg/a**", "** must be a whole path segment"),
        ("**b", "** must be a whole path segment"),
        ("library/ngin?", "has '?'"),
        ("library/[ab]", "has '['"),
        ("library/ nginx", "has ' '"),
        ("team/app-", "no repository name has the segment \"app-\""),
        ("docker.io/library/nginx:1", "has ':'"),
    ])
    func badPatternsAreRefusedWithTheReason(_ text: String, _ reason: String) {
        do {
            _ = try RepositoryPattern(parsing: text)
            Issue.record("\"\(text)\" was accepted")
        } catch {
            #expect(error.code == .invalidPattern && error.message.contains(reason), "\(error.message)")
        }
    }

    @Test func denyWinsAndNoAllowListAllowsAll() throws {
        func name(_ text: String) throws -> RepositoryName { try RepositoryName(parsing: text) }
        let open = RepositoryAccess()
        #expect(open.verdict(for: try name("anything/at/all")) == .allowed)

        let secret = try RepositoryPattern(parsing: "myorg/secret/**")
        let rules = RepositoryAccess(allow: [try RepositoryPattern(parsing: "library/*"), try RepositoryPattern(parsing: "myorg/**")],
                                     deny: [secret])
        #expect(rules.verdict(for: try name("library/nginx")) == .allowed)
        #expect(rules.verdict(for: try name("myorg/team/app")) == .allowed)
        #expect(rules.verdict(for: try name("myorg/secret/keys")) == .denied(by: secret), "deny wins over allow")
        #expect(rules.verdict(for: try name("someone/else")) == .notAllowed)

        let denyOnly = RepositoryAccess(deny: [secret])
        #expect(denyOnly.verdict(for: try name("someone/else")) == .allowed)
        #expect(RepositoryAccess(allow: []).verdict(for: try name("library/nginx")) == .notAllowed, "an empty allow list allows nothing")
    }
}

@Suite struct RepositoryAccessConfigurationTests {
    static func load(_ yaml: String, environment: [String: String] = [:]) throws -> MirrorConfiguration {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/config.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        return try MirrorConfiguration.load(file: file, environment: environment)
    }

    static func problems(_ yaml: String, environment: [String: String] = [:]) -> [String] {
        do {
            _ = try load(yaml, environment: environment)
            return []
        } catch let error as ConfigurationError {
            return error.problems
        } catch {
            return ["\(error)"]
        }
    }

    @Test func allowDenyAndStatusAreRead() throws {
        let config = try Self.load("""
            upstreams:
              - name: docker.io
                url: https://registry-1.docker.io
                allow: [library/*, myorg/**]
                deny: [myorg/secret]
                deny_status: 403
              - name: ghcr.io
                url: https://ghcr.io
            """)
        let hub = config.upstreams[0].access
        #expect(hub.allow?.map(\.text) == ["library/*", "myorg/**"] && hub.deny.map(\.text) == ["myorg/secret"])
        #expect(hub.refusal == .denied)
        #expect(config.upstreams[1].access == .open)
        let settings = config.serveSettings
        #expect(settings.access["docker.io"] == hub && settings.access["ghcr.io"] == nil)
    }

    @Test func everyBadEntryIsListedWithItsKeyPath() {
        let problems = Self.problems("""
            upstreams:
              - url: https://registry-1.docker.io
                allow: [library/, Library/*]
                deny: myorg/**
                deny_status: 500
            """)
        #expect(problems.contains { $0.hasPrefix("upstreams[0].allow[0]: \"library/\": ends with /") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("upstreams[0].allow[1]: \"Library/*\"") && $0.contains("lowercase") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("upstreams[0].deny: must be a list") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("upstreams[0].deny_status: must be 404 (NAME_UNKNOWN) or 403 (DENIED)") }, "\(problems)")
        #expect(problems.count == 4, "\(problems)")
    }

    @Test func seedAndTheWatchListRefuseADeniedReferenceNamingTheRule() throws {
        let config = try Self.load("""
            upstreams:
              - name: docker.io
                url: https://registry-1.docker.io
                allow: [library/*]
                deny: [library/forbidden]
            watch:
              images: [alpine:3.20, forbidden:1, someone/app:1]
            """)
        let settings = config.serveSettings
        #expect(try settings.resolve("alpine:3.20").repository.name.value == "library/alpine")
        do {
            _ = try settings.resolve("forbidden:1")
            Issue.record("a denied reference resolved")
        } catch {
            #expect(error.code == .accessDenied && error.message.contains("deny pattern \"library/forbidden\""), "\(error.message)")
        }
        do {
            _ = try settings.resolvedWatchImages()
            Issue.record("a watch list with denied references resolved")
        } catch {
            #expect(error.problems.count == 2, "\(error.problems)")
            #expect(error.problems.contains { $0.hasPrefix("watch.images[1].ref:") && $0.contains("deny pattern") }, "\(error.problems)")
            #expect(error.problems.contains { $0.hasPrefix("watch.images[2].ref:") && $0.contains("matches no pattern of upstreams[docker.io].allow") },
                    "\(error.problems)")
        }
        // `pin` and `export` read the cache the operator holds: they are not refused.
        #expect(try settings.resolve("forbidden:1", anyHost: true).repository.name.value == "library/forbidden")
    }

    @Test func metricsListenIsCheckedAndDistinctFromListen() throws {
        #expect(try Self.load("metrics:\n  listen: 127.0.0.1:9090\n").serveSettings.metricsListen! == ("127.0.0.1", 9090))
        #expect(try Self.load("listen: 0.0.0.0:5000\n").serveSettings.metricsListen == nil)
        #expect(try Self.load("", environment: ["REGISTRY_MIRROR_METRICS_LISTEN": "[::1]:9091"]).metricsListen == "[::1]:9091")
        #expect(Self.problems("metrics:\n  listen: 9090\n") == ["metrics.listen: must be HOST:PORT, got \"9090\""])
        #expect(Self.problems("listen: 0.0.0.0:5000\nmetrics:\n  listen: 0.0.0.0:5000\n").first?.contains("is the main listen address") == true)
    }
}

/// The gate itself, in process: a refused repository costs no upstream call and no cache
/// read, whatever entry the request comes by.
@Suite struct RepositoryAccessGateTests {
    static func gated(_ f: PolicyFixture, _ access: RepositoryAccess) -> PullThroughRegistry {
        PullThroughRegistry(local: f.registry.local, upstreams: [f.upstream], access: [f.upstream.name: access],
                            logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
    }

    @Test func aDeniedRepositoryAsksNothingAndServesNothingCached() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let image = f.putImage(in: "lib/secret", tag: "1", layer: "s")
        f.putImage(in: "lib/open", tag: "1", layer: "o")
        // Cached before the rule existed.
        _ = try await f.tag("lib/secret", "1")
        for blob in image.blobs { _ = try await LocalRegistry.size(of: try await f.registry.blob(try f.key("lib/secret"), blob).reader, blob) }
        let kinds = ["manifestHead", "manifestGet", "blobHead", "blobGet", "blobRange", "tags", "referrers"]
        func upstreamCalls(_ repository: String) -> Int { kinds.reduce(0) { $0 + f.upstream.calls["\($1) \(repository)"] } }
        let before = upstreamCalls("lib/secret")
        let tag = try Tag(parsing: "1")

        for (refusal, code) in [(RepositoryAccess.Refusal.nameUnknown, MirrorError.Code.nameUnknown), (.denied, .accessDenied)] {
            let registry = Self.gated(f, RepositoryAccess(deny: [try RepositoryPattern(parsing: "lib/secret")], refusal: refusal))
            let key = try f.key("lib/secret")
            let calls: [(String, () async throws -> Void)] = [
                ("manifest by tag", { _ = try await registry.manifest(key, .tag(tag)) }),
                ("manifest by digest", { _ = try await registry.manifest(key, .digest(image.manifest)) }),
                ("revalidate", { _ = try await registry.revalidate(key, tag) }),
                ("blob", { _ = try await registry.blob(key, image.blobs[1]) }),
                ("blob range", { _ = try await registry.blob(key, image.blobs[1], range: RangeRequest(header: "bytes=0-1")) }),
                ("blob size", { _ = try await registry.blobSize(key, image.blobs[1]) }),
                ("tags", { _ = try await registry.tags(key) }),
                ("referrers", { _ = try await registry.referrers(key, image.manifest) }),
            ]
            for (what, call) in calls {
                do {
                    try await call()
                    Issue.record("\(what) of a denied repository was served")
                } catch let error as MirrorError {
                    #expect(error.code == code, "\(what): \(error)")
                    #expect(!error.message.contains("deny") && !error.message.contains("pattern"), "the client is not told the rule: \(error.message)")
                }
            }
            _ = try await registry.manifest(try f.key("lib/open"), .tag(tag))
        }
        #expect(upstreamCalls("lib/secret") == before, "a denied repository reached the upstream")
        #expect(upstreamCalls("lib/open") >= 1, "an allowed one did")
    }
}

/// Every route of a denied repository answers with the spec's envelope, its cached content
/// unread: 404 `NAME_UNKNOWN` by default, 403 `DENIED` with `deny_status: 403`.
@Suite(.serialized) struct RepositoryAccessHTTPTests {
    @Test(arguments: [(RepositoryAccess.Refusal.nameUnknown, HTTPResponse.Status.notFound, "NAME_UNKNOWN"), (.denied, .forbidden, "DENIED")])
    func everyRouteOfADeniedRepositoryIsRefused(_ refusal: RepositoryAccess.Refusal, _ status: HTTPResponse.Status, _ code: String) async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let manifest = f.single.manifest.digest
        let blob = f.single.blobs[1].digest
        let access = RepositoryAccess(allow: [try RepositoryPattern(parsing: "test/*")], deny: [try RepositoryPattern(parsing: "test/single")],
                                      refusal: refusal)
        try await f.test({ $0.access["docker.io"] = access }) { client in
            let paths = ["manifests/v1", "manifests/\(manifest)", "blobs/\(blob)", "tags/list", "referrers/\(manifest)"]
            for path in paths {
                for method in [HTTPRequest.Method.get, .head] {
                    for prefix in ["/v2/test/single/", "/v2/docker.io/test/single/"] {
                        let r = try await client.execute(uri: prefix + path, method: method, headers: [.range: "bytes=0-9"])
                        #expect(r.status == status, "\(method) \(prefix)\(path): \(r.status)")
                        #expect(r.headers[.contentType] == "application/json")
                        if method == .get {
                            #expect(try envelopeCode(r) == code, "\(prefix)\(path)")
                        } else {
                            #expect(r.body.readableBytes == 0)
                        }
                    }
                }
            }
            let allowed = try await client.execute(uri: "/v2/test/multi/manifests/v1", method: .get)
            #expect(allowed.status == .ok, "an allowed repository beside it is served")
        }
        // Without an allow list entry: not allowed is refused the same way.
        try await f.test({ $0.access["docker.io"] = RepositoryAccess(allow: [try! RepositoryPattern(parsing: "other/**")], refusal: refusal) }) { client in
            let r = try await client.execute(uri: "/v2/test/multi/manifests/v1", method: .get)
            #expect(r.status == status)
            #expect(try envelopeCode(r) == code)
        }
    }
}
