import Foundation
import OCI
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Support for PullThroughTests: the mirror in front of real docker-registry upstreams.
// Every top-level name here starts with `PullThrough` so that it cannot clash with the
// other suites' support files in this target.

/// Everything one pull-through test starts: upstream registries, mirrors, temporary files.
/// `PullThroughScope.run` stops and removes all of it however the test ends.
final class PullThroughScope: Sendable {
    let work: TemporaryDirectory
    let name: String
    private let registries = Mutex<[DistributionRegistry]>([])
    private let authRegistries = Mutex<[DistributionRegistry]>([])
    private let mirrors = Mutex<[MirrorProcess]>([])
    private let counter = Mutex(0)

    private init(name: String) throws {
        self.name = name
        work = try TemporaryDirectory(prefix: "registry-mirror-e2e-pullthrough")
    }

    /// Runs `body` with a fresh scope, then stops every process it started and removes its files.
    static func run<T: Sendable>(_ name: String, _ body: (PullThroughScope) async throws -> T) async throws -> T {
        _ = try TestPaths.requireMirrorBinary()
        for tool in ["skopeo", "docker-registry", "timeout"] { _ = try TestPaths.executable(tool) }
        let scope = try PullThroughScope(name: name)
        Progress.step("pull-through \(name): start")
        do {
            let result = try await body(scope)
            await scope.tearDown()
            return result
        } catch {
            await scope.tearDown()
            throw error
        }
    }

    func tearDown() async {
        for mirror in mirrors.withLock({ $0 }) { await mirror.stop() }
        for registry in registries.withLock({ $0 }) { await registry.stop() }
        for registry in authRegistries.withLock({ $0 }) { await registry.stop() }
        work.remove()
        Progress.step("pull-through \(name): torn down")
    }

    func unique(_ prefix: String) -> URL {
        let n = counter.withLock { value -> Int in
            value += 1
            return value
        }
        return work.url.appendingPathComponent("\(prefix)-\(n)")
    }

    /// A docker-registry with the access log on, stopped with the scope.
    func registry(extraConfig: String = "") async throws -> DistributionRegistry {
        let registry = try await DistributionRegistry.start(extraConfig: extraConfig)
        registries.withLock { $0.append(registry) }
        return registry
    }

    /// A docker-registry with htpasswd Basic auth, stopped with the scope.
    func authRegistry(htpasswdLine: String) async throws -> DistributionRegistry {
        let registry = try await PullThroughAuthRegistry.start(htpasswdLine: htpasswdLine, in: work.url)
        authRegistries.withLock { $0.append(registry) }
        return registry
    }

    /// `registry-mirror serve` with its own data directory and `arguments` (upstreams, TTL, …).
    func mirror(_ arguments: [String]) async throws -> MirrorProcess {
        try await mirrorOn(unique("mirror").appendingPathComponent("data"), arguments)
    }

    /// `registry-mirror serve` on a given data directory, stopped with the scope.
    func mirrorOn(_ data: URL, _ arguments: [String]) async throws -> MirrorProcess {
        let mirror = try await MirrorProcess.start(
            dataDirectory: data, logDirectory: unique("mirror-logs"),
            extraArguments: arguments + ["--log-level", "debug"])
        mirrors.withLock { $0.append(mirror) }
        Progress.step("pull-through \(name): mirror on \(mirror.host) with \(arguments.joined(separator: " "))")
        return mirror
    }

    // MARK: Images

    /// A synthetic single-platform image (3 layers) as an OCI layout.
    func singleImage(seed: UInt64, tag: String = "v1") throws -> SyntheticImage {
        try SyntheticImages.single(at: unique("single"), tag: tag, seed: seed)
    }

    /// A synthetic three-platform OCI index as an OCI layout.
    func multiImage(seed: UInt64, tag: String = "v1") throws -> SyntheticImage {
        try SyntheticImages.multi(at: unique("multi"), tag: tag, seed: seed)
    }

