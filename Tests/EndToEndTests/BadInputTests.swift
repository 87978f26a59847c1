import Foundation
import OCI
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Hostile requests, sent as raw bytes to `registry-mirror serve --offline` over one imported
/// image: a table of known-bad inputs with exact answers, and a seeded storm of a few thousand
/// generated ones. Each gets a 4xx with the error envelope, never a 5xx, a hang or a crash; the
/// process serves a good request afterwards; files beside the data directory are never opened.
///
/// Requests the HTTP/1 decoder rejects (control bytes, unknown method tokens, a head over
/// 80 KiB) never reach the router. Hummingbird answers them with a bare 400;
/// `ParseErrorEnvelopeHandler` puts the envelope in (and makes an oversized head a 431), so
/// every error here must carry one.
@Suite("registry-mirror refuses bad client input", .serialized)
struct BadInputTests {
    /// REGISTRY_MIRROR_FUZZ_SEED replays a storm; REGISTRY_MIRROR_FUZZ_CASES sizes it.
    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["REGISTRY_MIRROR_FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
    }
    static var caseCount: Int { ProcessInfo.processInfo.environment["REGISTRY_MIRROR_FUZZ_CASES"].flatMap { Int($0) } ?? 3000 }

    @Test("a table of hostile names, digests, tags, ranges, heads and methods: the exact 4xx and code each deserves")
    func table() async throws {
        try await BadInputServer.with { server in
            var problems: [String] = []
            for entry in BadInputTable.entries(server) {
                let exchange = try RawHTTP.exchange(entry.request.bytes, port: server.port, timeout: 10)
                let outcome = BadInputCheck.check(entry.request, exchange, server)
                if let problem = outcome.problem {
                    problems.append("\(entry.request.label): \(problem)")
                    continue
                }
                if outcome.status != entry.status || (entry.code != nil && outcome.codes?.first != entry.code) {
                    problems.append("\(entry.request.label): expected \(entry.status) \(entry.code ?? ""), got \(outcome.status.map(String.init) ?? "none") \(outcome.codes ?? [])")
                }
            }
            #expect(problems.isEmpty, "\(problems.count) table cases went wrong:\n\(problems.joined(separator: "\n"))\n--- mirror stderr ---\n\(server.mirror.stderr.suffix(2000))")
            try await server.expectUnharmed()
        }
    }

    @Test("a seeded storm of generated hostile requests: never a 5xx, every error an envelope, the process unharmed")
    func storm() async throws {
        let seed = Self.seed
        let count = Self.caseCount
        Progress.step("bad input: \(count) generated requests, seed \(seed) (REGISTRY_MIRROR_FUZZ_SEED=\(seed) replays them)")
        try await BadInputServer.with { server in
            var rng = SeededGenerator(seed: seed)
            let requests = (0..<count).map { BadInputGenerator.make(&rng, server, index: $0) }
            let problems = Mutex<[String]>([])
            let statuses = Mutex<[String: Int]>([:])
            let clock = ContinuousClock()
            let started = clock.now
            await BadInputServer.onThreads(4) { thread in
                for request in requests.enumerated().filter({ $0.offset % 4 == thread }).map(\.element) {
                    let outcome: BadInputCheck.Outcome
                    do {
                        outcome = BadInputCheck.check(request, try RawHTTP.exchange(request.bytes, port: server.port, timeout: 10), server)
                    } catch {
                        outcome = .init(problem: "\(error)")
                    }
                    statuses.withLock { $0["\(outcome.status ?? 0) \(outcome.codes?.first ?? "")", default: 0] += 1 }
                    if let problem = outcome.problem { problems.withLock { $0.append("\(request.label): \(problem)") } }
                }
            }
            let found = problems.withLock { $0 }
            Progress.step("bad input: \(count) requests in \(clock.now - started); answers \(statuses.withLock { $0 }.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))")
            #expect(found.isEmpty, "seed \(seed): \(found.count) of \(count) requests went wrong (first 40):\n\(found.prefix(40).joined(separator: "\n"))\n--- mirror stderr ---\n\(server.mirror.stderr.suffix(2000))")
            try await server.expectUnharmed()
        }
    }
}

