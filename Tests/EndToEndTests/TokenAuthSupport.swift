import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import OCI
import Synchronization
import Testing

// The upstream side of the Bearer-token tests: a token issuer (NIO HTTP/1.1 on 127.0.0.1:0)
// that signs RS256 JWTs the way distribution's token spec describes, and a real
// docker-registry configured to trust it. Everything here is prefixed `TokenAuth` so it
// cannot collide with the other end-to-end files in this folder.

// MARK: - Signing material

/// A throwaway RSA key and self-signed certificate made with the `openssl` CLI, and RS256
/// signatures made with `openssl dgst -sha256 -sign`.
struct TokenAuthSigner: Sendable {
    let keyPath: String
    let certificatePath: String
    /// The certificate's DER bytes, base64 (standard alphabet): the JWT header's `x5c` entry.
    let certificateDER: String

    static func make(in directory: URL) async throws -> TokenAuthSigner {
        _ = try TestPaths.executable("openssl")  // Debian: the `openssl` package.
        let key = directory.appendingPathComponent("issuer-key.pem").path
        let cert = directory.appendingPathComponent("issuer-cert.pem").path
        try await Command.check("openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-days", "1", "-subj", "/CN=test-issuer",
        ])
        let pem = try String(contentsOfFile: cert, encoding: .utf8)
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard !body.isEmpty, Data(base64Encoded: body) != nil else { throw E2EError("unreadable certificate \(cert): \(pem)") }
        return TokenAuthSigner(keyPath: key, certificatePath: cert, certificateDER: body)
    }

    static func base64url(_ data: Data) -> String {
        data.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func json(_ object: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }

    /// `base64url(header).base64url(claims).base64url(RS256 signature)`.
    func jwt(claims: [String: Any]) async throws -> String {
        let header: [String: Any] = ["typ": "JWT", "alg": "RS256", "x5c": [certificateDER]]
        let signingInput = Self.base64url(try Self.json(header)) + "." + Self.base64url(try Self.json(claims))
        let scratch = try TemporaryDirectory(prefix: "registry-mirror-e2e-jwt")
        defer { scratch.remove() }
        let input = scratch.url.appendingPathComponent("input")
        try Data(signingInput.utf8).write(to: input)
        let signed = try await Command.check("openssl", ["dgst", "-sha256", "-binary", "-sign", keyPath, input.path], timeout: .seconds(30))
        guard signed.stdoutData.count == 256 else {
            throw E2EError("openssl produced a \(signed.stdoutData.count)-byte signature, expected 256: \(signed.summary)")
        }
        return signingInput + "." + Self.base64url(signed.stdoutData)
    }
}

// MARK: - The token issuer

/// `GET /token?service=…&scope=…` → `{"token", "access_token", "expires_in", "issued_at"}`.
///
/// Policy: anonymous gets `pull` on `public/*`; `alice:secret` gets `pull`+`push` on
/// everything; `bob:builder` gets `pull` on `public/*` only; carol gets `pull` on `team-c/*`
/// and dave on `team-d/*`, nothing else (the forwarded-credentials tests). Wrong or unknown Basic
/// credentials get a 401. Anything not granted is left out of `access` (a token that
/// grants nothing, as distribution's token spec says, rather than an error).
final class TokenAuthIssuer: Sendable {
    static let issuerName = "test-issuer"
    static let service = "test-registry"
    /// distribution 2.8 accepts a JWT up to 60 s past its `exp` (`token.Leeway`). To make the
    /// registry really refuse a token once `expires_in` has passed, `exp` is set that much earlier.
    static let registryLeeway = 60

    static let users = ["alice": "secret", "bob": "builder", "carol": "carol-pw-8kq2Zr", "dave": "dave-pw-X4m7tn"]

    /// One request to the token endpoint.
    struct Issued: Sendable, CustomStringConvertible {
        let scopes: [String]
        /// The Basic user, nil for anonymous (or refused: see `status`).
        let user: String?
        let status: Int
        let token: String?
        let granted: [String]
        let at: ContinuousClock.Instant
        var description: String { "\(status) user=\(user ?? "-") scopes=\(scopes) granted=\(granted)" }
    }

    private struct State {
        var expiresIn = 300
        var compensateLeeway = true
        var log: [Issued] = []
        var serial = 0
    }

    /// The issuer's state, shared with the connection handlers (a `Mutex` is not copyable, so boxed).
    private final class Box: Sendable {
        let state = Mutex(State())
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    let signer: TokenAuthSigner
    let port: Int
    private let box: Box
    private let server: NIOAsyncChannel<Connection, Never>
    private let task: Task<Void, Never>

    var realm: String { "http://127.0.0.1:\(port)/token" }