    /// A single-platform image whose layers are `layerSizes` bytes of random data each (any size:
    /// the shared writer caps layers at 1 MiB, this one does not).
    func bigImage(seed: UInt64, layerSizes: [Int], tag: String = "v1") throws -> SyntheticImage {
        let writer = try OCILayoutWriter(root: unique("big"), seed: seed)
        var rng = SeededGenerator(seed: seed)
        var layers: [WrittenBlob] = []
        for (i, size) in layerSizes.enumerated() {
            let tar = Ustar.archive([("big-layer\(i).bin", rng.bytes(size))])
            layers.append(try writer.writeBlob(tar, mediaType: OCILayoutWriter.layerType))
        }
        let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
        let configText = #"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{}}"#
        let config = try writer.writeBlob(Array(configText.utf8), mediaType: OCILayoutWriter.configType)
        let manifestText = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":\#(config.descriptorJSON),"layers":[\#(layers.map(\.descriptorJSON).joined(separator: ","))]}"#
        let manifest = try writer.writeBlob(Array(manifestText.utf8), mediaType: MediaType.ociManifest)
        try writer.writeLayoutIndex(root: manifest, tag: tag)
        let platform = SyntheticPlatform(os: "linux", architecture: "amd64", variant: nil, manifest: manifest, config: config, layers: layers)
        return SyntheticImage(layout: writer.root, tag: tag, root: manifest, platforms: [platform])
    }

    /// `skopeo copy --all oci:LAYOUT:TAG docker://HOST/REPO:TAG`.
    func push(_ image: SyntheticImage, to host: String, _ repository: String, tag: String? = nil, creds: String? = nil) async throws {
        var arguments = ["copy", "--all", "--dest-tls-verify=false"]
        if let creds { arguments += ["--dest-creds", creds] }
        arguments += ["oci:\(image.layout.path):\(image.tag)", "docker://\(host)/\(repository):\(tag ?? image.tag)"]
        try await Command.check("skopeo", arguments)
    }

    /// `skopeo copy --all docker://HOST/REF oci:OUT:v1`, not checked; OUT is a fresh directory.
    func pull(_ reference: String, all: Bool = true, creds: String? = nil, timeout: Duration = Command.defaultTimeout) async throws -> (result: CommandResult, layout: URL) {
        let out = unique("pulled")
        var arguments = ["copy", "--src-tls-verify=false"]
        if all { arguments.append("--all") }
        if let creds { arguments += ["--src-creds", creds] }
        arguments += ["docker://\(reference)", "oci:\(out.path):v1"]
        let result = try await Command.run("skopeo", arguments, timeout: timeout)
        return (result, out)
    }
}

// MARK: - What an upstream holds

/// An image as an upstream registry serves it: the root manifest (or index) and, for each
/// platform manifest, its bytes; every blob the image consists of.
struct PullThroughUpstreamImage: Sendable {
    let repository: String
    let rootDigest: Digest
    let rootBytes: [UInt8]
    let rootMediaType: String?
    /// Every manifest by digest, the root included.
    let manifests: [Digest: [UInt8]]
    /// Configs and layers of every platform.
    let blobs: [Digest]
    /// Layers only.
    let layers: [Digest]

    var allDigests: Set<Digest> { Set(manifests.keys).union(blobs) }
}

enum PullThroughHTTP {
    static let manifestAccept = MediaType.manifestAccept.joined(separator: ", ")

    static func basic(_ creds: String?) -> [(String, String)] {
        guard let creds else { return [] }
        return [("Authorization", "Basic " + Data(creds.utf8).base64EncodedString())]
    }

    /// Reads an image straight from an upstream registry (these requests show in its access log).
    static func upstreamImage(port: Int, _ repository: String, tag: String, creds: String? = nil) throws -> PullThroughUpstreamImage {
        let auth = basic(creds)
        let root = try RawHTTP.get(port: port, path: "/v2/\(repository)/manifests/\(tag)", headers: [("Accept", manifestAccept)] + auth)
        guard root.status == 200 else { throw E2EError("upstream 127.0.0.1:\(port) GET \(repository):\(tag): \(root)") }
        let rootDigest = root.body.sha256
        if let announced = root.header("Docker-Content-Digest"), announced != rootDigest.description {
            throw E2EError("upstream announces \(announced) for \(repository):\(tag) but the bytes hash to \(rootDigest)")
        }
        var manifests: [Digest: [UInt8]] = [rootDigest: root.body]
        var blobs: [Digest] = []
        var layers: [Digest] = []
        let document = try ManifestDocument(bytes: root.body)
        var platformDocuments: [ManifestDocument] = []
        if document.isIndex {
            for child in document.manifests {
                let response = try RawHTTP.get(port: port, path: "/v2/\(repository)/manifests/\(child.digest)", headers: [("Accept", manifestAccept)] + auth)
                guard response.status == 200, response.body.sha256 == child.digest else {
                    throw E2EError("upstream GET \(repository)@\(child.digest): \(response)")
                }
                manifests[child.digest] = response.body
                platformDocuments.append(try ManifestDocument(bytes: response.body))
            }
        } else {
            platformDocuments = [document]
        }
        for platform in platformDocuments {
            if let config = platform.config { blobs.append(config.digest) }
            for layer in platform.layers {
                blobs.append(layer.digest)
                layers.append(layer.digest)
            }
        }
        return PullThroughUpstreamImage(repository: repository, rootDigest: rootDigest, rootBytes: root.body,
                                        rootMediaType: root.header("Content-Type"), manifests: manifests, blobs: blobs, layers: layers)
    }