// MARK: - The server under test

/// `serve --offline` over one imported image, with sentinel files beside its data directory
/// that a path escaping the store would reach, watched with inotify.
struct BadInputServer: Sendable {
    static let repository = "test/img"

    let work: TemporaryDirectory
    let mirror: MirrorProcess
    let serverPID: Int32
    /// The image's manifest, config and layers, by digest.
    let contents: [Digest: [UInt8]]
    let manifest: Digest
    let layers: [Digest]
    /// What `GET /v2/test/img/tags/list` answers.
    let tagList: [UInt8]
    /// `WORK/sentinel`, and the same bytes at a store-shaped path outside the store,
    /// `WORK/blobs/sha256/<2>/<hex>`, named by their digest.
    let sentinels: [URL]
    let sentinelBytes: [UInt8]
    let sentinelModified: [Date]
    let watch: OpenWatch

    var port: Int { mirror.port }
    var sentinelDigest: Digest { sentinelBytes.sha256 }

    static func with(_ body: (BadInputServer) async throws -> Void) async throws {
        _ = try TestPaths.requireMirrorBinary()
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-badinput")
        defer { work.remove() }
        let image = try SyntheticImages.single(at: try work.subdirectory("layout"), tag: "v1", seed: 0xBAD)
        let data = work.url.appendingPathComponent("data")
        let imported = try await MirrorCLI.importBundle(image.layout.path, as: repository, dataDirectory: data)
        try #require(imported.succeeded, "\(imported.summary)")
        let platform = try #require(image.platforms.first)
        var contents: [Digest: [UInt8]] = [:]
        for blob in [platform.manifest, platform.config] + platform.layers {
            contents[blob.digest] = try Files.read(image.layout.appendingPathComponent("blobs/sha256/\(blob.digest.hex)"))
        }

        var rng = SeededGenerator(seed: 0x5E17)
        let sentinelBytes = rng.bytes(4096)
        let digest = sentinelBytes.sha256
        let shaped = try work.subdirectory("blobs/sha256/\(digest.hex.prefix(2))")
        let sentinels = [work.url.appendingPathComponent("sentinel"), shaped.appendingPathComponent(digest.hex)]
        for url in sentinels { try Files.write(sentinelBytes, to: url) }
        let modified = try sentinels.map { try #require(try FileManager.default.attributesOfItem(atPath: $0.path)[.modificationDate] as? Date) }
        let watch = try OpenWatch(directories: [work.url, shaped])

        let mirror = try await MirrorProcess.start(dataDirectory: data, logDirectory: try work.subdirectory("logs"))
        do {
            let pid = try #require(mirror.serverPID)
            let tags = try RawHTTP.get(port: mirror.port, path: "/v2/\(repository)/tags/list")
            try #require(tags.status == 200, "\(tags)")
            let server = BadInputServer(work: work, mirror: mirror, serverPID: pid, contents: contents, manifest: platform.manifest.digest,
                                        layers: platform.layers.map(\.digest), tagList: tags.body, sentinels: sentinels,
                                        sentinelBytes: sentinelBytes, sentinelModified: modified, watch: watch)
            try await body(server)
        } catch {
            await mirror.stop()
            throw error
        }
        await mirror.stop()
    }

    /// The same process still runs and serves a blob whole; no sentinel was opened or changed.
    func expectUnharmed(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        #expect(mirror.serverPID == serverPID, "the registry-mirror process (pid \(serverPID)) is gone\n\(mirror.stderr.suffix(3000))",
                sourceLocation: sourceLocation)
        let layer = layers[0]
        let good = try RawHTTP.get(port: port, path: "/v2/\(Self.repository)/blobs/\(layer)")
        let whole = good.status == 200 && good.body == contents[layer]
        #expect(whole, "a good GET after the bad input: \(good)", sourceLocation: sourceLocation)
        let opened = watch.events().filter { event in sentinels.contains { $0.lastPathComponent == event } }
        #expect(opened.isEmpty, "files outside the data directory were opened: \(opened)", sourceLocation: sourceLocation)
        for (url, modified) in zip(sentinels, sentinelModified) {
            let bytes = try Files.read(url)
            let now = try FileManager.default.attributesOfItem(atPath: url.path)[.modificationDate] as? Date
            #expect(bytes == sentinelBytes && now == modified, "\(url.path) changed", sourceLocation: sourceLocation)
        }
    }

