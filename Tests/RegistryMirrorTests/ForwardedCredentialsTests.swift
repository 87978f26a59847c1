import ContentStore
import Foundation
import Logging
import MetadataIndex
@testable import Mirror
import OCI
import RegistryMirror
import Testing
@testable import Upstream

/// An upstream that forwards client credentials, in process: `FakeUpstream`'s content, and
/// a list of which client (by credential key) may read which repository. Anyone else gets
/// 401, as a registry behind token auth answers.
final class GatedUpstream: UpstreamClient {
    let fake: FakeUpstream
    let readers: [String: Set<String>]
    let client: ClientCredentials?

    init(_ fake: FakeUpstream, readers: [String: Set<String>], client: ClientCredentials? = nil) {
        self.fake = fake
        self.readers = readers
        self.client = client
    }

    var name: String { fake.name }
    var rateLimitRemaining: Int? { nil }
    var ignoresRanges: Bool { false }
    var forwardsClientCredentials: Bool { true }
    var forwardedClient: ClientCredentials? { client }
    func forwarding(_ client: ClientCredentials) -> any UpstreamClient { GatedUpstream(fake, readers: readers, client: client) }

    private func gate(_ repository: RepositoryName) throws(UpstreamError) {
        guard let client, readers[client.key]?.contains(repository.value) == true else {
            throw UpstreamError(.unauthorized, "\(client?.description ?? "no client") may not read \(repository)")
        }
    }