    /// A GET or HEAD of a manifest through the mirror (or anything), with the full Accept set.
    static func manifest(port: Int, _ path: String, head: Bool = false) throws -> RawResponse {
        try RawHTTP.request(head ? "HEAD" : "GET", port: port, path: path, headers: [("Accept", manifestAccept)])
    }

    /// One request with a body (RawHTTP sends none): used to move a tag upstream with a manifest PUT.
    static func requestWithBody(_ method: String, port: Int, path: String, headers: [(String, String)], body: [UInt8], timeout: Int = 15) throws -> RawResponse {
        let fd = try RawHTTP.connectLoopback(port: port, timeout: timeout)
        defer { close(fd) }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUser-Agent: registry-mirror-e2e\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        let request = Array(text.utf8) + body
        var sent = 0
        while sent < request.count {
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw E2EError("send to 127.0.0.1:\(port) failed: errno \(errno)") }
            sent += n
        }
        var raw: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { throw E2EError("\(method) \(path): reading the response failed (errno \(errno))") }
            raw.append(contentsOf: buffer[0..<n])
        }
        return try RawHTTP.parse(raw, method: method, path: path)
    }

    /// Pushes one blob into `repository` with a monolithic upload (POST, then PUT ?digest=).
    @discardableResult
    static func uploadBlob(port: Int, _ repository: String, _ bytes: [UInt8]) throws -> Digest {
        let digest = bytes.sha256
        let start = try requestWithBody("POST", port: port, path: "/v2/\(repository)/blobs/uploads/", headers: [], body: [])
        guard start.status == 202, var location = start.header("Location") else {
            throw E2EError("starting an upload to \(repository): \(start)")
        }
        if let url = URL(string: location), url.host != nil {
            location = url.path + (url.query.map { "?" + $0 } ?? "")
        }
        let separator = location.contains("?") ? "&" : "?"
        let put = try requestWithBody("PUT", port: port, path: "\(location)\(separator)digest=\(digest)",
                                      headers: [("Content-Type", "application/octet-stream")], body: bytes)
        guard put.status == 201 else { throw E2EError("finishing an upload of \(digest) to \(repository): \(put)") }
        return digest
    }

    /// The `detail`s of a Distribution error envelope.
    static func errorDetails(_ response: RawResponse) -> [String] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
              let errors = object["errors"] as? [[String: Any]] else { return [] }
        return errors.map { item in
            if let text = item["detail"] as? String { return text }
            if let value = item["detail"], let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed]) {
                return String(decoding: data, as: UTF8.self)
            }
            return ""
        }
    }
}

// MARK: - Access-log arithmetic

enum PullThroughLog {
    /// How many `GET <path>` lines there are, per path, among the blob requests of `requests`.
    static func blobGets(_ requests: [DistributionRegistry.Request]) -> [String: [DistributionRegistry.Request]] {
        Dictionary(grouping: requests.filter { $0.method == "GET" && $0.path.contains("/blobs/") }, by: \.path)
    }

    static func describe(_ requests: [DistributionRegistry.Request]) -> String {
        requests.isEmpty ? "(none)" : requests.map(\.description).joined(separator: "\n")
    }
}

// MARK: - Pulled layouts

enum PullThroughLayout {
    /// The digest `index.json` of a skopeo-written layout points at for `v1`.
    static func root(_ layout: URL, tag: String = "v1") throws -> Digest {
        try MirrorFixture.layoutRootDigest(layout, tag: tag)
    }

