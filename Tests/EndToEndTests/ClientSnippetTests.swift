import Foundation
import OCI
import Testing
import Yams

/// The client setups of docs/clients.md, read out of the page itself so that it cannot drift
/// from what is tested: podman and skopeo pull through the mirror with its registries.conf,
/// containerd's `?ns=` routing is sent by hand (no containerd here), and every other snippet
/// is at least parsed.
@Suite("docs/clients.md snippets", .serialized)
struct ClientSnippetTests {
    @Test("podman and skopeo pull docker.io, ghcr.io and quay.io images by their own names through the mirror")
    func registriesConfPullsThroughTheMirror() async throws {
        _ = try TestPaths.executable("podman")
        try await PullThroughScope.run("client-snippets") { scope in
            // Local registries stand in for Docker Hub and for ghcr.io/quay.io; the mirror gives
            // them those names, so routing and cache keys are as in production.
            let hub = try await scope.registry()
            let other = try await scope.registry()
            let images: [(upstream: DistributionRegistry, name: String, seed: UInt64)] = [
                (hub, "library/hello", 601), (hub, "library/world", 602), (other, "org/app", 603), (other, "team/tool", 604),
            ]
            var held: [String: PullThroughUpstreamImage] = [:]
            for (upstream, name, seed) in images {
                try await scope.push(try scope.singleImage(seed: seed), to: upstream.host, name)
                held[name] = try PullThroughHTTP.upstreamImage(port: upstream.port, name, tag: "v1")
            }
            let data = scope.unique("clients-data")
            let mirror = try await scope.mirrorOn(data, [
                "--upstream", "docker.io=http://\(hub.host)", "--upstream", "ghcr.io=http://\(other.host)",
                "--upstream", "quay.io=http://\(other.host)",
            ])

            // The two registries.conf snippets, as an operator would concatenate them.
            let text = try ["registries-docker-hub", "registries-path-prefix"].map(ClientDocs.snippet).joined(separator: "\n")
                .replacingOccurrences(of: "MIRROR:5000", with: mirror.host)
            try #require(!text.contains("MIRROR"), "a placeholder is left: \(text)")
            let conf = scope.unique("registries").appendingPathExtension("conf")
            try text.write(to: conf, atomically: true, encoding: .utf8)
            // The page says how each tool is pointed at such a file; the test does the same.
            let env = try ClientDocs.snippet("podman-skopeo-env")
            #expect(env.contains("export CONTAINERS_REGISTRIES_CONF=") && env.contains("skopeo --registries-conf "), "\(env)")

            /// Pulls `reference` by its original name and checks the mirror fetched it from
            /// `upstream` and cached it under `cached`. Had the mirror not served it, the tool
            /// would have gone to the real registry, which this machine cannot reach.
            func expectServedByMirror(_ pull: CommandResult, _ upstream: DistributionRegistry, since mark: Int,
                                      _ name: String, cached: String) async throws {
                try #require(pull.succeeded, "\(pull.summary)\n--- mirror ---\n\(mirror.stderr.suffix(4000))")
                let asked = await upstream.requests(since: mark)
                // The mirror resolves the tag (a HEAD), then fetches by digest.
                #expect(asked.contains { $0.path == "/v2/\(name)/manifests/v1" && $0.status == 200 }, "\(asked)")
                #expect(asked.contains { $0.method == "GET" && $0.path.contains("/v2/\(name)/blobs/") }, "\(asked)")
                let ls = try await MirrorCLI.list(dataDirectory: data)
                let digest = try #require(held[name]).rootDigest
                #expect(ls.stdout.split(separator: "\n").contains { $0.hasPrefix(cached + " ") && $0.contains(digest.description) },
                        "\(cached) \(digest) is not cached:\n\(ls.stdout)")
            }

            let podman = try PodmanClient(scope.work)
            var mark = hub.requests.count
            try await expectServedByMirror(try await podman.run(registriesConf: conf.path, ["pull", "docker.io/library/hello:v1"]), hub, since: mark,
                                           "library/hello", cached: "docker.io/library/hello:v1")
            let digest = try await podman.run(registriesConf: conf.path, ["image", "inspect", "--format", "{{.Digest}}", "docker.io/library/hello:v1"])
            #expect(digest.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == held["library/hello"]?.rootDigest.description, "\(digest.summary)")
            mark = other.requests.count
            try await expectServedByMirror(try await podman.run(registriesConf: conf.path, ["pull", "ghcr.io/org/app:v1"]), other, since: mark,
                                           "org/app", cached: "ghcr.io/org/app:v1")

            func skopeo(_ reference: String) async throws -> CommandResult {
                try await Command.run("skopeo", ["--registries-conf", conf.path, "copy", "docker://\(reference)", "oci:\(scope.unique("skopeo").path):v1"])
            }
            mark = hub.requests.count
            try await expectServedByMirror(try await skopeo("docker.io/library/world:v1"), hub, since: mark,
                                           "library/world", cached: "docker.io/library/world:v1")
            mark = other.requests.count
            try await expectServedByMirror(try await skopeo("quay.io/team/tool:v1"), other, since: mark,
                                           "team/tool", cached: "quay.io/team/tool:v1")

            // What containerd sends for the hosts.toml snippets: the repository without a host,
            // and the registry in ?ns=. The mirror routes by it, and by nothing else here.
            for (namespace, name) in [("docker.io", "library/hello"), ("ghcr.io", "org/app"), ("quay.io", "team/tool")] {
                let response = try PullThroughHTTP.manifest(port: mirror.port, "/v2/\(name)/manifests/v1?ns=\(namespace)")
                #expect(response.status == 200 && response.header("Docker-Content-Digest") == held[name]?.rootDigest.description,
                        "?ns=\(namespace) \(name): \(response)")
            }
            let wrong = try PullThroughHTTP.manifest(port: mirror.port, "/v2/org/app/manifests/v1?ns=docker.io")
            #expect(wrong.status == 404, "org/app is not Docker Hub's: \(wrong)")
        }
    }

    @Test("every snippet of docs/clients.md parses, and the containerd and BuildKit ones point at the mirror")
    func everySnippetParses() async throws {
        let snippets = try ClientDocs.all()
        #expect(snippets.count >= 14, "\(snippets.map(\.name))")
        for snippet in snippets {
            switch snippet.language {
            case "json":
                let object = try JSONSerialization.jsonObject(with: Data(snippet.text.utf8)) as? [String: Any]
                #expect(object?["registry-mirrors"] as? [String] == ["http://MIRROR:5000"], "\(snippet.name)")
                #expect(object?["insecure-registries"] as? [String] == ["MIRROR:5000"], "\(snippet.name)")
            case "yaml":
                #expect(try Yams.load(yaml: snippet.text) != nil, "\(snippet.name)")
            case "sh":
                let check = try await Command.run("bash", ["-n", "-c", snippet.text])
                #expect(check.succeeded, "\(snippet.name): \(check.summary)")
            case "toml":
                break  // everyTOMLSnippetParses
            default:
                Issue.record("\(snippet.name): a snippet in \(snippet.language) is not checked")
            }
        }
        // YAML that carries TOML: kind's containerd patch and BuildKit's registry section.
        let kind = try #require(try Yams.load(yaml: try ClientDocs.snippet("kind-config")) as? [String: Any])
        let patch = try #require((kind["containerdConfigPatches"] as? [String])?.first)
        #expect(patch.contains(#"config_path = "/etc/containerd/certs.d""#))
        let mounts = try #require(((kind["nodes"] as? [[String: Any]])?.first?["extraMounts"]) as? [[String: Any]])
        #expect(mounts.contains { $0["containerPath"] as? String == "/etc/containerd/certs.d" })
        let k3s = try #require(try Yams.load(yaml: try ClientDocs.snippet("k3s-registries")) as? [String: Any])
        for host in ["docker.io", "ghcr.io", "quay.io"] {
            #expect(((k3s["mirrors"] as? [String: Any])?[host] as? [String: Any])?["endpoint"] as? [String] == ["http://MIRROR:5000"], "\(host)")
        }
    }

    @Test("every TOML snippet parses, and the containerd hosts.toml files point at the mirror",
          .enabled(if: ClientDocs.tomlReader != nil, "no TOML parser: python3 3.11+ (tomllib) is not installed"))
    func everyTOMLSnippetParses() async throws {
        var tomls = try ClientDocs.all().filter { $0.language == "toml" }.map { ($0.name, $0.text) }
        let buildx = try #require(try Yams.load(yaml: try ClientDocs.snippet("github-buildx")) as? [[String: Any]])
        tomls.append(("github-buildx (buildkitd-config-inline)", try #require((buildx.first?["with"] as? [String: Any])?["buildkitd-config-inline"] as? String)))
        let kind = try #require(try Yams.load(yaml: try ClientDocs.snippet("kind-config")) as? [String: Any])
        tomls.append(("kind-config (containerdConfigPatches)", try #require((kind["containerdConfigPatches"] as? [String])?.first)))
        var parsed: [String: [String: Any]] = [:]
        for (name, text) in tomls {
            parsed[name] = try await ClientDocs.parseTOML(text, name: name)
        }
        for (host, server) in [("docker-io", "https://registry-1.docker.io"), ("ghcr-io", "https://ghcr.io"), ("quay-io", "https://quay.io")] {
            let file = try #require(parsed["containerd-\(host)"])
            #expect(file["server"] as? String == server)
            let mirror = (file["host"] as? [String: Any])?["http://MIRROR:5000"] as? [String: Any]
            #expect(mirror?["capabilities"] as? [String] == ["pull", "resolve"], "containerd-\(host): \(file)")
        }
        let buildkit = try #require(parsed["github-buildx (buildkitd-config-inline)"]?["registry"] as? [String: Any])
        for host in ["docker.io", "ghcr.io", "quay.io"] {
            #expect((buildkit[host] as? [String: Any])?["mirrors"] as? [String] == ["MIRROR:5000"], "\(host)")
        }
        #expect((buildkit["MIRROR:5000"] as? [String: Any])?["http"] as? Bool == true)
    }

    @Test("the container image's HEALTHCHECK passes against a live mirror and fails without one")
    func dockerfileHealthcheckWorks() async throws {
        let command = try ClientDocs.dockerfileHealthcheck()
        guard command.contains("/dev/tcp/127.0.0.1/5000") else { throw E2EError("the HEALTHCHECK no longer probes 127.0.0.1:5000: \(command)") }
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-healthcheck")
        let mirror = try await MirrorProcess.start(dataDirectory: work.url.appendingPathComponent("data"), logDirectory: work.url)
        let probe = command.replacingOccurrences(of: "/dev/tcp/127.0.0.1/5000", with: "/dev/tcp/127.0.0.1/\(mirror.port)")
        // Docker runs a shell-form HEALTHCHECK with /bin/sh -c.
        let healthy = try await Command.run("/bin/sh", ["-c", probe], timeout: .seconds(10))
        await mirror.stop()
        #expect(healthy.succeeded, "\(healthy.summary)")
        let gone = try await Command.run("/bin/sh", ["-c", probe], timeout: .seconds(10))
        #expect(!gone.succeeded, "the health check passed with no server")
    }
}

extension PodmanClient {
    /// `podman ARGS…` with CONTAINERS_REGISTRIES_CONF, as docs/clients.md tells a CI job to set it.
    func run(registriesConf: String, _ arguments: [String]) async throws -> CommandResult {
        try await Command.run("podman", common + arguments, environment: environment.merging(["CONTAINERS_REGISTRIES_CONF": registriesConf]) { $1 })
    }
}

/// Snippets of docs/clients.md: a `<!-- snippet: NAME -->` line, then a fenced block.
enum ClientDocs {
    struct Snippet {
        let name: String
        let language: String
        let text: String
    }

    static func all() throws -> [Snippet] {
        let lines = try String(contentsOf: TestPaths.packageRoot.appendingPathComponent("docs/clients.md"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false)
        var out: [Snippet] = []
        for (i, line) in lines.enumerated() where line.hasPrefix("<!-- snippet: ") {
            let name = line.dropFirst("<!-- snippet: ".count).prefix { $0 != " " }
            guard i + 1 < lines.count, lines[i + 1].hasPrefix("```"),
                  let end = lines[(i + 2)...].firstIndex(where: { $0 == "```" }) else {
                throw E2EError("docs/clients.md: snippet \(name) is not followed by a fenced block")
            }
            out.append(Snippet(name: String(name), language: String(lines[i + 1].dropFirst(3)),
                               text: lines[(i + 2)..<end].joined(separator: "\n") + "\n"))
        }
        return out
    }

    static func snippet(_ name: String) throws -> String {
        let matches = try all().filter { $0.name == name }
        guard matches.count == 1 else { throw E2EError("docs/clients.md has \(matches.count) snippets named \(name)") }
        return matches[0].text
    }

    /// python3's tomllib (3.11+), the one TOML parser at hand.
    static let tomlReader: String? = {
        guard let python = try? TestPaths.executable("python3") else { return nil }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", "import tomllib"]
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        process.waitUntilExit()
        return process.terminationStatus == 0 ? python : nil
    }()

    /// The TOML as JSON objects, through tomllib.
    static func parseTOML(_ text: String, name: String) async throws -> [String: Any] {
        guard let python = tomlReader else { throw E2EError("no TOML parser (python3 3.11+ with tomllib)") }
        let script = "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.argv[1])))"
        let result = try await Command.run(python, ["-c", script, text], timeout: .seconds(30))
        guard result.succeeded, let object = try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any] else {
            throw E2EError("\(name) is not valid TOML: \(result.summary)")
        }
        return object
    }

    /// The shell-form command of deploy/Dockerfile's HEALTHCHECK, continuation lines joined.
    static func dockerfileHealthcheck() throws -> String {
        let text = try String(contentsOf: TestPaths.packageRoot.appendingPathComponent("deploy/Dockerfile"), encoding: .utf8)
        let joined = text.replacingOccurrences(of: "\\\n", with: " ")
        guard let line = joined.split(separator: "\n").first(where: { $0.hasPrefix("HEALTHCHECK ") }),
              let cmd = line.range(of: " CMD ") else {
            throw E2EError("deploy/Dockerfile has no shell-form HEALTHCHECK … CMD")
        }
        return line[cmd.upperBound...].trimmingCharacters(in: .whitespaces)
    }
}