    /// Runs `body(0..<count)` on `count` threads of their own (blocking sockets stay off the
    /// cooperative pool) and waits for all of them.
    static func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let group = DispatchGroup()
            for index in 0..<count {
                group.enter()
                Thread {
                    body(index)
                    group.leave()
                }.start()
            }
            group.notify(queue: .global()) { continuation.resume() }
        }
    }
}

/// inotify on a few directories: which of their entries were opened, read or written.
final class OpenWatch: Sendable {
    private let fd: Int32

    init(directories: [URL]) throws {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw E2EError("inotify_init1 failed: errno \(errno)") }
        for directory in directories where inotify_add_watch(fd, directory.path, UInt32(IN_OPEN | IN_ACCESS | IN_MODIFY)) < 0 {
            close(fd)
            throw E2EError("inotify_add_watch \(directory.path) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    /// Names of the entries touched since the last call.
    func events() -> [String] {
        var names: [String] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return names }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(buffer[offset + 12]) | Int(buffer[offset + 13]) << 8 | Int(buffer[offset + 14]) << 16 | Int(buffer[offset + 15]) << 24
                let name = buffer[(offset + 16)..<min(n, offset + 16 + length)].prefix { $0 != 0 }
                if !name.isEmpty { names.append(String(decoding: name, as: UTF8.self)) }
                offset += 16 + length
            }
        }
    }
}

// MARK: - Requests and what their answers must be

/// One request as bytes on the wire, and what may answer it.
struct BadInputRequest: Sendable {
    let label: String
    let method: String
    let bytes: [UInt8]
    /// nil: only a 4xx will do. Otherwise the request is well formed (hostile only in its
    /// headers, say), and a 2xx must carry these bytes, whole or the range asked for.
    let content: [UInt8]?

    /// `METHOD TARGET VERSION`, `Host`, `headers`, `Connection: close`.
    init(_ label: String, method: String, target: [UInt8], version: String = "HTTP/1.1", headers: [[UInt8]] = [], content: [UInt8]? = nil) {
        self.label = label
        self.method = method
        self.content = content
        var bytes = Array(method.utf8) + [0x20] + target + Array(" \(version)\r\nHost: 127.0.0.1\r\n".utf8)
        for header in headers { bytes += header + [13, 10] }
        bytes += Array("Connection: close\r\n\r\n".utf8)
        self.bytes = bytes
    }

    init(raw label: String, _ bytes: [UInt8]) {
        self.label = label
        self.method = ""
        self.bytes = bytes
        self.content = nil
    }
}

enum BadInputCheck {
    struct Outcome {
        var status: Int?
        var codes: [String]?
        var problem: String?
    }