    /// Every blob file of a layout, by its relative name (`sha256/HEX`).
    static func blobNames(_ layout: URL) -> [String] {
        Files.regularFiles(under: layout.appendingPathComponent("blobs"))
    }

    static func blob(_ layout: URL, _ digest: Digest) throws -> [UInt8] {
        try MirrorFixture.blob(digest, in: layout)
    }
}

// MARK: - htpasswd (bcrypt)

enum PullThroughBcrypt {
    /// `user:$2b$…` for an htpasswd file. Tries libxcrypt's crypt(3) (via dlopen), then
    /// python3's `crypt` module, then apache2-utils' `htpasswd -nbB`.
    static func htpasswdLine(user: String, password: String) async throws -> String {
        var attempts: [String] = []
        if let hash = libcrypt(password) {
            if isBcrypt(hash) {
                Progress.step("htpasswd: bcrypt hash from libcrypt.so.1")
                return "\(user):\(hash)"
            }
            attempts.append("libcrypt gave \(hash.prefix(7))…")
        } else {
            attempts.append("libcrypt.so.1 with crypt_gensalt/crypt not loadable")
        }
        if let python = try? TestPaths.executable("python3") {
            let script = "import sys, crypt; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))"
            let result = try await Command.run(python, ["-W", "ignore", "-c", script, password], timeout: .seconds(30))
            let hash = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            if result.succeeded, isBcrypt(hash) {
                Progress.step("htpasswd: bcrypt hash from python3 crypt")
                return "\(user):\(hash)"
            }
            attempts.append("python3 crypt: \(result.summary)")
        } else {
            attempts.append("python3 not found")
        }
        if let htpasswd = try? TestPaths.executable("htpasswd") {
            let result = try await Command.run(htpasswd, ["-nbB", user, password], timeout: .seconds(30))
            let line = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            if result.succeeded, line.hasPrefix("\(user):"), isBcrypt(String(line.dropFirst(user.count + 1))) { return line }
            attempts.append("htpasswd: \(result.summary)")
        } else {
            attempts.append("htpasswd (apache2-utils) not found")
        }
        throw E2EError("cannot make a bcrypt hash for the htpasswd file: " + attempts.joined(separator: "; "))
    }

    static func isBcrypt(_ hash: String) -> Bool {
        (hash.hasPrefix("$2b$") || hash.hasPrefix("$2y$") || hash.hasPrefix("$2a$")) && hash.count == 60
    }

    private typealias Gensalt = @convention(c) (UnsafePointer<CChar>?, UInt, UnsafePointer<CChar>?, Int32) -> UnsafeMutablePointer<CChar>?
    private typealias Crypt = @convention(c) (UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> UnsafeMutablePointer<CChar>?

    /// crypt(password, crypt_gensalt("$2b$", cost, NULL, 0)); nil when libxcrypt is not there.
    static func libcrypt(_ password: String, cost: UInt = 5) -> String? {
        guard let handle = dlopen("libcrypt.so.1", RTLD_NOW) else { return nil }
        defer { dlclose(handle) }
        guard let gensaltSymbol = dlsym(handle, "crypt_gensalt"), let cryptSymbol = dlsym(handle, "crypt") else { return nil }
        let gensalt = unsafeBitCast(gensaltSymbol, to: Gensalt.self)
        let crypt = unsafeBitCast(cryptSymbol, to: Crypt.self)
        guard let setting = gensalt("$2b$", cost, nil, 0) else { return nil }
        let settingText = String(cString: setting)
        guard let hashed = crypt(password, settingText) else { return nil }
        let hash = String(cString: hashed)
        return hash.hasPrefix("*") ? nil : hash
    }
}

/// A docker-registry with htpasswd Basic auth.
enum PullThroughAuthRegistry {
    static func start(htpasswdLine: String, in directory: URL) async throws -> DistributionRegistry {
        let htpasswd = directory.appendingPathComponent("htpasswd-\(UUID().uuidString)")
        try (htpasswdLine + "\n").write(to: htpasswd, atomically: true, encoding: .utf8)
        return try await DistributionRegistry.start(extraConfig: "auth: {htpasswd: {realm: test, path: \(htpasswd.path)}}", challenge: "basic")
    }
}
