import Foundation
import Logging
import Mirror
import OCI
import RegistryServer
import Upstream
import Yams

/// The mirror's configuration: embedded defaults, then a YAML file, then `REGISTRY_MIRROR_*`
/// environment variables; command-line flags are applied last by the caller.
///
/// Validation collects every problem, with its key path, before failing, so an operator
/// fixes a file in one pass. Unknown keys are errors: a typo must not silently fall back
/// to a default. Every key is listed, with its default, in `config/registry-mirror.yaml`.
public struct MirrorConfiguration: Sendable, Equatable {
    public var listen = "0.0.0.0:5000"
    public var dataDirectory = "data"
    public var logLevel = Logger.Level.info
    /// `log.format`: `text` (logfmt-style key=value lines) or `json` (one object per line).
    public var logFormat = LogFormat.text
    /// `auth.htpasswd.path`: require HTTP Basic credentials from this htpasswd file (bcrypt
    /// entries, as `htpasswd -B` writes them). Nil: no client authentication.
    public var htpasswdPath: String?
    /// `auth.htpasswd.realm`: the realm in the `WWW-Authenticate` challenge.
    public var htpasswdRealm = "registry-mirror"
    /// `auth.failures.limit` wrong passwords per client address in `auth.failures.window`,
    /// then 429 until the allowance refills. 0: no limit.
    public var authFailureLimit = 10
    public var authFailureWindow: Duration = .seconds(60)
    /// `auth.hashing.threads`: threads that run bcrypt, off the request path.
    public var hashingThreads = 1
    /// `auth.hashing.max_waiting`: logins that may wait for those threads; more get 429.
    public var hashingMaxWaiting = 32
    /// `http.idle_timeout`: close a keep-alive connection idle this long (never one mid-response).
    public var idleTimeout: Duration = .seconds(75)
    /// `http.sendfile`: send blob files with sendfile(2).
    public var sendfile = true
    /// `http.max_connections`: client connections beyond this are closed at once. Nil: derived
    /// from the open-file limit (see `DescriptorLimit.defaultMaxConnections`).
    public var maxConnections: Int?
    /// `metrics.listen`: also serve `/metrics`, without client auth, on this HOST:PORT. Nil: only
    /// on the main listener (behind `auth.htpasswd` when that is set).
    public var metricsListen: String?
    /// `http.tls.certificate`, `http.tls.key`, `http.tls.client_ca`: serve HTTPS (TLS 1.2 and 1.3)
    /// with these PEM files, re-read when they change. Nil: plain HTTP.
    public var tls: TLSFiles?
    /// `upstreams`: every upstream, in order. The embedded default is Docker Hub alone.
    public var upstreams: [Upstream] = [Upstream(name: "docker.io", url: "https://registry-1.docker.io")]
    /// `default_upstream`: the upstream for requests that name none. Default: the first.
    public var defaultUpstream: String?
    /// `offline`: never contact an upstream.
    public var offline = false
    /// `storage.max_size`: evict least recently used content above this many bytes. Nil: no cap.
    public var maxSize: Int64?
    /// `storage.eviction_interval`: how often the store size is checked (also after each fill).
    public var evictionInterval: Duration = .seconds(30)
    /// `storage.min_free_space`: `/readyz` says not ready while the store's filesystem has less free. 0: no floor.
    public var minFreeSpace: Int64 = 1 << 30
    /// `storage.backend: s3` and `storage.s3.*` (see `S3StorageSettings`). Nil: the data directory.
    public var s3Storage: S3StorageSettings?
    /// `fleet.*`: this mirror is one replica of a fleet (see `FleetSettings`). Nil: a single node.
    public var fleet: FleetSettings?
    /// `watch.interval`: how often the watch list is refreshed.
    public var watchInterval = MirrorConfiguration.defaultWatchInterval
    /// `watch.images`: images the server keeps fresh on that schedule.
    public var watchImages: [WatchEntry] = []
    /// `index.*`: the metadata index, SQLite (default) or PostgreSQL (`Configuration+Index.swift`).
    public var index = IndexConfiguration()

