import Foundation
import OCI
import Testing

/// Issue 5's whole configuration at once: three upstreams, Basic client auth and a size cap,
/// with podman and skopeo pulling through it, routed to the right upstream, and `/metrics`
/// and the status page telling what happened.
@Suite("Production configuration", .serialized)
struct ProductionConfigTests {
    static let user = "ci"
    static let password = "s3cret-pull"
    static var creds: String { "\(user):\(password)" }
    static var basic: [(String, String)] { PullThroughHTTP.basic(creds) }

    @Test("three upstreams + Basic auth + a size cap: routed pulls by skopeo and podman, 401 without credentials, metrics and status page")
    func threeUpstreamsWithAuthAndCap() async throws {
        try await PullThroughScope.run("production") { scope in
            // Three real upstreams, each holding its own image.
            let hub = try await scope.registry()
            let ghcr = try await scope.registry()
            let quay = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: 601), to: hub.host, "library/app")
            try await scope.push(try scope.singleImage(seed: 602), to: ghcr.host, "org/tool")
            try await scope.push(try scope.multiImage(seed: 603), to: quay.host, "team/base")
            let hubImage = try PullThroughHTTP.upstreamImage(port: hub.port, "library/app", tag: "v1")
            let ghcrImage = try PullThroughHTTP.upstreamImage(port: ghcr.port, "org/tool", tag: "v1")
            let quayImage = try PullThroughHTTP.upstreamImage(port: quay.port, "team/base", tag: "v1")

            let htpasswd = scope.unique("htpasswd")
            try (try await PullThroughBcrypt.htpasswdLine(user: Self.user, password: Self.password) + "\n").write(to: htpasswd, atomically: true, encoding: .utf8)
            let config = scope.unique("production").appendingPathExtension("yaml")
            try """
            storage:
              max_size: 1GiB
            auth:
              htpasswd:
                path: \(htpasswd.path)
                realm: test-mirror
            upstreams:
              - name: docker.io
                url: http://\(hub.host)
              - name: ghcr.io
                url: http://\(ghcr.host)
              - name: quay.io
                url: http://\(quay.host)
            """.write(to: config, atomically: true, encoding: .utf8)
            let check = try await MirrorCLI.run(["config", "check", config.path])
            #expect(check.succeeded, "\(check.summary)")
            let mirror = try await scope.mirror(["--config", config.path])
            let marks = (hub.requests.count, ghcr.requests.count, quay.requests.count)

            // No credentials, or wrong ones: 401 with the challenge and the envelope; writes stay 405.
            let anonymous = try RawHTTP.get(port: mirror.port, path: "/v2/")
            #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate") == #"Basic realm="test-mirror""#, "\(anonymous)")
            let wrong = try RawHTTP.get(port: mirror.port, path: "/v2/library/app/manifests/v1", headers: PullThroughHTTP.basic("ci:nope"))
            #expect(wrong.status == 401 && String(decoding: wrong.body, as: UTF8.self).contains("UNAUTHORIZED"), "\(wrong)")
            #expect(try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic).status == 200)
            #expect(try RawHTTP.request("DELETE", port: mirror.port, path: "/v2/library/app/manifests/v1", headers: Self.basic).status == 405)
            #expect(try RawHTTP.get(port: mirror.port, path: "/healthz").status == 200, "health probes need no credentials")
            let noCreds = try await Command.run("skopeo", ["inspect", "--tls-verify=false", "docker://\(mirror.host)/library/app:v1"])
            #expect(!noCreds.succeeded && noCreds.stderr.lowercased().contains("unauthorized"), "\(noCreds.summary)")