    static func check(_ request: BadInputRequest, _ exchange: RawHTTP.Exchange, _ server: BadInputServer) -> Outcome {
        let head = request.method == "HEAD"
        guard let response = try? RawHTTP.parse(exchange.received, method: head ? "HEAD" : "GET", path: "") else {
            return Outcome(problem: "no parsable response (read ended by \(exchange.ending), send \(exchange.sendFailure ?? "ok")): \(String(decoding: exchange.received.prefix(200), as: UTF8.self))")
        }
        var outcome = Outcome(status: response.status, codes: response.errorCodes)
        func fail(_ why: String) -> Outcome {
            outcome.problem = "\(why): \(response.description.prefix(600))"
            return outcome
        }
        if response.body.count >= 64, response.body.firstRange(of: server.sentinelBytes.prefix(64)) != nil {
            return fail("the answer carries the sentinel file's bytes")
        }
        if response.status >= 500 { return fail("a 5xx") }
        if response.status >= 400 {
            guard head || Self.isEnvelope(response.body) else { return fail("an error without the envelope") }
            return outcome
        }
        guard let content = request.content else { return fail("a hostile request was not refused") }
        if head || response.status == 304 { return outcome }
        switch response.status {
        case 200 where response.body == content:
            return outcome
        case 206:
            let range = response.header("Content-Range")?.dropFirst("bytes ".count).split(separator: "/").first?.split(separator: "-").compactMap { Int($0) }
            if let range, range.count == 2, range[0] <= range[1], range[1] < content.count, response.body == Array(content[range[0]...range[1]]) {
                return outcome
            }
            return fail("a 206 whose body is not the range it names")
        default:
            return fail("a success that does not carry the content")
        }
    }

    /// `{"errors":[{"code":…,"message":…}, …]}` with at least one error.
    static func isEnvelope(_ body: [UInt8]) -> Bool {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let errors = object["errors"] as? [[String: Any]], !errors.isEmpty else { return false }
        return errors.allSatisfy { $0["code"] is String && $0["message"] is String }
    }
}

// MARK: - The table

enum BadInputTable {
    struct Entry {
        let request: BadInputRequest
        let status: Int
        let code: String?
    }