    /// One entry of `upstreams`. Printing it never shows the password.
    public struct Upstream: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
        public var description: String {
            "Upstream(name: \(name), url: \(url), username: \(username ?? "-"), password: \(password == nil ? "-" : "<redacted>"), tagTTL: \(tagTTL), insecure: \(insecure)"
                + (forwardClientCredentials ? ", forwardClientCredentials: true, accessMemo: \(accessMemo))" : ")")
        }
        public var debugDescription: String { description }

        public var name: String
        public var url: String
        public var username: String?
        /// Read from `password_file`, or from the variable `password_env` names. Never logged.
        public var password: String?
        public var tagTTL: Duration = .seconds(300)
        public var caFile: String?
        public var insecure = false
        public var staleIfError = true
        /// `prefetch_platforms`: fetch these platforms' blobs in the background when an index arrives.
        public var prefetchPlatforms: [Platform] = []
        /// `prefetch_max_children`: at most this many of an index's other children are fetched
        /// in the background (`prefetch_platforms`' children always are).
        public var prefetchMaxChildren = UpstreamPolicy().prefetchMaxChildren
        /// `connect_timeout`, `response_timeout` (the response head must arrive within it),
        /// `low_speed_limit` (bytes/s) and `low_speed_time`: a body slower than the limit for
        /// that long is abandoned.
        public var connectTimeout: Duration = .seconds(10)
        public var responseTimeout: Duration = .seconds(15)
        public var lowSpeedLimit = 1024
        public var lowSpeedTime: Duration = .seconds(30)
        /// `down_after`: requests in a row that get no answer before the upstream is marked
        /// down (requests fail at once, cached tags are served stale); 0: never. `down_max`: the
        /// longest wait between probes while it is down.
        public var downAfter = UpstreamConfiguration.dockerHub.downAfter
        public var downMax = UpstreamConfiguration.dockerHub.downMax
        /// `rate_limit_reserve`: at this many pulls left (`ratelimit-remaining`), a tag whose
        /// digest moved is served stale rather than spend one.
        public var rateLimitReserve = UpstreamPolicy().rateLimitReserve
        /// `allow`, `deny` (repository patterns) and `deny_status` (404 or 403): which
        /// repositories of this upstream the mirror serves.
        public var access = RepositoryAccess.open
        /// `forward_client_credentials`: requests to this upstream carry the client's own Basic
        /// credentials (not `username`, which it excludes), and the upstream, not
        /// `auth.htpasswd`, decides who reads its repositories, cached content included.
        public var forwardClientCredentials = false
        /// `access_memo`: how long the upstream's word that a client may read a repository is
        /// trusted before it is asked again (`0s`: every request).
        public var accessMemo = UpstreamPolicy().accessMemo

        public init(name: String, url: String) {
            self.name = name
            self.url = url
        }