            // skopeo: the default upstream (Docker Hub's name), and a path prefix.
            let hubCopy = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--src-creds", Self.creds,
                                                           "docker://\(mirror.host)/app:v1", "oci:\(scope.unique("hub").path):v1"])
            #expect(hubCopy.succeeded, "\(hubCopy.summary)")
            let ghcrCopy = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--src-creds", Self.creds,
                                                            "docker://\(mirror.host)/ghcr.io/org/tool:v1", "oci:\(scope.unique("ghcr").path):v1"])
            #expect(ghcrCopy.succeeded, "\(ghcrCopy.summary)")
            // podman: the third upstream by path prefix, one platform of its index.
            let podman = try PodmanClient(scope.work)
            let pull = try await podman.run(["pull", "--tls-verify=false", "--creds", Self.creds, "--platform", "linux/arm64",
                                             "\(mirror.host)/quay.io/team/base:v1"])
            #expect(pull.succeeded, "\(pull.summary)")
            // containerd's ?ns= routes too.
            let byNamespace = try PullThroughHTTP.manifest(port: mirror.port, "/v2/team/base/manifests/v1?ns=quay.io")
            #expect(byNamespace.status == 401, "ns= routing must not bypass auth")
            let nsAuthed = try RawHTTP.get(port: mirror.port, path: "/v2/team/base/manifests/v1?ns=quay.io",
                                           headers: Self.basic + [("Accept", PullThroughHTTP.manifestAccept)])
            #expect(nsAuthed.status == 200 && nsAuthed.body == quayImage.rootBytes, "\(nsAuthed)")

            // Each upstream saw only its own repository.
            let hubSaw = hub.requests.dropFirst(marks.0).map(\.path), ghcrSaw = ghcr.requests.dropFirst(marks.1).map(\.path)
            let quaySaw = quay.requests.dropFirst(marks.2).map(\.path)
            #expect(!hubSaw.isEmpty && hubSaw.allSatisfy { $0 == "/v2/" || $0.hasPrefix("/v2/library/app/") }, "\(hubSaw)")
            #expect(!ghcrSaw.isEmpty && ghcrSaw.allSatisfy { $0 == "/v2/" || $0.hasPrefix("/v2/org/tool/") }, "\(ghcrSaw)")
            #expect(!quaySaw.isEmpty && quaySaw.allSatisfy { $0 == "/v2/" || $0.hasPrefix("/v2/team/base/") }, "\(quaySaw)")

            // A second pull of the hub image is all hits.
            let again = try await Command.run("skopeo", ["copy", "--src-tls-verify=false", "--src-creds", Self.creds,
                                                         "docker://\(mirror.host)/app:v1", "oci:\(scope.unique("hub-again").path):v1"])
            #expect(again.succeeded, "\(again.summary)")

            // /metrics: misses from the cold pulls, hits from the warm one, bytes both ways.
            #expect(try RawHTTP.get(port: mirror.port, path: "/metrics").status == 401)
            let metrics = try RawHTTP.get(port: mirror.port, path: "/metrics", headers: Self.basic)
            try #require(metrics.status == 200, "\(metrics)")
            let text = String(decoding: metrics.body, as: UTF8.self)
            let blobMisses = MetricsText.value(text, #"registry_mirror_cache_requests_total{kind="blob",result="miss"}"#)
            let blobHits = MetricsText.value(text, #"registry_mirror_cache_requests_total{kind="blob",result="hit"}"#)
            let coldBlobs = hubImage.blobs.count + ghcrImage.blobs.count
            #expect(blobMisses >= Double(coldBlobs), "blob misses \(blobMisses) < \(coldBlobs)\n\(text)")
            #expect(blobHits >= Double(hubImage.blobs.count), "blob hits \(blobHits)\n\(text)")
            let served = MetricsText.value(text, "registry_mirror_served_bytes_total")
            let fetched = MetricsText.sum(text, "registry_mirror_upstream_bytes_total{")
            #expect(fetched > 0 && served > fetched, "served \(served), fetched \(fetched): the warm pull saved bytes")
            #expect(MetricsText.value(text, #"registry_mirror_upstream_requests_total{upstream="ghcr.io",status="200"}"#) > 0, "\(text)")
            #expect(text.contains("registry_mirror_store_bytes") && text.contains(#"registry_mirror_http_request_duration_seconds_bucket{route="blob""#))

            // The status page names the upstreams and the cap.
            let page = try RawHTTP.get(port: mirror.port, path: "/", headers: Self.basic)
            let html = String(decoding: page.body, as: UTF8.self)
            #expect(page.status == 200 && page.header("Content-Type")?.hasPrefix("text/html") == true)
            for name in ["docker.io", "ghcr.io", "quay.io", "1.0 GiB cap", "docker.io/library/app"] {
                #expect(html.contains(name), "the status page lacks \(name)")
            }
        }
    }
}

/// Reads samples out of Prometheus text format.
enum MetricsText {
    /// The value of the sample whose name-and-labels text is exactly `series`; 0 when absent.
    static func value(_ text: String, _ series: String) -> Double {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1)) ?? 0
        }
        return 0
    }

    /// The sum of every sample whose line starts with `prefix`.
    static func sum(_ text: String, _ prefix: String) -> Double {
        text.split(separator: "\n").filter { $0.hasPrefix(prefix) }.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
    }
}