    func manifest(_ repository: RepositoryName, _ reference: ManifestReference, head: Bool) async throws(UpstreamError) -> UpstreamManifest {
        try gate(repository)
        return try await fake.manifest(repository, reference, head: head)
    }
    func blobSize(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> Int64? {
        try gate(repository)
        return try await fake.blobSize(repository, digest)
    }
    func fetchBlob(_ repository: RepositoryName, _ digest: Digest, sink: any TransferSink, from offset: Int64) async throws(UpstreamError) -> ResponseHead {
        try gate(repository)
        return try await fake.fetchBlob(repository, digest, sink: sink, from: offset)
    }
    func fetchBlobRange(_ repository: RepositoryName, _ digest: Digest, range: String, sink: any TransferSink) async throws(UpstreamError) -> ResponseHead {
        try gate(repository)
        return try await fake.fetchBlobRange(repository, digest, range: range, sink: sink)
    }
    func tags(_ repository: RepositoryName, maxPages: Int) async throws(UpstreamError) -> [String] {
        try gate(repository)
        return try await fake.tags(repository, maxPages: maxPages)
    }
    func referrers(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> [UInt8]? {
        try gate(repository)
        return try await fake.referrers(repository, digest)
    }
    /// A login: any client the upstream lists.
    func verifyCredentials() async throws(UpstreamError) {
        guard let client, readers[client.key] != nil else { throw UpstreamError(.unauthorized, "unknown client") }
    }
}

@Suite("Forwarded client credentials")
struct ForwardedCredentialsTests {
    static let carol = ClientCredentials(username: "carol", password: "c-secret")
    static let dave = ClientCredentials(username: "dave", password: "d-secret")

    @Test("a client's key: equal credentials, equal keys; any difference, another key; never the password")
    func credentialKeys() {
        #expect(Self.carol.key == ClientCredentials(username: "carol", password: "c-secret").key)
        #expect(Self.carol == ClientCredentials(username: "carol", password: "c-secret"))
        #expect(Self.carol.key != ClientCredentials(username: "carol", password: "c-secreT").key)
        #expect(Self.carol.key != Self.dave.key)
        // User and password cannot trade bytes.
        #expect(ClientCredentials(username: "ab", password: "c").key != ClientCredentials(username: "a", password: "bc").key)
        #expect(Self.carol.key.count == 64 && !Self.carol.key.contains("c-secret") && !Self.carol.key.contains("carol"))
        #expect(!"\(Self.carol)".contains("c-secret"))
        #expect(ClientCredentials.anonymous.isAnonymous && ClientCredentials.anonymous.key != Self.carol.key)
    }

    @Test("tokens are cached per (client, scope): one client's token is never sent for another's request")
    func tokenKeys() throws {
        var configuration = UpstreamConfiguration(name: "up.test", url: URL(string: "https://up.test")!)
        configuration.forwardClientCredentials = true
        let registry = UpstreamRegistry(configuration, transport: CurlTransport(), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let carol = try #require(registry.forwarding(Self.carol) as? UpstreamRegistry)
        let carolAgain = try #require(registry.forwarding(ClientCredentials(username: "carol", password: "c-secret")) as? UpstreamRegistry)
        let dave = try #require(registry.forwarding(Self.dave) as? UpstreamRegistry)
        let anonymous = try #require(registry.forwarding(.anonymous) as? UpstreamRegistry)
        let scope = "repository:team/c:pull"
        #expect(registry.tokenKey(scope) == "up.test|\(scope)", "the configured credentials' keys are unchanged")
        let keys = [carol, dave, anonymous, registry].map { $0.tokenKey(scope) }
        #expect(Set(keys).count == 4, "\(keys)")
        #expect(carol.tokenKey(scope) == carolAgain.tokenKey(scope))
        #expect(carol.tokenKey(scope) != carol.tokenKey("repository:team/d:pull"))
        #expect(!keys.contains { $0.contains("c-secret") || $0.contains("d-secret") })

        // One cache, shared by every view: carol's token is carol's alone.
        carol.tokens.store("carol-token", scope: carol.tokenKey(scope), expiresIn: 300)
        #expect(carol.authorizationHeader(scope: scope) == "Bearer carol-token")
        #expect(carolAgain.authorizationHeader(scope: scope) == "Bearer carol-token")
        #expect(dave.authorizationHeader(scope: scope) == nil)
        #expect(anonymous.authorizationHeader(scope: scope) == nil)
        #expect(registry.authorizationHeader(scope: scope) == nil)
        #expect(carol.forwardsClientCredentials && carol.forwardedClient == Self.carol && registry.forwardedClient == nil)
        #expect(carol.credentials?.username == "carol" && anonymous.credentials == nil)
    }

    @Test("the token cache is bounded: past capacity, expired entries go, and if none had, all")
    func tokenCacheBound() {
        let cache = TokenCache(capacity: 3)
        for i in 0..<3 { cache.store("t\(i)", scope: "s\(i)", expiresIn: 300) }
        #expect(cache.count == 3)
        cache.store("t3", scope: "s3", expiresIn: 300)
        #expect(cache.count == 1 && cache.token(for: "s3") == "t3")
        cache.store("again", scope: "s3", expiresIn: 300)
        #expect(cache.count == 1 && cache.token(for: "s3") == "again")
    }

    @Test("the access memo: a pair is allowed for its memo time, per client and repository; 0 s remembers nothing")
    func accessMemo() throws {
        var memo = AccessMemo(capacity: 2)
        let c = AccessMemo.Key(client: Self.carol.key, repository: RepositoryKey(upstream: "up", name: try RepositoryName(parsing: "team/c")))
        let cd = AccessMemo.Key(client: Self.carol.key, repository: RepositoryKey(upstream: "up", name: try RepositoryName(parsing: "team/d")))
        let dc = AccessMemo.Key(client: Self.dave.key, repository: c.repository)
        #expect(!memo.allows(c, nowMs: 0))
        memo.record(c, for: .seconds(60), nowMs: 1_000)
        #expect(memo.allows(c, nowMs: 1_000) && memo.allows(c, nowMs: 60_999))
        #expect(!memo.allows(c, nowMs: 61_000))
        #expect(!memo.allows(cd, nowMs: 1_000) && !memo.allows(dc, nowMs: 1_000))
        memo.record(cd, for: .zero, nowMs: 1_000)
        #expect(!memo.allows(cd, nowMs: 1_000) && memo.count == 1)
        // Bounded: the expired entry makes room; when none has expired, everything goes.
        memo.record(cd, for: .seconds(1), nowMs: 1_000)
        memo.record(dc, for: .seconds(60), nowMs: 30_000)
        #expect(memo.count == 2 && memo.allows(c, nowMs: 30_000) && memo.allows(dc, nowMs: 30_000))
        memo.record(cd, for: .seconds(60), nowMs: 31_000)
        #expect(memo.count == 1 && memo.allows(cd, nowMs: 31_000) && !memo.allows(c, nowMs: 31_000))
    }

    /// A pull-through registry over a gated upstream: carol reads team/c, dave team/d; both
    /// hold one shared layer.
    struct Fixture {
        let dir: TemporaryDirectory
        let clock = TestClock()
        let fake = FakeUpstream()
        let registry: PullThroughRegistry
        let image: (manifest: Digest, blobs: [Digest])
        let shared: Digest

        init(memo: Duration, offline: Bool = false) throws {
            dir = try TemporaryDirectory()
            let local = LocalRegistry(store: try FileSystemStore(root: dir.path), index: try SQLiteMetadataStore(path: dir.path + "/index.sqlite"))
            var policy = UpstreamPolicy()
            policy.accessMemo = memo
            let gated = GatedUpstream(fake, readers: [ForwardedCredentialsTests.carol.key: ["team/c"], ForwardedCredentialsTests.dave.key: ["team/d"]])
            registry = PullThroughRegistry(local: local, upstreams: [gated], policies: [fake.name: policy], offline: offline, clock: clock,
                                           logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            shared = fake.put(blob: Array("shared layer".utf8), in: "team/c", "team/d")
            let config = Array(#"{"architecture":"amd64","os":"linux"}"#.utf8)
            let configDigest = fake.put(blob: config, in: "team/c")
            let manifest = Array("""
                {"schemaVersion":2,"mediaType":"\(MediaType.ociManifest)",\
                "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\(configDigest)","size":\(config.count)},\
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"\(shared)","size":12}]}
                """.utf8)
            image = (fake.put(manifest: manifest, mediaType: MediaType.ociManifest, in: "team/c", tag: "1"), [configDigest, shared])
        }

        func key(_ name: String) throws -> RepositoryKey { RepositoryKey(upstream: fake.name, name: try RepositoryName(parsing: name)) }

        func tag(_ repository: String, as client: ClientCredentials) async throws -> ManifestContent {
            try await RequestClient.$credentials.withValue(client) {
                try await registry.manifest(try key(repository), .tag(try Tag(parsing: "1")))
            }
        }

        func blob(_ repository: String, _ digest: Digest, as client: ClientCredentials) async throws -> BlobContent {
            try await RequestClient.$credentials.withValue(client) { try await registry.blob(try key(repository), digest) }
        }
    }

    static func isUnauthorized(_ error: any Error) -> Bool { (error as? MirrorError)?.code == .unauthorized }

    @Test("cached content goes only to a client the upstream allowed, asked once per access_memo; another client gets 401, even for what is cached")
    func cachedContentNeedsTheClientsAccess() async throws {
        let f = try Fixture(memo: .seconds(60))
        defer { f.dir.remove() }
        let cold = try await f.tag("team/c", as: Self.carol)
        #expect(cold.digest == f.image.manifest)
        let heads = f.fake.calls["manifestHead team/c"]
        #expect(heads >= 1)

        // Within the memo (and the tag TTL), carol's next request asks nothing.
        #expect(try await f.tag("team/c", as: Self.carol).cacheResult == .hit)
        #expect(f.fake.calls["manifestHead team/c"] == heads)

        // Dave and anonymous clients get the upstream's 401, for the cached tag, manifest and blob.
        for client in [Self.dave, ClientCredentials.anonymous, ClientCredentials(username: "carol", password: "guess")] {
            await #expect { _ = try await f.tag("team/c", as: client) } throws: { Self.isUnauthorized($0) }
            await #expect {
                try await RequestClient.$credentials.withValue(client) { _ = try await f.registry.manifest(try f.key("team/c"), .digest(f.image.manifest)) }
            } throws: { Self.isUnauthorized($0) }
            await #expect { _ = try await f.blob("team/c", f.image.blobs[0], as: client) } throws: { Self.isUnauthorized($0) }
            await #expect {
                try await RequestClient.$credentials.withValue(client) { _ = try await f.registry.blobSize(try f.key("team/c"), f.image.blobs[0]) }
            } throws: { Self.isUnauthorized($0) }
            await #expect {
                try await RequestClient.$credentials.withValue(client) { _ = try await f.registry.tags(try f.key("team/c")) }
            } throws: { Self.isUnauthorized($0) }
        }
        // Without a request's client (seed, the watch list), the mirror is anonymous.
        await #expect { _ = try await f.registry.manifest(try f.key("team/c"), .tag(try Tag(parsing: "1"))) } throws: { Self.isUnauthorized($0) }

        // After the memo, carol is asked about again: one HEAD.
        f.clock.advance(by: .seconds(61))
        #expect(try await f.tag("team/c", as: Self.carol).cacheResult == .hit)
        #expect(f.fake.calls["manifestHead team/c"] == heads + 1)
    }

    @Test("one download of a shared blob: the second client joins or hits it only after its own access check")
    func sharedBlobIsFetchedOnce() async throws {
        let f = try Fixture(memo: .seconds(60))
        defer { f.dir.remove() }
        f.fake.hold(.blobGet)
        let first = try await f.blob("team/c", f.shared, as: Self.carol)
        #expect(await f.fake.calls.wait("blobGet", reaches: 1))
        let second = try await f.blob("team/d", f.shared, as: Self.dave)
        #expect(f.fake.calls["blobHead team/d"] == 1, "dave's access was checked")
        f.fake.release(.blobGet)
        for content in [first, second] {
            _ = try await content.fill?.completed()
        }
        #expect(f.fake.calls["blobGet"] == 1)
        // Anonymous gets nothing of it, though it is cached now.
        await #expect { _ = try await f.blob("team/d", f.shared, as: .anonymous) } throws: { Self.isUnauthorized($0) }
        #expect(f.fake.calls["blobGet"] == 1)
    }

    @Test("offline, nothing of a forwarding upstream is served: nobody can vouch for the client")
    func offlineRefuses() async throws {
        let f = try Fixture(memo: .seconds(60))
        defer { f.dir.remove() }
        _ = try await f.tag("team/c", as: Self.carol)
        let offline = PullThroughRegistry(local: f.registry.local, upstreams: [GatedUpstream(f.fake, readers: [:])], offline: true,
                                          logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        try await RequestClient.$credentials.withValue(Self.carol) {
            await #expect { _ = try await offline.manifest(try f.key("team/c"), .digest(f.image.manifest)) } throws: {
                ($0 as? MirrorError)?.code == .upstreamUnavailable
            }
            await #expect { _ = try await offline.blob(try f.key("team/c"), f.shared) } throws: { ($0 as? MirrorError)?.code == .upstreamUnavailable }
        }
    }

    @Test("a login is the upstream's to accept")
    func loginIsVerified() async throws {
        let f = try Fixture(memo: .seconds(60))
        defer { f.dir.remove() }
        try await RequestClient.$credentials.withValue(Self.carol) { try await f.registry.verifyClient(of: f.fake.name) }
        await #expect {
            try await RequestClient.$credentials.withValue(ClientCredentials(username: "carol", password: "guess")) {
                try await f.registry.verifyClient(of: f.fake.name)
            }
        } throws: { Self.isUnauthorized($0) }
        // An upstream that does not forward credentials has nothing to say about a login.
        try await f.registry.verifyClient(of: "elsewhere.test")
    }

    @Test("with access_memo 0s, every request asks the upstream")
    func zeroMemoAsksEveryTime() async throws {
        let f = try Fixture(memo: .zero)
        defer { f.dir.remove() }
        _ = try await f.tag("team/c", as: Self.carol)
        let heads = f.fake.calls["manifestHead team/c"]
        _ = try await f.tag("team/c", as: Self.carol)
        _ = try await f.tag("team/c", as: Self.carol)
        #expect(f.fake.calls["manifestHead team/c"] == heads + 2)
    }
}

/// `upstreams[].forward_client_credentials` and `access_memo`: what they set, and what they refuse.
@Suite struct ForwardedCredentialsConfigurationTests {
    func load(_ yaml: String) throws(ConfigurationError) -> MirrorConfiguration {
        let dir = try! TemporaryDirectory()
        defer { dir.remove() }
        try! yaml.write(toFile: dir.path + "/c.yaml", atomically: true, encoding: .utf8)
        return try MirrorConfiguration.load(file: dir.path + "/c.yaml", environment: [:])
    }