    private init(signer: TokenAuthSigner, port: Int, box: Box, server: NIOAsyncChannel<Connection, Never>, task: Task<Void, Never>) {
        self.signer = signer
        self.port = port
        self.box = box
        self.server = server
        self.task = task
    }

    /// An HTTP/1.1 server (NIO, keep-alive) on 127.0.0.1:0.
    static func start(signer: TokenAuthSigner) async throws -> TokenAuthIssuer {
        let box = Box()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        guard let port = server.channel.localAddress?.port else {
            try? await server.channel.close()
            throw E2EError("the token issuer's socket has no port")
        }
        let task = Task {
            await withDiscardingTaskGroup { group in
                try? await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { try? await serve(connection, signer: signer, box: box) }
                    }
                }
                group.cancelAll()  // the listener is closed: drop idle keep-alive connections too
            }
        }
        return TokenAuthIssuer(signer: signer, port: port, box: box, server: server, task: task)
    }

    func stop() async {
        try? await server.channel.close()
        task.cancel()
        await task.value
    }

    private static func serve(_ connection: Connection, signer: TokenAuthSigner, box: Box) async throws {
        try await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            for try await part in inbound {
                switch part {
                case .head(let requestHead):
                    head = requestHead
                case .body:
                    break
                case .end:
                    guard let requestHead = head else { continue }
                    head = nil
                    let status: HTTPResponseStatus, headers: [(String, String)], body: String
                    do {
                        (status, headers, body) = try await handle(requestHead, signer: signer, box: box)
                    } catch {
                        Progress.step("tokenauth: the issuer failed on \(requestHead.uri): \(error)")
                        (status, headers, body) = (.internalServerError, [], #"{"details":"issuer failure"}"#)
                    }
                    var responseHead = HTTPResponseHead(version: requestHead.version, status: status)
                    responseHead.headers.add(name: "Content-Type", value: "application/json")
                    responseHead.headers.add(name: "Content-Length", value: String(body.utf8.count))
                    for (name, value) in headers { responseHead.headers.add(name: name, value: value) }
                    try await outbound.write(.head(responseHead))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(string: body))))
                    try await outbound.write(.end(nil))
                }
            }
        }
    }

    /// `expires_in` for tokens issued from now on.
    func setExpiresIn(_ seconds: Int) { box.state.withLock { $0.expiresIn = seconds } }

    /// Every request so far, in order.
    var log: [Issued] { box.state.withLock { $0.log } }
    var mark: Int { box.state.withLock { $0.log.count } }

    /// Requests after `mark` whose scopes include exactly `scope`.
    func requests(since mark: Int, scope: String) -> [Issued] {
        Array(log.dropFirst(mark)).filter { $0.scopes.contains(scope) }
    }

    // MARK: Handling

    private static func handle(_ request: HTTPRequestHead, signer: TokenAuthSigner, box: Box) async throws
        -> (HTTPResponseStatus, [(String, String)], String) {
        let components = URLComponents(string: request.uri)
        guard request.method == .GET, components?.path == "/token" else {
            return (.notFound, [], #"{"details":"not found"}"#)
        }
        let query = components?.queryItems ?? []
        let scopes = query.filter { $0.name == "scope" }.compactMap(\.value)
        let service = query.first { $0.name == "service" }?.value

        // Who is asking.
        var user: String?
        if let authorization = request.headers.first(name: "Authorization") {
            guard authorization.lowercased().hasPrefix("basic "),
                  let decoded = Data(base64Encoded: String(authorization.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
                  let text = String(data: decoded, encoding: .utf8), let colon = text.firstIndex(of: ":"),
                  Self.users[String(text[..<colon])] == String(text[text.index(after: colon)...])
            else {
                box.state.withLock { $0.log.append(Issued(scopes: scopes, user: nil, status: 401, token: nil, granted: [], at: .now)) }
                return (.unauthorized, [("WWW-Authenticate", #"Basic realm="test-issuer""#)], #"{"details":"incorrect username or password"}"#)
            }
            user = String(text[..<colon])
        }
        guard service == Self.service else {
            box.state.withLock { $0.log.append(Issued(scopes: scopes, user: user, status: 400, token: nil, granted: [], at: .now)) }
            return (.badRequest, [], #"{"details":"unknown service"}"#)
        }

        // What they may do.
        var access: [[String: Any]] = []
        var granted: [String] = []
        for scope in scopes {
            // type:name:actions, the name possibly holding a host:port.
            guard let first = scope.firstIndex(of: ":"), let last = scope.lastIndex(of: ":"), first < last else { continue }
            let type = String(scope[..<first])
            let name = String(scope[scope.index(after: first)..<last])
            let requested = scope[scope.index(after: last)...].split(separator: ",").map(String.init)
            guard type == "repository" else { continue }
            let allowed: Set<String>
            switch user {
            case "alice": allowed = ["pull", "push"]
            case "bob", nil: allowed = name.hasPrefix("public/") ? ["pull"] : []
            case "carol": allowed = name.hasPrefix("team-c/") ? ["pull"] : []
            case "dave": allowed = name.hasPrefix("team-d/") ? ["pull"] : []
            default: allowed = []
            }
            let actions = requested.filter { allowed.contains($0) || (user == "alice" && $0 == "*") }
            if !actions.isEmpty {
                access.append(["type": "repository", "name": name, "actions": actions])
                granted.append("repository:\(name):\(actions.joined(separator: ","))")
            }
        }

        let (expiresIn, compensate, serial) = box.state.withLock { state -> (Int, Bool, Int) in
            state.serial += 1
            return (state.expiresIn, state.compensateLeeway, state.serial)
        }
        let now = Int(Date().timeIntervalSince1970)
        let exp = now + expiresIn - (compensate ? Self.registryLeeway : 0)
        let claims: [String: Any] = [
            "iss": Self.issuerName,
            "sub": user ?? "",
            "aud": Self.service,
            "exp": exp,
            "nbf": now - 1,
            "iat": now,
            "jti": "token-\(serial)-\(UUID().uuidString)",
            "access": access,
        ]
        let token = try await signer.jwt(claims: claims)
        box.state.withLock { $0.log.append(Issued(scopes: scopes, user: user, status: 200, token: token, granted: granted, at: .now)) }
        let issuedAt = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(now)))
        let body = try TokenAuthSigner.json(["token": token, "access_token": token, "expires_in": expiresIn, "issued_at": issuedAt])
        return (.ok, [], String(decoding: body, as: UTF8.self))
    }
}

// MARK: - docker-registry behind token auth

/// A real docker-registry whose `auth: token:` section trusts `TokenAuthIssuer`.
enum TokenAuthRegistry {
    static func start(issuer: TokenAuthIssuer) async throws -> DistributionRegistry {
        try await DistributionRegistry.start(extraConfig: """
            auth:
              token:
                realm: \(issuer.realm)
                service: \(TokenAuthIssuer.service)
                issuer: \(TokenAuthIssuer.issuerName)
                rootcertbundle: \(issuer.signer.certificatePath)
            """, challenge: "bearer")
    }
}

// MARK: - The suite's fixture

/// Issuer + registry, with `public/img:v1` and `private/img:v1` pushed by alice.
final class TokenAuthFixture: Sendable {
    @TaskLocal static var current: TokenAuthFixture?

    static let credentials = "alice:secret"

    let work: TemporaryDirectory
    let issuer: TokenAuthIssuer
    let upstream: DistributionRegistry
    let publicImage: SyntheticImage
    let privateImage: SyntheticImage
    let seed: UInt64

    private init(work: TemporaryDirectory, issuer: TokenAuthIssuer, upstream: DistributionRegistry,
                 publicImage: SyntheticImage, privateImage: SyntheticImage, seed: UInt64) {
        self.work = work
        self.issuer = issuer
        self.upstream = upstream
        self.publicImage = publicImage
        self.privateImage = privateImage
        self.seed = seed
    }

    static func setUp() async throws -> TokenAuthFixture {
        _ = try TestPaths.requireMirrorBinary()
        for tool in ["skopeo", "docker-registry", "timeout", "openssl"] { _ = try TestPaths.executable(tool) }
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-tokenauth")
        let seed = UInt64.random(in: 1...UInt64.max / 2)
        Progress.step("tokenauth: making the issuer's key and certificate (seed \(seed))")
        let signer = try await TokenAuthSigner.make(in: work.url)
        let issuer = try await TokenAuthIssuer.start(signer: signer)
        Progress.step("tokenauth: issuer on 127.0.0.1:\(issuer.port); starting docker-registry")
        let upstream: DistributionRegistry
        do {
            upstream = try await TokenAuthRegistry.start(issuer: issuer)
        } catch {
            await issuer.stop()
            throw error
        }
        do {
            let publicImage = try SyntheticImages.single(at: try work.subdirectory("public-img"), tag: "v1", seed: seed)
            let privateImage = try SyntheticImages.single(at: try work.subdirectory("private-img"), tag: "v1", seed: seed &+ 1)
            Progress.step("tokenauth: docker-registry on \(upstream.host); pushing as alice")
            for (image, repository) in [(publicImage, "public/img"), (privateImage, "private/img")] {
                try await push(image, to: "\(upstream.host)/\(repository):v1")
            }
            Progress.step("tokenauth: fixture ready")
            return TokenAuthFixture(work: work, issuer: issuer, upstream: upstream,
                                    publicImage: publicImage, privateImage: privateImage, seed: seed)
        } catch {
            await upstream.stop()
            await issuer.stop()
            throw error
        }
    }

    static func push(_ image: SyntheticImage, to reference: String) async throws {
        try await Command.check("skopeo", [
            "copy", "--dest-creds", credentials, "--dest-tls-verify=false",
            "oci:\(image.layout.path):\(image.tag)", "docker://\(reference)",
        ])
    }

    func tearDown() async {
        Progress.step("tokenauth: tearing down")
        await upstream.stop()
        await issuer.stop()
        work.remove()
    }

    // MARK: Helpers

    /// A mirror on a fresh data directory, stopped after `body` whatever happens.
    func withMirror<T>(_ label: String, arguments: [String]? = nil,
                       _ body: (MirrorProcess, URL) async throws -> T) async throws -> T {
        let data = work.url.appendingPathComponent("mirror-\(label)-data")
        let logs = try work.subdirectory("mirror-\(label)-logs")
        let mirror = try await MirrorProcess.start(
            dataDirectory: data, logDirectory: logs,
            extraArguments: arguments ?? ["--upstream", "http://\(upstream.host)"])
        Progress.step("tokenauth: mirror \(label) on \(mirror.host)")
        do {
            let result = try await body(mirror, data)
            await mirror.stop()
            return result
        } catch {
            await mirror.stop()
            throw error
        }
    }

    /// A `--config` file naming the upstream `up` with `username` and a password file.
    func credentialsConfig(_ label: String, username: String, password: String) throws -> String {
        let passwordFile = work.url.appendingPathComponent("\(label)-password")
        try Data((password + "\n").utf8).write(to: passwordFile)
        let config = work.url.appendingPathComponent("\(label)-config.yaml")
        let yaml = """
            upstreams:
              - name: up
                url: "http://\(upstream.host)"
                username: \(username)
                password_file: \(passwordFile.path)

            """
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        return config.path
    }

    /// What the upstream serves for `repository:tag`, as alice sees it.
    func upstreamManifest(_ repository: String, _ tag: String) async throws -> [UInt8] {
        let result = try await Command.check("skopeo", [
            "inspect", "--raw", "--creds", Self.credentials, "--tls-verify=false", "docker://\(upstream.host)/\(repository):\(tag)",
        ])
        return [UInt8](result.stdoutData)
    }

    /// `skopeo copy` out of the mirror into a fresh OCI layout; the result and the layout.
    func pullThroughMirror(_ mirror: MirrorProcess, _ repository: String, _ tag: String) async throws -> (CommandResult, URL) {
        let out = work.url.appendingPathComponent("out-\(repository.replacingOccurrences(of: "/", with: "-"))-\(tag)-\(UUID().uuidString.prefix(6))")
        let result = try await Command.run("skopeo", [
            "copy", "--src-tls-verify=false", "docker://\(mirror.host)/\(repository):\(tag)", "oci:\(out.path):\(tag)",
        ])
        return (result, out)
    }

    /// Checks a layout copied out of the mirror against the upstream's manifest bytes:
    /// same root digest, and every blob present and hashing to its name.
    func expectLayout(_ layout: URL, tag: String, matches upstreamBytes: [UInt8],
                      sourceLocation: SourceLocation = #_sourceLocation) throws {
        let root = try MirrorFixture.layoutRootDigest(layout, tag: tag)
        #expect(root == upstreamBytes.sha256, "pulled root \(root), upstream serves \(upstreamBytes.sha256)", sourceLocation: sourceLocation)
        let document = try ManifestDocument(bytes: upstreamBytes)
        let expected = ([document.config].compactMap { $0 } + document.layers).map(\.digest)
        #expect(expected.count >= 2, sourceLocation: sourceLocation)
        for digest in expected {
            let bytes = try? MirrorFixture.blob(digest, in: layout)
            #expect(bytes?.sha256 == digest, "blob \(digest) missing or corrupt in \(layout.path)", sourceLocation: sourceLocation)
        }
    }
}

/// Runs a suite inside one `TokenAuthFixture`, torn down afterwards whatever happened.
struct TokenAuthEnvironmentTrait: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let fixture = try await TokenAuthFixture.setUp()
        do {
            try await TokenAuthFixture.$current.withValue(fixture) {
                try await function()
            }
        } catch {
            await fixture.tearDown()
            throw error
        }
        await fixture.tearDown()
    }
}

extension Trait where Self == TokenAuthEnvironmentTrait {
    /// Token issuer + docker-registry behind token auth + public/img:v1 and private/img:v1.
    static var tokenAuthEnvironment: Self { Self() }
}