        public static let keys: Set<String> = [
            "name", "url", "username", "password_file", "password_env", "tag_ttl", "ca_file", "insecure", "stale_if_error",
            "prefetch_platforms", "prefetch_max_children", "connect_timeout", "response_timeout", "low_speed_limit", "low_speed_time",
            "down_after", "down_max", "rate_limit_reserve", "allow", "deny", "deny_status",
            "forward_client_credentials", "access_memo",
        ]
    }

    public init() {}

    /// Every key path this version understands, with its environment variable.
    public static let keys: [(path: String, environment: String)] = [
        ("listen", "REGISTRY_MIRROR_LISTEN"),
        ("data_dir", "REGISTRY_MIRROR_DATA_DIR"),
        ("log.level", "REGISTRY_MIRROR_LOG_LEVEL"),
        ("log.format", "REGISTRY_MIRROR_LOG_FORMAT"),
        ("auth.htpasswd.path", "REGISTRY_MIRROR_AUTH_HTPASSWD_PATH"),
        ("auth.htpasswd.realm", "REGISTRY_MIRROR_AUTH_HTPASSWD_REALM"),
        ("auth.failures.limit", "REGISTRY_MIRROR_AUTH_FAILURES_LIMIT"),
        ("auth.failures.window", "REGISTRY_MIRROR_AUTH_FAILURES_WINDOW"),
        ("auth.hashing.threads", "REGISTRY_MIRROR_AUTH_HASHING_THREADS"),
        ("auth.hashing.max_waiting", "REGISTRY_MIRROR_AUTH_HASHING_MAX_WAITING"),
        ("http.sendfile", "REGISTRY_MIRROR_HTTP_SENDFILE"),
        ("http.idle_timeout", "REGISTRY_MIRROR_HTTP_IDLE_TIMEOUT"),
        ("http.max_connections", "REGISTRY_MIRROR_HTTP_MAX_CONNECTIONS"),
        ("http.tls.certificate", "REGISTRY_MIRROR_HTTP_TLS_CERTIFICATE"),
        ("http.tls.key", "REGISTRY_MIRROR_HTTP_TLS_KEY"),
        ("http.tls.client_ca", "REGISTRY_MIRROR_HTTP_TLS_CLIENT_CA"),
        ("metrics.listen", "REGISTRY_MIRROR_METRICS_LISTEN"),
        ("default_upstream", "REGISTRY_MIRROR_DEFAULT_UPSTREAM"),
        ("offline", "REGISTRY_MIRROR_OFFLINE"),
        ("storage.max_size", "REGISTRY_MIRROR_STORAGE_MAX_SIZE"),
        ("storage.eviction_interval", "REGISTRY_MIRROR_STORAGE_EVICTION_INTERVAL"),
        ("storage.min_free_space", "REGISTRY_MIRROR_STORAGE_MIN_FREE_SPACE"),
        ("storage.backend", "REGISTRY_MIRROR_STORAGE_BACKEND"),
        ("storage.s3.endpoint", "REGISTRY_MIRROR_STORAGE_S3_ENDPOINT"),
        ("storage.s3.region", "REGISTRY_MIRROR_STORAGE_S3_REGION"),
        ("storage.s3.bucket", "REGISTRY_MIRROR_STORAGE_S3_BUCKET"),
        ("storage.s3.prefix", "REGISTRY_MIRROR_STORAGE_S3_PREFIX"),
        ("storage.s3.path_style", "REGISTRY_MIRROR_STORAGE_S3_PATH_STYLE"),
        ("storage.s3.credentials_file", "REGISTRY_MIRROR_STORAGE_S3_CREDENTIALS_FILE"),
        ("storage.local_cache.max_size", "REGISTRY_MIRROR_STORAGE_LOCAL_CACHE_MAX_SIZE"),
        ("storage.s3.redirect", "REGISTRY_MIRROR_STORAGE_S3_REDIRECT"),
        ("storage.s3.redirect_expiry", "REGISTRY_MIRROR_STORAGE_S3_REDIRECT_EXPIRY"),
        ("storage.s3.upload_sweep.older_than", "REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_OLDER_THAN"),
        ("storage.s3.upload_sweep.interval", "REGISTRY_MIRROR_STORAGE_S3_UPLOAD_SWEEP_INTERVAL"),
        ("watch.interval", "REGISTRY_MIRROR_WATCH_INTERVAL"),
    ] + indexKeys + fleetKeys

    /// Loads `file` (if given) over the defaults, then the environment over that.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> MirrorConfiguration {
        var values: [String: String] = [:]
        var problems: [String] = []
        var upstreamNodes: Any?
        var watchNodes: Any?
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ConfigurationError(problems: ["\(file): cannot be read"])
            }
            do {
                var node = try Yams.load(yaml: text)
                if var mapping = node as? [String: Any], let list = mapping.removeValue(forKey: "upstreams") {
                    upstreamNodes = list
                    node = mapping
                }
                // `watch.images` is a list of mappings, parsed like `upstreams`.
                if var mapping = node as? [String: Any], var watch = mapping["watch"] as? [String: Any],
                   let list = watch.removeValue(forKey: "images") {
                    watchNodes = list
                    mapping["watch"] = watch
                    node = mapping
                }
                if let node { flatten(node, path: "", into: &values, problems: &problems) }
            } catch {
                throw ConfigurationError(problems: ["\(file): not valid YAML: \(error)"])
            }
        }
        for (path, variable) in keys {
            if let value = environment[variable] { values[path] = value }
        }
        var config = MirrorConfiguration()
        config.apply(values, problems: &problems)
        config.applyIndex(values, environment: environment, problems: &problems)
        config.applyStorage(values, problems: &problems)
        config.applyFleet(values, environment: environment, problems: &problems)
        if let upstreamNodes { config.upstreams = parseUpstreams(upstreamNodes, environment: environment, problems: &problems) }
        if let watchNodes { config.watchImages = parseWatchImages(watchNodes, problems: &problems) }
        config.applyWatch(values, problems: &problems)
        if let name = config.defaultUpstream, !config.upstreams.isEmpty, !config.upstreams.contains(where: { $0.name == name }) {
            problems.append("default_upstream: \"\(name)\" is not one of the upstreams")
        }
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return config
    }

    /// Nested mappings become dotted key paths; anything unknown is a problem.
    static func flatten(_ node: Any, path: String, into values: inout [String: String], problems: inout [String]) {
        if let mapping = node as? [String: Any] {
            for (key, child) in mapping.sorted(by: { $0.key < $1.key }) {
                flatten(child, path: path.isEmpty ? key : "\(path).\(key)", into: &values, problems: &problems)
            }
            return
        }
        guard keys.contains(where: { $0.path == path }) else {
            problems.append("\(path.isEmpty ? "(top level)" : path): unknown key")
            return
        }
        if node is [Any] {
            problems.append("\(path): expected a single value, got a list")
        } else {
            values[path] = "\(node)"
        }
    }

    mutating func apply(_ values: [String: String], problems: inout [String]) {
        if let v = values["listen"] {
            if Self.parseListen(v) == nil { problems.append("listen: must be HOST:PORT, got \"\(v)\"") } else { listen = v }
        }
        if let v = values["data_dir"] {
            if v.isEmpty { problems.append("data_dir: must not be empty") } else { dataDirectory = v }
        }
        if let v = values["log.level"] {
            if let level = Logger.Level(rawValue: v.lowercased()) { logLevel = level } else {
                problems.append("log.level: must be one of trace, debug, info, notice, warning, error, critical; got \"\(v)\"")
            }
        }
        if let v = values["log.format"] {
            if let format = LogFormat(rawValue: v.lowercased()) { logFormat = format } else {
                problems.append("log.format: must be text or json; got \"\(v)\"")
            }
        }
        if let v = values["auth.htpasswd.path"] {
            if FileManager.default.isReadableFile(atPath: v) { htpasswdPath = v } else {
                problems.append("auth.htpasswd.path: \(v) cannot be read")
            }
        }
        if let v = values["auth.htpasswd.realm"] {
            if v.isEmpty || v.contains("\"") { problems.append("auth.htpasswd.realm: must be non-empty, without quotes") } else { htpasswdRealm = v }
        }
        for (key, path, least) in [("auth.failures.limit", \MirrorConfiguration.authFailureLimit, 0),
                                   ("auth.hashing.threads", \.hashingThreads, 1), ("auth.hashing.max_waiting", \.hashingMaxWaiting, 0)] {
            guard let v = values[key] else { continue }
            if let n = Int(v), n >= least, n <= 100_000 { self[keyPath: path] = n } else {
                problems.append("\(key): must be a whole number from \(least) to 100000; got \"\(v)\"")
            }
        }
        if let v = values["auth.failures.window"] {
            if let d = UpstreamSpec.duration(v), d > .zero { authFailureWindow = d } else {
                problems.append("auth.failures.window: must be a duration like 60s or 5m; got \"\(v)\"")
            }
        }
        if let v = values["http.sendfile"] { sendfile = Self.bool(v, "http.sendfile", &problems) ?? sendfile }
        if let v = values["http.idle_timeout"] {
            if let d = UpstreamSpec.duration(v), d > .zero { idleTimeout = d } else {
                problems.append("http.idle_timeout: must be a duration like 75s or 5m; got \"\(v)\"")
            }
        }
        if let v = values["http.max_connections"] {
            if let n = Int(v), n > 0 { maxConnections = n } else {
                problems.append("http.max_connections: must be a positive number of connections; got \"\(v)\"")
            }
        }
        applyTLS(values, problems: &problems)
        if let v = values["metrics.listen"] {
            if let metrics = Self.parseListen(v) {
                if let main = Self.parseListen(listen), main == metrics, metrics.port != 0 {
                    problems.append("metrics.listen: \(v) is the main listen address; give metrics an address of its own")
                } else {
                    metricsListen = v
                }
            } else {
                problems.append("metrics.listen: must be HOST:PORT, got \"\(v)\"")
            }
        }
        if let v = values["offline"] { offline = Self.bool(v, "offline", &problems) ?? offline }
        if let v = values["default_upstream"] { defaultUpstream = v }
        if let v = values["storage.max_size"] {
            if let size = ByteSize.parse(v), size > 0 { maxSize = size } else {
                problems.append("storage.max_size: must be a size like 500MiB, 20GiB or 1TB; got \"\(v)\"")
            }
        }
        if let v = values["storage.eviction_interval"] {
            if let d = UpstreamSpec.duration(v), d > .zero { evictionInterval = d } else {
                problems.append("storage.eviction_interval: must be a duration like 30s or 5m; got \"\(v)\"")
            }
        }
        if let v = values["storage.min_free_space"] {
            if let size = ByteSize.parse(v) { minFreeSpace = size } else {
                problems.append("storage.min_free_space: must be a size like 1GiB or 500MB, or 0; got \"\(v)\"")
            }
        }
    }

    static func bool(_ v: String, _ path: String, _ problems: inout [String]) -> Bool? {
        switch v.lowercased() {
        case "true", "yes", "1": return true
        case "false", "no", "0": return false
        default:
            problems.append("\(path): must be true or false, got \"\(v)\"")
            return nil
        }
    }

    static func parseUpstreams(_ node: Any, environment: [String: String], problems: inout [String]) -> [Upstream] {
        guard let list = node as? [Any] else {
            problems.append("upstreams: must be a list")
            return []
        }
        var out: [Upstream] = []
        for (i, item) in list.enumerated() {
            let at = "upstreams[\(i)]"
            guard let map = item as? [String: Any] else {
                problems.append("\(at): must be a mapping with name and url")
                continue
            }
            for key in map.keys.sorted() where !Upstream.keys.contains(key) { problems.append("\(at).\(key): unknown key") }
            let text = { (key: String) in map[key].map { "\($0)" } }
            guard let url = text("url") else {
                problems.append("\(at).url: required")
                continue
            }
            guard let parsed = try? UpstreamSpec.parse(url) else {
                problems.append("\(at).url: not a registry URL: \"\(url)\"")
                continue
            }
            var upstream = Upstream(name: text("name") ?? parsed.name, url: parsed.url.absoluteString)
            if upstream.name.isEmpty || upstream.name.contains("/") { problems.append("\(at).name: invalid name \"\(upstream.name)\"") }
            if out.contains(where: { $0.name == upstream.name }) { problems.append("\(at).name: \"\(upstream.name)\" is listed twice") }
            upstream.username = text("username")
            if let file = text("password_file") {
                if let secret = try? String(contentsOfFile: file, encoding: .utf8) {
                    upstream.password = secret.trimmingCharacters(in: .newlines)
                } else {
                    problems.append("\(at).password_file: cannot read \(file)")
                }
            } else if let variable = text("password_env") {
                if let secret = environment[variable] { upstream.password = secret } else { problems.append("\(at).password_env: $\(variable) is not set") }
            }
            if (upstream.username == nil) != (upstream.password == nil) {
                problems.append("\(at): username and password_file (or password_env) go together")
            }
            if let v = text("forward_client_credentials") {
                upstream.forwardClientCredentials = bool(v, "\(at).forward_client_credentials", &problems) ?? false
                if upstream.forwardClientCredentials, upstream.username != nil {
                    // Which would an anonymous client get? Neither answer is safe to guess.
                    problems.append("\(at): forward_client_credentials sends each client's own credentials; remove username and password_file (or password_env)")
                }
            }
            for (key, path) in [("tag_ttl", \Upstream.tagTTL), ("connect_timeout", \.connectTimeout),
                                ("response_timeout", \.responseTimeout), ("low_speed_time", \.lowSpeedTime), ("down_max", \.downMax),
                                ("access_memo", \.accessMemo)] {
                guard let value = text(key) else { continue }
                if let d = UpstreamSpec.duration(value), key == "tag_ttl" || key == "access_memo" || d > .zero { upstream[keyPath: path] = d } else {
                    problems.append("\(at).\(key): must look like 30s, 5m or 1h, got \"\(value)\"")
                }
            }
            if let value = text("low_speed_limit") {
                if let bytes = ByteSize.parse(value), bytes > 0, bytes < Int64(Int32.max) { upstream.lowSpeedLimit = Int(bytes) } else {
                    problems.append("\(at).low_speed_limit: must be bytes per second like 1024 or 10KiB, got \"\(value)\"")
                }
            }
            for (key, path) in [("prefetch_max_children", \Upstream.prefetchMaxChildren), ("down_after", \.downAfter),
                                ("rate_limit_reserve", \.rateLimitReserve)] {
                guard let value = text(key) else { continue }
                if let count = Int(value), count >= 0 { upstream[keyPath: path] = count } else {
                    problems.append("\(at).\(key): must be a whole number ≥ 0, got \"\(value)\"")
                }
            }
            upstream.caFile = text("ca_file")
            if let ca = upstream.caFile, !FileManager.default.fileExists(atPath: ca) { problems.append("\(at).ca_file: \(ca) does not exist") }
            if let v = text("insecure") { upstream.insecure = bool(v, "\(at).insecure", &problems) ?? false }
            if let v = text("stale_if_error") { upstream.staleIfError = bool(v, "\(at).stale_if_error", &problems) ?? true }
            upstream.access = parseAccess(map, at: at, problems: &problems)
            if let platforms = map["prefetch_platforms"] {
                for (j, item) in ((platforms as? [Any]) ?? [platforms]).enumerated() {
                    if let p = try? Platform(parsing: "\(item)") { upstream.prefetchPlatforms.append(p) } else {
                        problems.append("\(at).prefetch_platforms[\(j)]: must be os/arch[/variant], got \"\(item)\"")
                    }
                }
            }
            out.append(upstream)
        }
        return out
    }

    /// An upstream's `allow`, `deny` and `deny_status`. A pattern that cannot be read is a
    /// problem, never skipped: a deny list missing an entry would serve what it should not.
    static func parseAccess(_ map: [String: Any], at: String, problems: inout [String]) -> RepositoryAccess {
        var access = RepositoryAccess.open
        func patterns(_ key: String) -> [RepositoryPattern]? {
            guard let node = map[key] else { return nil }
            guard let list = node as? [Any] else {
                problems.append("\(at).\(key): must be a list of repository patterns, such as [library/*, myorg/**]")
                return []
            }
            var out: [RepositoryPattern] = []
            for (j, item) in list.enumerated() {
                do {
                    out.append(try RepositoryPattern(parsing: "\(item)"))
                } catch {
                    problems.append("\(at).\(key)[\(j)]: \(error.message)")
                }
            }
            return out
        }
        access.allow = patterns("allow")
        access.deny = patterns("deny") ?? []
        if let status = map["deny_status"].map({ "\($0)" }) {
            switch status {
            case "404": access.refusal = .nameUnknown
            case "403": access.refusal = .denied
            default: problems.append("\(at).deny_status: must be 404 (NAME_UNKNOWN) or 403 (DENIED), got \"\(status)\"")
            }
        }
        return access
    }

    /// `http.tls.*`: both certificate and key, or neither; the files must load (each problem is
    /// reported: a missing file, a file that is not PEM, a key that does not match), so a bad
    /// pair stops the start, not the first handshake.
    mutating func applyTLS(_ values: [String: String], problems: inout [String]) {
        let certificate = values["http.tls.certificate"], key = values["http.tls.key"], clientCA = values["http.tls.client_ca"]
        guard certificate != nil || key != nil || clientCA != nil else { return }
        guard let certificate, let key else {
            if certificate != nil {
                problems.append("http.tls.key: missing; http.tls.certificate needs its private key")
            } else if key != nil {
                problems.append("http.tls.certificate: missing; http.tls.key is set without a certificate")
            } else {
                problems.append("http.tls.client_ca: needs http.tls.certificate and http.tls.key (mutual TLS is TLS)")
            }
            return
        }
        let files = TLSFiles(certificate: certificate, key: key, clientCA: clientCA)
        let found = TLSIdentity.problems(files)
        if found.isEmpty { tls = files } else { problems += found }
    }

    /// `HOST:PORT` (IPv6 hosts in brackets) → host and port.
    public static func parseListen(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        let host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    /// The serve settings this configuration describes.
    public var serveSettings: ServeSettings {
        var settings = ServeSettings()
        if let (host, port) = Self.parseListen(listen) {
            settings.host = host
            settings.port = port
        }
        settings.dataDirectory = dataDirectory
        settings.index = index
        settings.zeroCopy = sendfile
        settings.idleTimeout = idleTimeout
        settings.offline = offline
        settings.maxBytes = maxSize
        settings.htpasswdPath = htpasswdPath
        settings.htpasswdRealm = htpasswdRealm
        settings.authFailureLimit = authFailureLimit
        settings.authFailureWindow = authFailureWindow
        settings.hashingThreads = hashingThreads
        settings.hashingMaxWaiting = hashingMaxWaiting
        settings.evictionInterval = evictionInterval
        settings.maxConnections = maxConnections
        settings.metricsListen = metricsListen.flatMap(Self.parseListen)
        settings.tls = tls
        settings.minFreeSpace = minFreeSpace
        settings.s3Storage = s3Storage
        settings.fleet = fleet
        settings.watchInterval = watchInterval
        settings.watchImages = watchImages
        if !upstreams.isEmpty {
            settings.upstreams = upstreams.map { entry in
                var upstream = UpstreamConfiguration(name: entry.name, url: URL(string: entry.url)!)
                if let username = entry.username, let password = entry.password {
                    upstream.credentials = Credentials(username: username, password: password)
                }
                upstream.limits.caFile = entry.caFile
                upstream.limits.verifyTLS = !entry.insecure
                upstream.limits.connectTimeout = entry.connectTimeout
                upstream.limits.headerTimeout = entry.responseTimeout
                upstream.limits.lowSpeedBytes = entry.lowSpeedLimit
                upstream.limits.lowSpeedTime = entry.lowSpeedTime
                upstream.downAfter = entry.downAfter
                upstream.downMax = entry.downMax
                upstream.forwardClientCredentials = entry.forwardClientCredentials
                return upstream
            }
            settings.defaultUpstream = defaultUpstream ?? upstreams[0].name
            for entry in upstreams {
                var policy = UpstreamPolicy()
                policy.tagTTL = entry.tagTTL
                policy.staleIfError = entry.staleIfError
                policy.prefetchPlatforms = entry.prefetchPlatforms
                policy.prefetchMaxChildren = entry.prefetchMaxChildren
                policy.rateLimitReserve = entry.rateLimitReserve
                policy.accessMemo = entry.accessMemo
                settings.policies[entry.name] = policy
                if entry.access != .open { settings.access[entry.name] = entry.access }
            }
        } else if let defaultUpstream {
            settings.defaultUpstream = defaultUpstream
        }
        return settings
    }
}