    static func entries(_ server: BadInputServer) -> [Entry] {
        let repo = BadInputServer.repository
        let layer = server.layers[0]
        let layerBytes = server.contents[layer] ?? []
        let hex = layer.hex
        let sentinel = server.sentinelDigest
        var entries: [Entry] = []
        func add(_ label: String, _ target: String, _ status: Int, _ code: String?, method: String = "GET", headers: [String] = [], content: [UInt8]? = nil) {
            entries.append(Entry(request: BadInputRequest(label, method: method, target: Array(target.utf8), headers: headers.map { Array($0.utf8) }, content: content),
                                 status: status, code: code))
        }
        func addBytes(_ label: String, _ target: [UInt8], _ status: Int, _ code: String?) {
            entries.append(Entry(request: BadInputRequest(label, method: "GET", target: target), status: status, code: code))
        }
        let blob = "/v2/\(repo)/blobs/"

        // Paths that would leave the store, were they ever joined to it.
        add("dot-dot to /etc/passwd", "/v2/../../etc/passwd", 404, "UNSUPPORTED")
        add("dot-dot name to the sentinel", "/v2/../../sentinel/blobs/\(sentinel)", 400, "NAME_INVALID")
        add("dot-dot after blobs", "\(blob)../../../../sentinel", 404, "UNSUPPORTED")
        add("dot-dot inside a digest", "\(blob)sha256:../../../sentinel", 404, "UNSUPPORTED")
        add("percent-encoded dot-dot name", "/v2/%2e%2e/%2e%2e/sentinel/blobs/\(sentinel)", 400, "NAME_INVALID")
        add("percent-encoded slash in a digest", "\(blob)sha256:..%2f..%2fsentinel", 400, "DIGEST_INVALID")
        add("percent-encoded slash in a name", "/v2/test%2fimg/manifests/v1", 400, "NAME_INVALID")
        add("the sentinel's own digest (stored outside the store)", "\(blob)\(sentinel)", 404, "BLOB_UNKNOWN")
        add("a digest of a blob stored under another name", "/v2/other/img/blobs/\(layer)", 404, "BLOB_UNKNOWN")
        // Names.
        add("uppercase name", "/v2/Test/Img/manifests/v1", 400, "NAME_INVALID")
        add("name of 256 characters", "/v2/\(String(repeating: "a", count: 256))/manifests/v1", 400, "NAME_INVALID")
        add("name of 8 KiB", "/v2/\(String(repeating: "ab/", count: 2800))manifests/v1", 400, "NAME_INVALID")
        add("percent-encoded NUL in a name", "/v2/test%00img/manifests/v1", 400, "NAME_INVALID")
        addBytes("raw NUL in a name", Array("/v2/test".utf8) + [0] + Array("img/manifests/v1".utf8), 400, "UNSUPPORTED")
        addBytes("raw control byte in a name", Array("/v2/test".utf8) + [1] + Array("img/manifests/v1".utf8), 400, "UNSUPPORTED")
        addBytes("raw DEL in a name", Array("/v2/test".utf8) + [0x7f] + Array("img/manifests/v1".utf8), 400, "UNSUPPORTED")
        // Digests and tags.
        add("digest one hex short", "\(blob)sha256:\(hex.dropLast())", 400, "DIGEST_INVALID")
        add("digest one hex long", "\(blob)sha256:\(hex)0", 400, "DIGEST_INVALID")
        add("uppercase hex", "\(blob)sha256:\(hex.uppercased())", 400, "DIGEST_INVALID")
        add("unknown algorithm", "\(blob)sha999:\(hex)", 400, "DIGEST_INVALID")
        add("md5", "\(blob)md5:\(hex.prefix(32))", 400, "DIGEST_INVALID")
        add("sha512 with a sha256's length", "\(blob)sha512:\(hex)", 400, "DIGEST_INVALID")
        add("no algorithm", "\(blob)\(hex)", 400, "DIGEST_INVALID")
        add("tag of 129 characters", "/v2/\(repo)/manifests/\(String(repeating: "t", count: 129))", 404, "MANIFEST_UNKNOWN")
        add("tag of 128 characters (valid, absent)", "/v2/\(repo)/manifests/\(String(repeating: "t", count: 128))", 404, "MANIFEST_UNKNOWN")
        add("tag starting with a dot", "/v2/\(repo)/manifests/.v1", 404, "MANIFEST_UNKNOWN")
        add("referrers of a bad digest", "/v2/\(repo)/referrers/sha256:\(hex.prefix(10))", 400, "DIGEST_INVALID")
        add("negative page size", "/v2/\(repo)/tags/list?n=-1", 400, "UNSUPPORTED")
        add("page size past Int", "/v2/\(repo)/tags/list?n=99999999999999999999999", 400, "UNSUPPORTED")
        add("unknown namespace", "\(blob)\(layer)?ns=../../etc", 404, "NAME_UNKNOWN")
        // Ranges on a stored blob.
        let target = "\(blob)\(layer)"
        add("inverted range", target, 416, "UNSUPPORTED", headers: ["Range: bytes=5-1"])
        add("range past the end", target, 416, "UNSUPPORTED", headers: ["Range: bytes=\(layerBytes.count)-"])
        add("huge range start", target, 416, "UNSUPPORTED", headers: ["Range: bytes=99999999999999999-"])
        add("range of 20 digits", target, 416, "UNSUPPORTED", headers: ["Range: bytes=0-99999999999999999999"])
        add("garbage range", target, 416, "UNSUPPORTED", headers: ["Range: bytes=abc"])
        add("negative range", target, 416, "UNSUPPORTED", headers: ["Range: bytes=-5--3"])
        add("empty suffix range", target, 416, "UNSUPPORTED", headers: ["Range: bytes=-0"])
        add("bare garbage Range", target, 416, "UNSUPPORTED", headers: ["Range: garbage"])
        add("several ranges (served whole, as RFC 9110 allows)", target, 200, nil, headers: ["Range: bytes=0-1,5-9,-3"], content: layerBytes)
        add("an unknown range unit (ignored)", target, 200, nil, headers: ["Range: items=0-5"], content: layerBytes)
        add("a good range", target, 206, nil, headers: ["Range: bytes=10-19"], content: layerBytes)
        // Heads and targets too large.
        add("a 64 KiB header line (under the 80 KiB limit)", target, 200, nil, headers: ["X-Padding: " + String(repeating: "p", count: 64 << 10)], content: layerBytes)
        add("a 100 KiB header line", target, 431, "UNSUPPORTED", headers: ["X-Padding: " + String(repeating: "p", count: 100 << 10)])
        add("2000 small headers", target, 431, "UNSUPPORTED", headers: (0..<2000).map { "X-H\($0): v" })
        add("a 100 KiB target", "/v2/\(String(repeating: "a/", count: 50 << 10))manifests/v1", 431, "UNSUPPORTED")
        // Methods.
        for method in ["PATCH", "PUT", "POST", "DELETE"] { add(method, target, 405, "UNSUPPORTED", method: method) }
        for method in ["PROPFIND", "OPTIONS", "TRACE", "MKCOL"] { add(method, target, 404, "UNSUPPORTED", method: method) }
        for method in ["XYZZY", "get", "G\u{1}ET"] { add("method \(method.debugDescription)", target, 400, "UNSUPPORTED", method: method) }
        // Not HTTP/1.
        entries.append(Entry(request: BadInputRequest("HTTP/9.9", method: "GET", target: Array(target.utf8), version: "HTTP/9.9"), status: 400, code: "UNSUPPORTED"))
        entries.append(Entry(request: BadInputRequest("header line without a colon", method: "GET", target: Array(target.utf8), headers: [Array("no colon here".utf8)]),
                             status: 400, code: "UNSUPPORTED"))
        entries.append(Entry(request: BadInputRequest(raw: "a TLS client hello", [0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03] + Array(repeating: 0, count: 32)),
                             status: 400, code: "UNSUPPORTED"))
        return entries
    }
}

