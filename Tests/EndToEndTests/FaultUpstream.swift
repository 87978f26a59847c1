import Foundation
import OCI
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How the fake upstream misbehaves for one reference (a blob digest, or a manifest digest).
enum FaultMode: Sendable, Equatable, CustomStringConvertible {
    /// Serve the right bytes.
    case none
    /// Same length, different bytes (one byte in the middle flipped).
    case wrongBytes
    /// The full `Content-Length`, half the bytes, then a clean close (FIN).
    case truncate
    /// The full `Content-Length`, a quarter of the bytes, then an RST (SO_LINGER 0 + close).
    case reset
    /// Bytes that do not hash to the requested digest (the real JSON plus a newline); the
    /// `Docker-Content-Digest` header still claims the requested digest.
    case manifestWrongDigest
    /// Answer `code` (with an error envelope) to the next `times` requests, then behave as `.none`.
    case status(Int, times: Int)
    /// Close the next `times` connections after reading the request, without any answer; then `.none`.
    case dropConnection(times: Int)
    /// For the next `times` requests: the response head (full `Content-Length`), no body byte,
    /// then an RST; then `.none`.
    case resetAfterHeaders(times: Int)
    /// Answer 429 with `Retry-After: retryAfter` (and an error envelope) to the next `times`
    /// requests, then behave as `.none`.
    case rateLimited(retryAfter: String, times: Int)
    /// A `Content-Length` off by `delta` (positive: longer than the body), the whole body, then FIN.
    case contentLength(delta: Int)
    /// The response head (full `Content-Length`), then one body byte every 250 ms until the peer leaves.
    case dripBody
    /// The response head itself, one byte every 250 ms, until the peer leaves.
    case dripHead
    /// Reads the request and answers nothing, holding the connection until the peer leaves.
    case hang
    /// The head (full `Content-Length`) and the first `afterBytes` bytes, then nothing until
    /// the peer leaves (or 60 s pass, then the rest): a fill caught mid-way.
    case stall(afterBytes: Int)
    /// `Transfer-Encoding: chunked` with no `Content-Length`, the right bytes in 64 KiB
    /// chunks; a HEAD answers with no length either.
    case chunked

    var description: String {
        switch self {
        case .none: "none"
        case .wrongBytes: "wrongBytes"
        case .truncate: "truncate"
        case .reset: "reset"
        case .manifestWrongDigest: "manifestWrongDigest"
        case .status(let code, let times): "status(\(code), times: \(times))"
        case .dropConnection(let times): "dropConnection(times: \(times))"
        case .resetAfterHeaders(let times): "resetAfterHeaders(times: \(times))"
        case .rateLimited(let retryAfter, let times): "rateLimited(retryAfter: \(retryAfter), times: \(times))"
        case .contentLength(let delta): "contentLength(delta: \(delta))"
        case .dripBody: "dripBody"
        case .dripHead: "dripHead"
        case .hang: "hang"
        case .stall(let afterBytes): "stall(afterBytes: \(afterBytes))"
        case .chunked: "chunked"
        }
    }
}

/// A small synthetic single-platform OCI image: a config, uncompressed tar layers of random
/// content, and the manifest over them.
struct FaultImage: Sendable {
    static let repository = "test/img"
    static let tag = "v1"
    static let layerType = "application/vnd.oci.image.layer.v1.tar"
    static let configType = "application/vnd.oci.image.config.v1+json"

    let manifest: [UInt8]
    let manifestDigest: Digest
    let config: [UInt8]
    let configDigest: Digest
    let layers: [(digest: Digest, bytes: [UInt8])]

    /// Every blob (config and layers) by digest.
    var blobs: [Digest: [UInt8]] {
        var out = [configDigest: config]
        for layer in layers { out[layer.digest] = layer.bytes }
        return out
    }