/// How log lines are written.
public enum LogFormat: String, Sendable {
    case text, json
}

/// Every problem found in a configuration, each with its key path.
public struct ConfigurationError: Error, CustomStringConvertible {
    public let problems: [String]
    public var description: String {
        "invalid configuration (\(problems.count) problem\(problems.count == 1 ? "" : "s")):\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// Parses the command line's upstream and duration forms.
public enum UpstreamSpec {
    /// `URL` or `NAME=URL`. Without a scheme, https. Without a name, the URL's host[:port]
    /// (Docker Hub's API host is named `docker.io`).
    public static func parse(_ text: String) throws(ConfigurationError) -> UpstreamConfiguration {
        var name: String?
        var target = Substring(text)
        if let eq = text.firstIndex(of: "="), !text[..<eq].contains("/") {
            name = String(text[..<eq])
            target = text[text.index(after: eq)...]
        }
        let withScheme = target.contains("://") ? String(target) : "https://" + target
        guard let url = URL(string: withScheme), let host = url.host, ["http", "https"].contains(url.scheme ?? "") else {
            throw ConfigurationError(problems: ["upstream: not a registry URL: \"\(text)\""])
        }
        let derived = ImageReference.normalizeHost(url.port.map { "\(host):\($0)" } ?? host)
        let finalName = name ?? derived
        guard !finalName.isEmpty, !finalName.contains("/") else {
            throw ConfigurationError(problems: ["upstream: invalid name \"\(finalName)\""])
        }
        return UpstreamConfiguration(name: finalName, url: url)
    }

    /// `500ms`, `30s`, `5m`, `2h`, or plain seconds.
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, millis) in units where text.hasSuffix(suffix) {
            guard let value = Int64(text.dropLast(suffix.count)), value >= 0 else { return nil }
            return .milliseconds(value * millis)
        }
        return Int64(text).flatMap { $0 >= 0 ? .seconds($0) : nil }
    }
}