// MARK: - The generator

/// Builds reproducible hostile requests from pieces, each known to be well formed or not. A
/// request with any bad piece in its method, target or version must be refused with a 4xx;
/// one that is bad only in its headers may be served, but only with the right bytes.
enum BadInputGenerator {
    typealias Piece = (bytes: [UInt8], bad: Bool)

    static func make(_ rng: inout SeededGenerator, _ server: BadInputServer, index: Int) -> BadInputRequest {
        let digests = Array(server.contents.keys).sorted { $0.hex < $1.hex }
        let good = digests[Int.random(in: 0..<digests.count, using: &rng)]
        let hex = good.hex

        let token = randomToken(&rng)
        let methods: [(Int, Piece)] = [
            (10, piece("GET")), (3, piece("HEAD")), (1, bad("PUT")), (1, bad("PATCH")), (1, bad("DELETE")), (1, bad("POST")),
            (1, bad("PROPFIND")), (1, bad("OPTIONS")), (1, bad("XYZZY")), (1, bad("get")), (1, bad(token)),
        ]
        let method = pick(&rng, methods)

        let longName = String(repeating: "a", count: Int.random(in: 256...1024, using: &rng))
        let deepName = String(repeating: "a/", count: Int.random(in: 128...600, using: &rng)) + "a"
        let control: [UInt8] = Array("test".utf8) + [UInt8.random(in: 0...31, using: &rng)] + Array("img".utf8)
        let high: [UInt8] = Array("test/".utf8) + [UInt8.random(in: 0x7f...0xff, using: &rng)] + Array("img".utf8)
        let mutated = insertRandomByte(&rng, into: Array("test/img".utf8))
        var names: [(Int, Piece)] = [(14, piece("test/img")), (2, piece("docker.io/test/img"))]
        names += ["TEST/img", "test/../img", "..", "../../..", "test/img/..", "%2e%2e/%2e%2e/sentinel", "test%2fimg", "..%2f..%2fsentinel",
                  "test//img", "test/img/", longName, deepName, "tést/img", "test/img%00", "te st/img"].map { (1, bad($0)) }
        names += [(1, (control, true)), (1, (high, true)), (2, (mutated, true))]
        let name = pick(&rng, names)

        let goodDigest = piece(good.description)
        let mutatedDigest = insertRandomByte(&rng, into: Array(good.description.utf8))
        var badDigests: [(Int, Piece)] = ["sha256:\(hex.uppercased())", "sha256:\(hex.dropLast())", "sha256:\(hex)a", "sha256:", "sha256",
                                          "sha999:\(hex)", "md5:\(hex.prefix(32))", "sha512:\(hex)", "sha256:../../../sentinel",
                                          "sha256:..%2f..%2fsentinel"].map { (1, bad($0)) }
        badDigests.append((1, (mutatedDigest, true)))
        // Well formed but not stored here (the sentinel's is stored outside the store): 404s.
        let absentDigests: [(Int, Piece)] = [server.sentinelDigest.description, Array("x".utf8).sha256.description, "sha512:\(hex)\(hex)"].map { (1, bad($0)) }
        let kind = Int.random(in: 0..<10, using: &rng)
        let path: Piece
        var content: [UInt8]?
        switch kind {
        case 0...3:
            let reference = pick(&rng, [(4, goodDigest)] + badDigests + absentDigests)
            path = join(name, "blobs", reference)
            content = server.contents[good]
        case 4...6:
            let tags: [(Int, Piece)] = [(2, piece("v1")), (2, piece(server.manifest.description))]
                + ["v2", String(repeating: "t", count: 128), String(repeating: "t", count: 129), ".v1", "-v1", "../v1", "v1%00"].map { (1, bad($0)) }
            let reference = pick(&rng, tags + badDigests + absentDigests)
            path = join(name, "manifests", reference)
            content = server.contents[server.manifest]
        case 7:
            let lists: [(Int, Piece)] = [(3, piece("list")), (1, bad("LIST")), (1, bad("list/x")), (1, bad(""))]
            path = join(name, "tags", pick(&rng, lists))
            content = server.tagList
        case 8:
            path = join(name, "referrers", pick(&rng, badDigests))
        default:
            let kinds: [(Int, Piece)] = ["MANIFESTS", "blobs/uploads", "", token].map { (1, bad($0)) }
            path = join(name, pick(&rng, kinds), piece("x"))
        }
        var query: Piece = ([], false)
        if Int.random(in: 0..<8, using: &rng) == 0 {
            let queries = ["?ns=../../etc", "?ns=%zz", "?ns=nowhere.example"] + (kind == 7 ? ["?n=-1", "?n=abc", "?n=99999999999999999999999"] : [])
            query = pick(&rng, queries.map { (1, bad($0)) })
        }
        let versions: [(Int, Piece)] = [(24, piece("HTTP/1.1")), (2, piece("HTTP/1.0")), (1, bad("HTTP/9.9")), (1, bad("HTTP/1.1x"))]
        let version = pick(&rng, versions)

        var headers: [[UInt8]] = []
        var badHeaders = false
        for _ in 0..<Int.random(in: 0...3, using: &rng) {
            let ranges = ["bytes=5-1", "bytes=-0", "bytes=0-1,5-9", "bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes=abc",
                          "bytes=--1", "bytes=-5--3", "items=0-1", "bytes=0-", "bytes=1-2", "bytes= 1 - 2", "",
                          "bytes=18446744073709551615-18446744073709551616", "bytes=\(Int.random(in: 0...500_000, using: &rng))-"]
            let accepts = ["*/*", "garbage", MediaType.ociManifest, ";;;,,,", "text/html"]
            let etags = ["*", "\"\(good)\"", "garbage", "W/\"x\""]
            let junk = String(decoding: (0..<Int.random(in: 1...2000, using: &rng)).map { _ in UInt8.random(in: 0x21...0x7e, using: &rng) }, as: UTF8.self)
            let nul: [UInt8] = Array("X-Nul: a".utf8) + [0] + Array("b".utf8)
            let choices: [(Int, Piece)] = [
                (6, piece("Range: " + ranges.randomElement(using: &rng)!)), (2, piece("Accept: " + accepts.randomElement(using: &rng)!)),
                (2, piece("If-None-Match: " + etags.randomElement(using: &rng)!)), (4, piece("X-Junk: " + junk)),
                (1, (padding64KiB, false)), (1, (padding100KiB, true)),
                (1, (nul, true)), (1, bad("no colon here")),
            ]
            let header = pick(&rng, choices)
            headers.append(header.bytes)
            badHeaders = badHeaders || header.bad
        }
        let hostile = method.bad || path.bad || query.bad || version.bad || badHeaders
        let label = "#\(index) \(String(decoding: method.bytes, as: UTF8.self).debugDescription) \(String(decoding: (path.bytes + query.bytes).prefix(160), as: UTF8.self).debugDescription) \(String(decoding: version.bytes, as: UTF8.self)) +\(headers.count) headers (\(headers.map { String(decoding: $0.prefix(40), as: UTF8.self).debugDescription }.joined(separator: ", ")))"
        return BadInputRequest(label, method: String(decoding: method.bytes, as: UTF8.self), target: path.bytes + query.bytes,
                               version: String(decoding: version.bytes, as: UTF8.self), headers: headers, content: hostile ? nil : content)
    }