    /// `layerSizes` are the sizes of the random file inside each layer's tar.
    static func make(layerSizes: [Int], seed: UInt64 = UInt64.random(in: 1...UInt64.max)) -> FaultImage {
        var rng = SeededGenerator(seed: seed)
        var layers: [(digest: Digest, bytes: [UInt8])] = []
        for (i, size) in layerSizes.enumerated() {
            let tar = Ustar.archive([("fault-layer\(i).bin", rng.bytes(size))])
            layers.append((tar.sha256, tar))
        }
        let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
        let config = Array(#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{}}"#.utf8)
        let configDigest = config.sha256
        let layerDescriptors = layers.map { #"{"mediaType":"\#(layerType)","digest":"\#($0.digest)","size":\#($0.bytes.count)}"# }
        let manifestText = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":{"mediaType":"\#(configType)","digest":"\#(configDigest)","size":\#(config.count)},"layers":[\#(layerDescriptors.joined(separator: ","))]}"#
        let manifest = Array(manifestText.utf8)
        return FaultImage(manifest: manifest, manifestDigest: manifest.sha256, config: config, configDigest: configDigest, layers: layers)
    }
}

/// A fixed answer for one exact path, checked before the registry endpoints (and after the
/// Basic-auth check, when one is required).
enum FaultRoute: Sendable {
    /// `status` (a 3xx) with `Location: location` and an empty body.
    case redirect(String, status: Int = 307)
    /// 200 with these bytes; `Docker-Content-Digest` when `digest` is given.
    case content([UInt8], contentType: String, digest: Digest? = nil)
    /// 401 with this `WWW-Authenticate` value.
    case challenge(String)
}

/// One request as the fake received it.
struct FaultRecordedRequest: Sendable, CustomStringConvertible {
    let method: String
    let path: String
    let headers: [(name: String, value: String)]

    func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
    }

    var description: String {
        "\(method) \(path) [\(headers.map { "\($0.name): \($0.value)" }.joined(separator: "; "))]"
    }
}

/// A fake upstream registry on a plain POSIX socket (one thread per connection, one request
/// per connection, `Connection: close`), serving one `FaultImage` under `test/img`:
///
/// - `GET /v2/` → 200 `{}`
/// - `HEAD/GET /v2/test/img/manifests/<v1|digest>` → the manifest
/// - `HEAD/GET /v2/test/img/blobs/<digest>` → the blob
///
/// Faults are set per reference (the last path component: a digest, or the tag) and can be
/// switched at runtime. Every request is counted per "METHOD /path" and recorded with its
/// headers. Optionally it requires Basic auth (`requiredAuthorization`), and fixed answers
/// (redirects, arbitrary content) can be set per exact path (`setRoute`).
final class FaultUpstream: Sendable {
    let port: Int
    let image: FaultImage
    private let blobs: [Digest: [UInt8]]
    private let listener: Int32

    private struct State {
        var faults: [String: FaultMode] = [:]
        var routes: [String: FaultRoute] = [:]
        /// When set, every request without exactly this `Authorization` gets a Basic 401.
        var requiredAuthorization: String?
        var requests: [FaultRecordedRequest] = []
        var counts: [String: Int] = [:]
        var log: [String] = []
        /// While set, a `.truncate` response waits after its partial body, before closing.
        var holdTruncation = false
        /// Sent with every answer `respond` writes (Docker Hub's `ratelimit-remaining`, say).
        var extraHeaders: [(String, String)] = []
        var stopping = false
        var activeHandlers = 0
        var acceptLoopRunning = true
    }
    private let state = Mutex(State())

    var host: String { "127.0.0.1:\(port)" }

    private init(port: Int, listener: Int32, image: FaultImage) {
        self.port = port
        self.listener = listener
        self.image = image
        self.blobs = image.blobs
    }