/// Sizes as operators write them: `500MiB`, `20GiB`, `1.5TB`, `4096` (bytes). Binary units
/// (KiB, MiB, GiB, TiB, PiB, and the bare K, M, G, T, P as Docker and Kubernetes read them)
/// are powers of 1024; KB, MB, GB, TB, PB are powers of 1000.
public enum ByteSize {
    public static func parse(_ text: String) -> Int64? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber || $0 == "." }
        guard !digits.isEmpty, let value = Double(digits), value >= 0 else { return nil }
        let unit = trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let scale: Double
        switch unit {
        case "", "b": scale = 1
        case "k", "ki", "kib": scale = 0x400
        case "m", "mi", "mib": scale = 0x10_0000
        case "g", "gi", "gib": scale = 0x4000_0000
        case "t", "ti", "tib": scale = 0x100_0000_0000
        case "p", "pi", "pib": scale = 0x4_0000_0000_0000
        case "kb": scale = 1e3
        case "mb": scale = 1e6
        case "gb": scale = 1e9
        case "tb": scale = 1e12
        case "pb": scale = 1e15
        default: return nil
        }
        let bytes = value * scale
        guard bytes < 9e18 else { return nil }
        return Int64(bytes)
    }

    /// `1.5 MiB`: binary units, one decimal.
    public static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes), unit = 0
        while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}