    // Built once: copying 100 KiB strings into byte arrays for each request is slow in a debug build.
    static let padding64KiB = Array("X-Padding: ".utf8) + [UInt8](repeating: 0x70, count: 64 << 10)
    static let padding100KiB = Array("X-Padding: ".utf8) + [UInt8](repeating: 0x70, count: 100 << 10)

    static func piece(_ text: String) -> Piece { (Array(text.utf8), false) }
    static func bad(_ text: String) -> Piece { (Array(text.utf8), true) }

    static func join(_ name: Piece, _ kind: String, _ reference: Piece) -> Piece {
        join(name, piece(kind), reference)
    }

    static func join(_ name: Piece, _ kind: Piece, _ reference: Piece) -> Piece {
        (Array("/v2/".utf8) + name.bytes + [0x2f] + kind.bytes + [0x2f] + reference.bytes, name.bad || kind.bad || reference.bad)
    }

    static func pick(_ rng: inout SeededGenerator, _ weighted: [(Int, Piece)]) -> Piece {
        var roll = Int.random(in: 0..<weighted.reduce(0) { $0 + $1.0 }, using: &rng)
        for (weight, piece) in weighted {
            if roll < weight { return piece }
            roll -= weight
        }
        return weighted[weighted.count - 1].1
    }

    /// Never GET or HEAD, which could then be served.
    static func randomToken(_ rng: inout SeededGenerator) -> String {
        let token = String((0..<Int.random(in: 1...12, using: &rng)).map { _ in "ABCDEFGHIJKLMNOPQRSTUVWXYZ_-".randomElement(using: &rng)! })
        return token == "GET" || token == "HEAD" ? token + "X" : token
    }

    /// `bytes` with one random byte (any of 256) inserted: never the same name or digest again.
    static func insertRandomByte(_ rng: inout SeededGenerator, into bytes: [UInt8]) -> [UInt8] {
        var out = bytes
        // Not `?` or `#`: they end the path, and what is left can be a valid request
        // (`/v2/?test/img/…` is the base endpoint, rightly 200).
        var byte = UInt8.random(in: 0...255, using: &rng)
        while byte == UInt8(ascii: "?") || byte == UInt8(ascii: "#") { byte = UInt8.random(in: 0...255, using: &rng) }
        out.insert(byte, at: Int.random(in: 0...bytes.count, using: &rng))
        return out
    }
}