    static func start(image: FaultImage) throws -> FaultUpstream {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw E2EError("fake upstream: socket() failed: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let code = errno
            close(fd)
            throw E2EError("fake upstream: bind/listen on 127.0.0.1:0 failed: errno \(code)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            close(fd)
            throw E2EError("fake upstream: getsockname failed: errno \(errno)")
        }
        let server = FaultUpstream(port: Int(UInt16(bigEndian: addr.sin_port)), listener: fd, image: image)
        let thread = Thread { server.acceptLoop() }
        thread.name = "fault-upstream-accept"
        thread.start()
        return server
    }

    // MARK: Control

    func setFault(_ mode: FaultMode, for reference: String) {
        state.withLock { $0.faults[reference] = mode }
    }

    func setFault(_ mode: FaultMode, for digest: Digest) { setFault(mode, for: digest.description) }

    /// A fixed answer for `path` (exact, without query); nil removes it.
    func setRoute(_ route: FaultRoute?, for path: String) {
        state.withLock { $0.routes[path] = route }
    }

    /// When set, requests without exactly this `Authorization` value are answered
    /// `401` with `WWW-Authenticate: Basic realm="fake"`.
    var requiredAuthorization: String? {
        get { state.withLock { $0.requiredAuthorization } }
        set { state.withLock { $0.requiredAuthorization = newValue } }
    }

    /// Every request so far, with its headers, optionally only those for `path`.
    func requests(_ path: String? = nil) -> [FaultRecordedRequest] {
        state.withLock { s in path.map { p in s.requests.filter { $0.path == p } } ?? s.requests }
    }

    var holdTruncation: Bool {
        get { state.withLock { $0.holdTruncation } }
        set { state.withLock { $0.holdTruncation = newValue } }
    }

    /// Headers added to every ordinary answer, such as Docker Hub's rate-limit headers, which a
    /// real docker-registry never sends.
    var extraHeaders: [(String, String)] {
        get { state.withLock { $0.extraHeaders } }
        set { state.withLock { $0.extraHeaders = newValue } }
    }

    /// How many `method path` requests arrived (path without query).
    func count(_ method: String, _ path: String) -> Int {
        state.withLock { $0.counts["\(method) \(path)"] ?? 0 }
    }

    /// Every request so far, "METHOD /path -> what was done", for failure messages.
    var log: [String] { state.withLock { $0.log } }

    /// Stops accepting, wakes held responses, and waits (up to 10 s) for handlers to finish.
    func stop() async {
        let first = state.withLock { s -> Bool in
            defer { s.stopping = true }
            return !s.stopping
        }
        guard first else { return }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while clock.now < deadline {
            let busy = state.withLock { $0.activeHandlers > 0 || $0.acceptLoopRunning }
            if !busy { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        close(listener)
    }

    // MARK: Serving

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func acceptLoop() {
        defer { state.withLock { $0.acceptLoopRunning = false } }
        while !stopping {
            var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, 100)
            if ready <= 0 { continue }
            let client = accept(listener, nil, nil)
            if client < 0 { continue }
            state.withLock { $0.activeHandlers += 1 }
            let thread = Thread { [self] in
                defer { state.withLock { $0.activeHandlers -= 1 } }
                handle(client)
            }
            thread.name = "fault-upstream-conn"
            thread.start()
        }
    }

    private func handle(_ fd: Int32) {
        var closed = false
        defer { if !closed { close(fd) } }
        var tv = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

        // The request head (no request bodies here).
        var raw: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while raw.firstRange(of: [13, 10, 13, 10]) == nil {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0, raw.count < 64 * 1024 else { return }
            raw.append(contentsOf: buffer[0..<n])
        }
        let firstLine = String(decoding: raw.prefix { $0 != 13 }, as: UTF8.self)
        let parts = firstLine.split(separator: " ")
        guard parts.count >= 2 else { return }
        let method = String(parts[0])
        let target = String(parts[1])
        let path = String(target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        let head = method == "HEAD"
        var headers: [(name: String, value: String)] = []
        let headText = String(decoding: raw[..<(raw.firstRange(of: [13, 10, 13, 10])!.lowerBound)], as: UTF8.self)
        for line in headText.components(separatedBy: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let recorded = FaultRecordedRequest(method: method, path: path, headers: headers)
        let (route, required) = state.withLock { s -> (FaultRoute?, String?) in
            s.counts["\(method) \(path)", default: 0] += 1
            s.requests.append(recorded)
            return (s.routes[path], s.requiredAuthorization)
        }

        func note(_ what: String) { state.withLock { $0.log.append("\(method) \(path) -> \(what)") } }

        if let required, recorded.header("Authorization") != required {
            note("401 (\(recorded.header("Authorization") == nil ? "no" : "wrong") Authorization)")
            _ = respond(fd, status: 401, headers: [("Content-Type", "application/json"), ("WWW-Authenticate", #"Basic realm="fake""#)],
                        body: Self.envelope("UNAUTHORIZED", "authentication required"), head: head)
            return
        }
        switch route {
        case .redirect(let location, let status):
            note("\(status) Location: \(location)")
            _ = respond(fd, status: status, headers: [("Location", location)], body: [], head: head)
            return
        case .content(let bytes, let contentType, let digest):
            note("200 route, \(bytes.count) B\(head ? " (HEAD)" : "")")
            var headers = [("Content-Type", contentType)]
            if let digest { headers.append(("Docker-Content-Digest", digest.description)) }
            _ = respond(fd, status: 200, headers: headers, body: bytes, head: head)
            return
        case .challenge(let value):
            note("401 WWW-Authenticate: \(value)")
            _ = respond(fd, status: 401, headers: [("Content-Type", "application/json"), ("WWW-Authenticate", value)],
                        body: Self.envelope("UNAUTHORIZED", "authentication required"), head: head)
            return
        case nil:
            break
        }

        if path == "/v2/" || path == "/v2" {
            note("200 base")
            _ = respond(fd, status: 200, headers: [("Content-Type", "application/json")], body: Array("{}".utf8), head: head)
            return
        }
        guard method == "GET" || head else {
            note("405")
            _ = respond(fd, status: 405, headers: [("Content-Type", "application/json")], body: Self.envelope("UNSUPPORTED", "read-only"), head: head)
            return
        }

        let manifestPrefix = "/v2/\(FaultImage.repository)/manifests/"
        let blobPrefix = "/v2/\(FaultImage.repository)/blobs/"
        let reference: String
        let content: [UInt8]
        let contentType: String
        let digest: Digest
        if path.hasPrefix(manifestPrefix) {
            reference = String(path.dropFirst(manifestPrefix.count))
            guard reference == FaultImage.tag || reference == image.manifestDigest.description else {
                note("404 manifest")
                _ = respond(fd, status: 404, headers: [("Content-Type", "application/json")], body: Self.envelope("MANIFEST_UNKNOWN", "manifest unknown"), head: head)
                return
            }
            content = image.manifest
            contentType = MediaType.ociManifest
            digest = image.manifestDigest
        } else if path.hasPrefix(blobPrefix) {
            reference = String(path.dropFirst(blobPrefix.count))
            guard let parsed = try? Digest(parsing: reference), let bytes = blobs[parsed] else {
                note("404 blob")
                _ = respond(fd, status: 404, headers: [("Content-Type", "application/json")], body: Self.envelope("BLOB_UNKNOWN", "blob unknown"), head: head)
                return
            }
            content = bytes
            contentType = "application/octet-stream"
            digest = parsed
        } else {
            note("404 endpoint")
            _ = respond(fd, status: 404, headers: [("Content-Type", "application/json")], body: Self.envelope("NOT_FOUND", "no such endpoint"), head: head)
            return
        }

        // The fault for this reference; a `.status` fault counts down here.
        let mode = state.withLock { s -> FaultMode in
            let mode = s.faults[reference] ?? .none
            let next: FaultMode? = switch mode {
            case .status(let code, let times): times <= 1 ? FaultMode.none : .status(code, times: times - 1)
            case .dropConnection(let times): times <= 1 ? FaultMode.none : .dropConnection(times: times - 1)
            case .resetAfterHeaders(let times): times <= 1 ? FaultMode.none : .resetAfterHeaders(times: times - 1)
            case .rateLimited(let retryAfter, let times): times <= 1 ? FaultMode.none : .rateLimited(retryAfter: retryAfter, times: times - 1)
            default: nil
            }
            if let next { s.faults[reference] = next }
            return mode
        }
        let baseHeaders = [("Content-Type", contentType), ("Docker-Content-Digest", digest.description)]

        if case .status(let code, _) = mode {
            note("\(code) (injected)")
            _ = respond(fd, status: code, headers: [("Content-Type", "application/json")], body: Self.envelope("UNKNOWN", "injected failure"), head: head)
            return
        }
        if case .rateLimited(let retryAfter, _) = mode {
            note("429 Retry-After: \(retryAfter) (injected)")
            _ = respond(fd, status: 429, headers: [("Content-Type", "application/json"), ("Retry-After", retryAfter)],
                        body: Self.envelope("TOOMANYREQUESTS", "injected rate limit"), head: head)
            return
        }
        if case .dropConnection = mode {
            note("closed without an answer (injected)")
            return
        }
        if mode == .hang {
            let left = hold(fd, limit: .seconds(60))
            note("no answer, held \(left ? "until the peer left" : "to the limit") (injected)")
            return
        }
        if mode == .dripHead {
            let sent = drip(fd, Self.responseHead(status: 200, headers: baseHeaders, contentLength: content.count))
            note("dripped \(sent) bytes of the response head (injected)")
            return
        }
        if mode == .chunked {
            var text = Self.responseHead(status: 200, headers: baseHeaders, contentLength: nil)
            if !head {
                var chunks: [UInt8] = []
                for start in stride(from: 0, to: content.count, by: 64 << 10) {
                    let piece = content[start..<min(start + (64 << 10), content.count)]
                    chunks += Array((String(piece.count, radix: 16) + "\r\n").utf8) + piece + [13, 10]
                }
                text += chunks + Array("0\r\n\r\n".utf8)
            }
            note("200 chunked, \(content.count) B, no Content-Length\(head ? " (HEAD)" : "")")
            _ = Self.sendAll(fd, text)
            return
        }
        if head || mode == .none {
            note("200 \(content.count) B\(head ? " (HEAD)" : "")")
            _ = respond(fd, status: 200, headers: baseHeaders, body: content, head: head)
            return
        }
        switch mode {
        case .none, .status, .dropConnection, .rateLimited, .hang, .dripHead, .chunked:
            break  // handled above
        case .contentLength(let delta):
            note("200 with Content-Length \(content.count + delta) for \(content.count) B, then FIN (injected)")
            _ = respond(fd, status: 200, headers: baseHeaders, body: content, contentLength: content.count + delta, head: false)
            shutdown(fd, Int32(SHUT_WR))
        case .dripBody:
            guard respond(fd, status: 200, headers: baseHeaders, body: [], contentLength: content.count, head: false) else {
                note("dripBody: sending failed")
                return
            }
            let sent = drip(fd, content)
            note("200 head, then \(sent) of \(content.count) B dripped (injected)")
        case .stall(let afterBytes):
            let first = min(afterBytes, content.count)
            guard respond(fd, status: 200, headers: baseHeaders, body: Array(content[..<first]), contentLength: content.count, head: false) else {
                note("stall: sending failed")
                return
            }
            if hold(fd, limit: .seconds(60)) {
                note("200, \(first) of \(content.count) B, then stalled until the peer left (injected)")
            } else if stopping {
                note("200, \(first) of \(content.count) B, stalled until the fake stopped")
            } else {
                let finished = Self.sendAll(fd, Array(content[first...]))
                note("200, \(first) of \(content.count) B, stalled to the limit, then the rest\(finished ? "" : " (sending failed)")")
            }
        case .resetAfterHeaders:
            guard respond(fd, status: 200, headers: baseHeaders, body: [], contentLength: content.count, head: false) else {
                note("resetAfterHeaders: sending failed")
                return
            }
            usleep(100_000)
            var lingerOption = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lingerOption, socklen_t(MemoryLayout<linger>.size))
            close(fd)
            closed = true
            note("200 head (Content-Length \(content.count)), no body, then RST (injected)")
        case .wrongBytes:
            var wrong = content
            wrong[wrong.count / 2] ^= 0xFF
            note("200 wrong bytes (\(wrong.count) B)")
            _ = respond(fd, status: 200, headers: baseHeaders, body: wrong, head: false)
        case .manifestWrongDigest:
            let wrong = content + Array("\n".utf8)
            note("200 bytes hashing to \(wrong.sha256), claiming \(digest)")
            _ = respond(fd, status: 200, headers: baseHeaders, body: wrong, head: false)
        case .truncate:
            let half = content.count / 2
            guard respond(fd, status: 200, headers: baseHeaders, body: Array(content[..<half]), contentLength: content.count, head: false) else {
                note("truncate: sending failed")
                return
            }
            // Held open (for the concurrency test) until released, the server stops, or 20 s.
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(20)
            var held = false
            while state.withLock({ $0.holdTruncation && !$0.stopping }), clock.now < deadline {
                held = true
                usleep(10_000)
            }
            note("200, \(half) of \(content.count) B, then FIN\(held ? " (after a hold)" : "")")
            shutdown(fd, Int32(SHUT_WR))
        case .reset:
            let quarter = content.count / 4
            guard respond(fd, status: 200, headers: baseHeaders, body: Array(content[..<quarter]), contentLength: content.count, head: false) else {
                note("reset: sending failed")
                return
            }
            usleep(200_000)  // let the peer read what was sent
            var lingerOption = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lingerOption, socklen_t(MemoryLayout<linger>.size))
            close(fd)
            closed = true
            note("200, \(quarter) of \(content.count) B, then RST")
        }
    }

    /// Waits until the peer closes the connection (true), the fake stops, or `limit` passes.
    private func hold(_ fd: Int32, limit: Duration) -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while !stopping, clock.now < deadline {
            if Self.peerClosed(fd, within: 100) { return true }
        }
        return false
    }

    /// Sends `bytes` one every 250 ms until done, the peer leaves, or the fake stops; how many went out.
    private func drip(_ fd: Int32, _ bytes: [UInt8]) -> Int {
        var sent = 0
        while sent < bytes.count, !stopping, !Self.peerClosed(fd, within: 250) {
            guard Self.sendAll(fd, [bytes[sent]]) else { break }
            sent += 1
        }
        return sent
    }

    /// Waits up to `milliseconds` for the peer to close (or reset) the connection; true if it did.
    /// The mirror sends nothing after its request, so readable means closed.
    private static func peerClosed(_ fd: Int32, within milliseconds: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, milliseconds) > 0 else { return false }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) <= 0
    }

    /// A nil `contentLength` sends `Transfer-Encoding: chunked` instead.
    private static func responseHead(status: Int, headers: [(String, String)], contentLength: Int?) -> [UInt8] {
        let reason = [200: "OK", 301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
                      308: "Permanent Redirect", 401: "Unauthorized", 429: "Too Many Requests", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
                      502: "Bad Gateway", 503: "Service Unavailable"][status] ?? "Status"
        var text = "HTTP/1.1 \(status) \(reason)\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += contentLength.map { "Content-Length: \($0)\r\n" } ?? "Transfer-Encoding: chunked\r\n"
        text += "Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n"
        return Array(text.utf8)
    }

    /// Writes a response head (`Content-Length` = `contentLength ?? body.count`) and, unless
    /// `head`, the body. False if sending failed.
    private func respond(_ fd: Int32, status: Int, headers: [(String, String)], body: [UInt8],
                         contentLength: Int? = nil, head: Bool) -> Bool {
        let headers = headers + extraHeaders
        guard Self.sendAll(fd, Self.responseHead(status: status, headers: headers, contentLength: contentLength ?? body.count)) else { return false }
        if head || body.isEmpty { return true }
        return Self.sendAll(fd, body)
    }

    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, min($0.count, 256 << 10), Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    static func envelope(_ code: String, _ message: String) -> [UInt8] {
        Array(#"{"errors":[{"code":"\#(code)","message":"\#(message)","detail":null}]}"#.utf8)
    }
}