    @Test func theShippedExampleForwardsToItsPrivateUpstreamOnly() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = try MirrorConfiguration.load(file: try ShippedFiles.stageConfig("forwarded-credentials.yaml", in: dir), environment: [:])
        let corp = try #require(config.upstreams.first)
        #expect(corp.forwardClientCredentials && corp.accessMemo == .seconds(60) && corp.username == nil)
        #expect(config.upstreams.dropFirst().allSatisfy { !$0.forwardClientCredentials })
        let settings = config.serveSettings
        #expect(settings.credentialForwarding?.upstreams == ["registry.corp.example"])
        #expect(settings.upstreams.map(\.forwardClientCredentials) == [true, false])
        #expect(settings.policies["registry.corp.example"]?.accessMemo == .seconds(60))
        #expect(settings.tls != nil, "forwarded passwords travel over TLS in the example")
        #expect(MirrorConfiguration().serveSettings.credentialForwarding == nil, "off by default")
    }

    @Test func keysAreReadAndChecked() throws {
        let config = try load("""
            upstreams:
              - url: https://a.example
                forward_client_credentials: true
                access_memo: 0s
              - url: https://b.example
            """)
        #expect(config.upstreams[0].forwardClientCredentials && config.upstreams[0].accessMemo == .zero)
        #expect(!config.upstreams[1].forwardClientCredentials && config.upstreams[1].accessMemo == .seconds(60))
        #expect("\(config.upstreams[0])".contains("forwardClientCredentials: true"))

        var problems: [String] = []
        do {
            _ = try load("""
                upstreams:
                  - url: https://a.example
                    forward_client_credentials: maybe
                    access_memo: soon
                  - url: https://b.example
                    username: robot
                    password_env: HOME
                    forward_client_credentials: true
                """)
        } catch {
            problems = error.problems
        }
        #expect(problems.contains { $0.hasPrefix("upstreams[0].forward_client_credentials:") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("upstreams[0].access_memo:") }, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("upstreams[1]:") && $0.contains("remove username") }, "\(problems)")
    }
}
