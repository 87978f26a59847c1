import Foundation
import Logging
import Mirror
import OCI
import RegistryMirror
import Testing

@Suite struct ConfigurationTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// Every config/*.yaml, with its /etc/registry-mirror/ files staged (see `ShippedFiles.stage`).
    @Test func everyShippedConfigLoads() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let files = try ShippedFiles.configs()
        #expect(files.count >= 6)
        for file in files {
            let config = try MirrorConfiguration.load(file: try ShippedFiles.stageConfig(file, in: dir), environment: [:])
            if file == "registry-mirror.yaml" {
                #expect(config == MirrorConfiguration(), "the commented reference file shows the defaults")
            }
        }
    }

    /// `--tag-ttl` sets only the TTL: an upstream's other policies from the file stay.
    @Test func tagTTLFlagKeepsTheOtherPolicies() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/policies.yaml"
        try """
        upstreams:
          - name: docker.io
            url: https://registry-1.docker.io
            tag_ttl: 10m
            stale_if_error: false
            rate_limit_reserve: 3
          - name: ghcr.io
            url: https://ghcr.io
        """.write(toFile: file, atomically: true, encoding: .utf8)
        var settings = try MirrorConfiguration.load(file: file, environment: [:]).serveSettings
        settings.overrideTagTTL(.seconds(30))
        let hub = try #require(settings.policies["docker.io"])
        #expect(hub.tagTTL == .seconds(30))
        #expect(hub.staleIfError == false, "--tag-ttl turned stale-if-error back on")
        #expect(hub.rateLimitReserve == 3)
        #expect(settings.policies["ghcr.io"]?.tagTTL == .seconds(30))
        #expect(settings.policies["ghcr.io"]?.staleIfError == true)
    }

    /// Each example sets up what its comments say, routing included.
    @Test func examplesConfigureTheirScenario() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        func load(_ name: String) throws -> MirrorConfiguration {
            try MirrorConfiguration.load(file: try ShippedFiles.stageConfig(name, in: dir), environment: [:])
        }
        let hub = try load("docker-hub.yaml")
        #expect(hub.maxSize == 200 << 30)
        #expect(hub.upstreams.map(\.name) == ["docker.io"] && hub.upstreams[0].url == "https://registry-1.docker.io")
        #expect(hub.logFormat == .json)

        let postgres = try load("postgres-index.yaml")
        #expect(postgres.index.backend == .postgres)
        #expect(postgres.index.postgres?.host == "db.example" && postgres.index.postgres?.database == "mirror")
        #expect(postgres.index.postgres?.password == ShippedFiles.standInPassword, "the password comes from password_file")
        #expect(postgres.serveSettings.index == postgres.index)
        #expect(!"\(postgres.index)".contains(ShippedFiles.standInPassword), "printing the index settings never shows the password")
        let tls = try load("tls.yaml")
        #expect(tls.tls?.certificate.hasSuffix("/etc/tls.crt") == true && tls.tls?.key.hasSuffix("/etc/tls.key") == true)
        #expect(tls.tls?.clientCA == nil, "mutual TLS is shown commented out")

        let multi = try load("multi-upstream.yaml")
        #expect(multi.upstreams.map(\.name) == ["docker.io", "ghcr.io", "quay.io"])
        let router = multi.serveSettings.upstreamRouter
        let byNamespace = try router.route(path: "org/app", namespace: "ghcr.io")
        #expect(byNamespace.upstream == "ghcr.io" && byNamespace.name.description == "org/app")
        let byPath = try router.route(path: "quay.io/prometheus/node-exporter", namespace: nil)
        #expect(byPath.upstream == "quay.io" && byPath.name.description == "prometheus/node-exporter")
        let byDefault = try router.route(path: "alpine", namespace: nil)
        #expect(byDefault.upstream == "docker.io" && byDefault.name.description == "library/alpine")

        let priv = try load("private-upstream.yaml")
        let corp = try #require(priv.upstreams.first)
        #expect(corp.username == "mirror-robot" && corp.password == ShippedFiles.standInPassword)
        #expect(corp.caFile?.hasSuffix("/corp-ca.pem") == true && !corp.insecure)
        #expect(corp.tagTTL == .seconds(60) && corp.lowSpeedLimit == 10 << 10)

        let gapped = try load("air-gapped.yaml")
        #expect(gapped.offline && gapped.maxSize == nil)
        #expect(try gapped.serveSettings.upstreamRouter.route(path: "ghcr.io/org/app", namespace: nil).upstream == "ghcr.io")

        let auth = try load("client-auth.yaml")
        #expect(auth.htpasswdPath?.hasSuffix("/htpasswd") == true && auth.htpasswdRealm == "registry-mirror")

        let allowList = try load("allow-list.yaml")
        let rules = try #require(allowList.serveSettings.access["docker.io"])
        #expect(allowList.metricsListen == "127.0.0.1:9090" && allowList.htpasswdPath != nil)
        #expect(rules.verdict(for: try RepositoryName(parsing: "library/nginx")) == .allowed)
        #expect(rules.verdict(for: try RepositoryName(parsing: "myorg/team/app")) == .allowed)
        #expect(rules.verdict(for: try RepositoryName(parsing: "myorg/secret/keys")) != .allowed)
        #expect(rules.verdict(for: try RepositoryName(parsing: "someone/miner")) == .notAllowed)
    }

    /// `registry-mirror config check` (the CLI operators run) accepts every shipped config.
    @Test func configCheckAcceptsEveryShippedConfig() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for file in try ShippedFiles.configs() {
            let staged = try ShippedFiles.stageConfig(file, in: dir)
            let result = try Tools.mirror(["config", "check", staged])
            #expect(result.status == 0 && result.stdout.contains("\(staged): ok"), "\(file): \(result)")
        }
    }

    /// A config with a problem in every section is refused, and each problem is named by its key path.
    @Test func configCheckListsEveryProblem() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/bad.yaml"
        try """
        listen: 5000
        log:
          level: loud
          format: xml
        auth:
          htpasswd:
            path: \(dir.path)/no-such-htpasswd
        http:
          sendfile: maybe
        storage:
          max_size: lots
          eviction_interval: never
        offline: perhaps
        default_upstream: gcr.io
        upstreams:
          - name: docker.io
            url: https://registry-1.docker.io
            tag_ttl: forever
            prefetch_platforms: [linux]
            colour: blue
          - name: private
            url: https://registry.example
            username: robot
            password_file: \(dir.path)/no-such-password
            ca_file: \(dir.path)/no-such-ca.pem
            insecure: sometimes
            low_speed_limit: fast
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let result = try Tools.mirror(["config", "check", file])
        #expect(result.status != 0, "\(result)")
        let expected = [
            "listen:", "log.level:", "log.format:", "auth.htpasswd.path:", "http.sendfile:", "storage.max_size:",
            "storage.eviction_interval:", "offline:", "default_upstream:", "upstreams[0].tag_ttl:",
            "upstreams[0].prefetch_platforms[0]:", "upstreams[0].colour: unknown key", "upstreams[1].password_file:",
            "upstreams[1]: username and password_file",
            "upstreams[1].ca_file:", "upstreams[1].insecure:", "upstreams[1].low_speed_limit:",
        ]
        let lines = result.stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        for key in expected {
            #expect(lines.contains { $0.hasPrefix("- " + key) }, "\(key) is not reported: \(result.stderr)")
        }
        #expect(result.stderr.contains("(\(expected.count) problems)"), "\(result.stderr)")
    }

    @Test func everyProblemIsListedWithItsKeyPath() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/bad.yaml"
        try """
        listen: nowhere
        data_dir: /x
        lgo:
          level: info
        log:
          level: loud
        http:
          sendfile: maybe
        """.write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try MirrorConfiguration.load(file: file, environment: [:])
            Issue.record("a bad configuration was accepted")
        } catch {
            #expect(error.problems.count == 4)
            for key in ["listen:", "lgo.level: unknown key", "log.level:", "http.sendfile:"] {
                #expect(error.problems.contains { $0.hasPrefix(key) }, "\(key) reported")
            }
        }
    }

    @Test func environmentOverridesTheFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/c.yaml"
        try "listen: 127.0.0.1:6000\ndata_dir: /from/file\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try MirrorConfiguration.load(file: file, environment: ["REGISTRY_MIRROR_DATA_DIR": "/from/env"])
        #expect(config.listen == "127.0.0.1:6000")
        #expect(config.dataDirectory == "/from/env")
        #expect(config.serveSettings.port == 6000)
        #expect(config.serveSettings.host == "127.0.0.1")
    }

    @Test func postgresIndexKeysParseAndTheirProblemsAreListed() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/i.yaml"
        try "index:\n  backend: postgres\n  postgres:\n    dsn: postgres://mirror@db:6432/cache\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try MirrorConfiguration.load(file: file, environment: ["REGISTRY_MIRROR_POSTGRES_PASSWORD": "from-env"])
        #expect(config.index.backend == .postgres && config.index.postgres?.port == 6432)
        #expect(config.index.postgres?.password == "from-env", "without password_file, the password comes from the environment")
        #expect(try MirrorConfiguration.load(file: nil, environment: [:]).index == IndexConfiguration(), "sqlite by default")

        try """
        index:
          backend: postgres
          postgres:
            dsn: mysql://db/cache
            password_file: /nonexistent/pg
            max_connections: 0
            connect_timeout: soon
        """.write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try MirrorConfiguration.load(file: file, environment: [:])
            Issue.record("a bad index configuration was accepted")
        } catch {
            for key in ["index.postgres.dsn:", "index.postgres.password_file:", "index.postgres.max_connections:", "index.postgres.connect_timeout:"] {
                #expect(error.problems.contains { $0.hasPrefix(key) }, "\(key) reported: \(error.problems)")
            }
        }
        for (text, key) in [("index:\n  backend: oracle\n", "index.backend:"), ("index:\n  backend: postgres\n", "index.postgres.dsn:"),
                            ("index:\n  postgres:\n    dsn: postgres://u@h/d\n", "index.postgres.dsn: set, but")] {
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            do {
                _ = try MirrorConfiguration.load(file: file, environment: [:])
                Issue.record("\(text) was accepted")
            } catch {
                #expect(error.problems.contains { $0.hasPrefix(key) }, "\(key) reported: \(error.problems)")
            }
        }
    }

    @Test func storageCapAndIntervalParse() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/s.yaml"
        try "storage:\n  max_size: 20GiB\n  eviction_interval: 10s\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try MirrorConfiguration.load(file: file, environment: ["REGISTRY_MIRROR_STORAGE_MAX_SIZE": "500MiB"])
        #expect(config.maxSize == 500 << 20, "the environment overrides the file")
        #expect(config.evictionInterval == .seconds(10))
        #expect(config.serveSettings.maxBytes == 500 << 20)
        try "storage:\n  max_size: lots\n  eviction_interval: never\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { _ = try MirrorConfiguration.load(file: file, environment: [:]) }
    }

    @Test(arguments: [
        ("4096", Int64(4096)), ("500MiB", 500 << 20), ("20GiB", 20 << 30), ("1.5TB", 1_500_000_000_000),
        ("2G", 2 << 30), ("10 MB", 10_000_000), ("1kib", 1024),
    ])
    func sizesParse(_ text: String, _ bytes: Int64) {
        #expect(ByteSize.parse(text) == bytes)
    }

    @Test(arguments: ["", "MiB", "-1GiB", "5 parsecs", "1e30", "99999999999TB"])
    func badSizesAreRefused(_ text: String) {
        #expect(ByteSize.parse(text) == nil)
    }
}

/// docs/configuration.md documents every key the parser knows, each with its variable.
@Suite struct ConfigurationDocTests {
    @Test func everyKeyIsDocumentedWithItsVariable() throws {
        let rows = try ShippedFiles.text("docs/configuration.md").split(separator: "\n").filter { $0.hasPrefix("| `") }
        for (path, variable) in MirrorConfiguration.keys {
            let row = rows.first { $0.hasPrefix("| `\(path)` |") }
            #expect(row != nil, "docs/configuration.md has no row for \(path)")
            #expect(row?.contains("`\(variable)`") == true, "the row for \(path) does not name \(variable)")
        }
        for key in MirrorConfiguration.Upstream.keys.sorted() {
            #expect(rows.contains { $0.hasPrefix("| `\(key)` |") }, "docs/configuration.md has no row for upstreams[].\(key)")
        }
        #expect(rows.contains { $0.hasPrefix("| `upstreams` |") })
        // No row for a key the parser does not know: documentation must not promise what is refused.
        for key in WatchEntry.keys.sorted() {
            #expect(rows.contains { $0.hasPrefix("| `\(key)` |") }, "docs/configuration.md has no row for watch.images[].\(key)")
        }
        let known = Set(MirrorConfiguration.keys.map(\.path)).union(MirrorConfiguration.Upstream.keys).union(WatchEntry.keys)
            .union(["upstreams", "watch.images"])
        for row in rows {
            let key = row.dropFirst(3).prefix { $0 != "`" }
            #expect(known.contains(String(key)), "docs/configuration.md documents an unknown key \(key)")
        }
    }
}

/// `storage.backend` and `storage.s3.*`: what they set, and what they refuse.
@Suite struct StorageBackendConfigurationTests {
    func load(_ yaml: String, environment: [String: String] = [:]) throws -> MirrorConfiguration {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try yaml.write(toFile: dir.path + "/c.yaml", atomically: true, encoding: .utf8)
        return try MirrorConfiguration.load(file: dir.path + "/c.yaml", environment: environment)
    }

    @Test func theShippedS3ExampleNamesABucket() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = try MirrorConfiguration.load(file: try ShippedFiles.stageConfig("s3-storage.yaml", in: dir), environment: [:])
        let s3 = try #require(config.serveSettings.s3Storage)
        #expect(s3.endpoint.absoluteString == "http://minio.internal:9000")
        #expect(s3.bucket == "registry-mirror" && s3.prefix == "mirror" && s3.pathStyle && s3.region == "us-east-1")
        #expect(s3.credentialsFile == dir.path + "/etc/s3-credentials")
        #expect(MirrorConfiguration().s3Storage == nil, "the default is the data directory")
    }

    @Test func theEnvironmentSelectsS3() throws {
        let config = try load("data_dir: /x\n", environment: [
            "REGISTRY_MIRROR_STORAGE_BACKEND": "s3", "REGISTRY_MIRROR_STORAGE_S3_ENDPOINT": "https://s3.eu-west-1.amazonaws.com",
            "REGISTRY_MIRROR_STORAGE_S3_BUCKET": "b", "REGISTRY_MIRROR_STORAGE_S3_REGION": "eu-west-1",
        ])
        #expect(config.s3Storage?.region == "eu-west-1")
        #expect(config.s3Storage?.pathStyle == false)
    }

    @Test("redirects and the upload sweep: off and 20 m, 24 h and 1 h by default; set from the file or the environment")
    func redirectAndSweepSettings() throws {
        let defaults = try #require(try load("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b}\n").s3Storage)
        #expect(!defaults.redirect && defaults.redirectExpiry == .seconds(1200))
        #expect(defaults.uploadSweepAge == .seconds(86400) && defaults.uploadSweepInterval == .seconds(3600))
        let set = try #require(try load(
            "storage:\n  backend: s3\n  s3:\n    endpoint: http://x:9000\n    bucket: b\n    redirect: true\n    redirect_expiry: 5m\n"
                + "    upload_sweep: {older_than: 6h, interval: 0}\n",
            environment: ["REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_OLDER_THAN": "2h"]).s3Storage)
        #expect(set.redirect && set.redirectExpiry == .seconds(300))
        #expect(set.uploadSweepAge == .seconds(7200), "the environment wins over the file")
        #expect(set.uploadSweepInterval == .zero)
    }

    @Test func badStorageSettingsAreProblems() throws {
        let cases: [(String, String)] = [
            ("storage:\n  backend: tape\n", "storage.backend:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"ftp://x\", bucket: b}\n", "storage.s3.endpoint:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000/path\", bucket: b}\n", "storage.s3.endpoint:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\"}\n", "storage.s3.bucket:"),
            ("storage:\n  s3: {endpoint: \"http://x:9000\", bucket: b}\n", "storage.s3.bucket, storage.s3.endpoint: set only with storage.backend: s3"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, credentials_file: /nonexistent/creds}\n", "storage.s3.credentials_file:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, path_style: sometimes}\n", "storage.s3.path_style:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, redirect: maybe}\n", "storage.s3.redirect:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, redirect_expiry: 8d}\n", "storage.s3.redirect_expiry:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, redirect_expiry: 169h}\n", "storage.s3.redirect_expiry:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, redirect_expiry: 0s}\n", "storage.s3.redirect_expiry:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, upload_sweep: {older_than: 0s}}\n", "storage.s3.upload_sweep.older_than:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, upload_sweep: {interval: often}}\n", "storage.s3.upload_sweep.interval:"),
            ("storage:\n  backend: s3\n  s3: {endpoint: \"http://x:9000\", bucket: b, upload_sweep: {after: 1h}}\n", "storage.s3.upload_sweep.after: unknown"),
        ]
        for (yaml, problem) in cases {
            do {
                _ = try load(yaml)
                Issue.record("accepted: \(yaml)")
            } catch let error as ConfigurationError {
                #expect(error.problems.contains { $0.hasPrefix(problem) }, "\(yaml): \(error.problems)")
            }
        }
    }
}
