import Foundation
import Logging
import OCI
import Synchronization

/// How to reach one upstream registry.
public struct UpstreamConfiguration: Sendable {
    /// The name requests route by and cache keys carry: `docker.io`, `ghcr.io`, `127.0.0.1:5001`.
    public var name: String
    /// Where its API is: `https://registry-1.docker.io`.
    public var url: URL
    public var credentials: Credentials?
    /// `forward_client_credentials`: requests carry the requesting client's own credentials
    /// (never `credentials`); see `UpstreamClient.forwarding(_:)`.
    public var forwardClientCredentials = false
    public var limits = TransferLimits()
    /// Attempts for a request that fails with a transport error, a 5xx or a 429.
    public var attempts = 3
    /// Pause before the first retry; doubled each time.
    public var backoff: Duration = .milliseconds(250)
    /// The longest `Retry-After` worth waiting for inside one client request.
    public var maxRetryAfter: Duration = .seconds(10)
    /// Requests in a row that get no answer (after their retries) before the upstream is
    /// marked down and requests to it fail at once (`UpstreamAvailability`); 0: never.
    public var downAfter = 3
    /// The longest it stays marked down between probes (the first wait is 1 s, then doubles).
    public var downMax: Duration = .seconds(60)

    public init(name: String, url: URL) {
        self.name = name
        self.url = url
    }

    /// Docker Hub's API host for the `docker.io` name.
    public static let dockerHub = UpstreamConfiguration(name: ImageReference.dockerHub, url: URL(string: "https://registry-1.docker.io")!)
}

/// Errors from an upstream, as the mirror core needs to tell them apart.
public struct UpstreamError: ErrorWithOrigin, Sendable {
    /// What went wrong, as the mirror core must react to it. A struct over a private enum,
    /// so codes can be added without breaking a caller's `switch` (which needs a `default`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case notFound, denied, unauthorized, tooManyRequests, unavailable, invalidResponse, busy
        }
        private let kind: Kind

        /// The upstream says the repository or content does not exist (or, anonymously, hides it).
        public static let notFound = Code(kind: .notFound)
        /// The upstream refused the configured credentials, or (403) a client's forwarded ones.
        public static let denied = Code(kind: .denied)
        /// The upstream refused a client's forwarded credentials, or a client that sent none
        /// (401): the client may answer with credentials of its own.
        public static let unauthorized = Code(kind: .unauthorized)
        public static let tooManyRequests = Code(kind: .tooManyRequests)
        /// Unreachable, timed out, reset, or a 5xx after retries.
        public static let unavailable = Code(kind: .unavailable)
        /// An answer that breaks the protocol: wrong digest, oversized manifest, redirect loop.
        public static let invalidResponse = Code(kind: .invalidResponse)
        /// This mirror had no free transfer slot in time: its own load, not the upstream's fault.
        public static let busy = Code(kind: .busy)

        public var description: String {
            switch kind {
            case .notFound: return "not found"
            case .denied: return "denied"
            case .unauthorized: return "unauthorized"
            case .tooManyRequests: return "too many requests"
            case .unavailable: return "unavailable"
            case .invalidResponse: return "invalid response"
            case .busy: return "busy"
            }
        }
    }
    public let code: Code
    public let message: String
    public var retryAfter: Int?
    /// Refused without a request: the upstream is marked down.
    public var markedDown = false
    public let origin: ErrorOrigin

    public init(_ code: Code, _ message: String, retryAfter: Int? = nil, cause: (any Error)? = nil,
                file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.origin = ErrorOrigin(cause: cause, file: file, line: line)
    }

    /// Errors that justify serving stale content.
    public var isUpstreamFailure: Bool { code == .unavailable || code == .tooManyRequests || code == .busy }
    public var description: String { message }
}

/// A manifest response: its head, and the bytes for a GET.
public struct UpstreamManifest: Sendable {
    public let digest: Digest?
    public let mediaType: String?
    public let size: Int64?
    public let bytes: [UInt8]?
}

/// Told of every upstream exchange, for metrics and the status page. Called on transfer
/// completion, from any thread.
public protocol UpstreamObserver: Sendable {
    /// An answer arrived (any status); `bodyBytes` were received with it.
    func upstreamResponded(_ upstream: String, head: ResponseHead, bodyBytes: Int64)
    /// The transfer failed (connect, timeout, reset) after `bodyBytes`.
    func upstreamFailed(_ upstream: String, message: String, bodyBytes: Int64)
    /// The upstream was marked down (`down`, next probe due in `nextCheck`, for `reason`), or is back.
    func upstreamAvailabilityChanged(_ upstream: String, down: Bool, nextCheck: Duration?, reason: String?)
}

extension UpstreamObserver {
    public func upstreamAvailabilityChanged(_ upstream: String, down: Bool, nextCheck: Duration?, reason: String?) {}
}

/// Whose credentials an `UpstreamRegistry`'s requests carry.
enum UpstreamCaller: Sendable {
    /// The upstream's configured credentials (`username`), or none.
    case configured
    /// A client's own, forwarded (`forward_client_credentials`); `.anonymous` for none.
    case client(ClientCredentials)
}

/// The client side of the Distribution API for one upstream, the way Docker's `pull_v2`
/// does it: the modern Accept set, the Bearer token flow (anonymous or with credentials,
/// tokens cached per scope), Basic, redirects that never carry credentials to another
/// host, and retries.
///
/// With `forwardClientCredentials`, `forwarding(_:)` gives one client's view: the same
/// upstream (transport, availability, rate limit, token cache) whose requests carry that
/// client's credentials, its tokens cached under its credential key.
public final class UpstreamRegistry: Sendable {
    public let configuration: UpstreamConfiguration
    let transport: CurlTransport
    let tokens: TokenCache
    let logger: Logger
    let observer: (any UpstreamObserver)?
    let caller: UpstreamCaller
    /// What every client's view of this upstream shares.
    private final class Shared: Sendable {
        let availability: Mutex<UpstreamAvailability>
        let rateLimit = Mutex<Int?>(nil)
        let rangesIgnored = Atomic<Bool>(false)
        init(_ availability: UpstreamAvailability) { self.availability = Mutex(availability) }
    }
    private let shared: Shared

    public init(_ configuration: UpstreamConfiguration, transport: CurlTransport, observer: (any UpstreamObserver)? = nil, logger: Logger) {
        self.configuration = configuration
        self.transport = transport
        self.observer = observer
        self.logger = logger
        tokens = TokenCache()
        caller = .configured
        shared = Shared(UpstreamAvailability(downAfter: configuration.downAfter, maxInterval: configuration.downMax))
    }

    private init(sharing upstream: UpstreamRegistry, caller: UpstreamCaller) {
        configuration = upstream.configuration
        transport = upstream.transport
        observer = upstream.observer
        logger = upstream.logger
        tokens = upstream.tokens
        shared = upstream.shared
        self.caller = caller
    }

    /// Whether requests must carry the requesting client's credentials (`forward_client_credentials`).
    public var forwardsClientCredentials: Bool { configuration.forwardClientCredentials }

    /// The client this view forwards the credentials of; nil for the upstream itself.
    public var forwardedClient: ClientCredentials? {
        if case .client(let client) = caller { return client }
        return nil
    }

    /// This upstream as `client` sees it: its requests carry `client`'s credentials (none
    /// for `.anonymous`), never the configured ones.
    public func forwarding(_ client: ClientCredentials) -> any UpstreamClient {
        UpstreamRegistry(sharing: self, caller: .client(client))
    }

    /// The credentials requests carry: the client's for a client's view, else the configured ones.
    var credentials: Credentials? {
        switch caller {
        case .configured: return configuration.credentials
        case .client(let client): return client.credentials
        }
    }

    public var name: String { configuration.name }

    /// The pulls Docker Hub last said are left in its window (`ratelimit-remaining`), if it said.
    public var rateLimitRemaining: Int? { shared.rateLimit.withLock { $0 } }

    /// Whether requests to this upstream are being refused at once (see `UpstreamAvailability`).
    public var isMarkedDown: Bool { shared.availability.withLock { $0.isDown } }

    // MARK: API calls

    /// HEAD or GET of a manifest by tag or digest. GET bodies are capped at 4 MiB.
    public func manifest(_ repository: RepositoryName, _ reference: ManifestReference, head: Bool) async throws(UpstreamError) -> UpstreamManifest {
        let sink = BufferSink(limit: ManifestDocument.maxSize)
        let response = try await send(head ? "HEAD" : "GET", "/v2/\(repository.value)/manifests/\(reference)", repository: repository,
                                      accept: MediaType.manifestAccept.joined(separator: ", "), sink: sink)
        if sink.overflow {
            throw UpstreamError(.invalidResponse, "\(name) sent a manifest larger than \(ManifestDocument.maxSize) bytes for \(repository):\(reference)")
        }
        let digest = response.header("docker-content-digest").flatMap { try? Digest(parsing: $0) }
        let type = response.header("content-type").map(ManifestDocument.stripParameters)
        return UpstreamManifest(digest: digest, mediaType: type, size: response.contentLength, bytes: head ? nil : sink.bytes)
    }

    /// Size of a blob if the repository holds it upstream; nil for 404.
    public func blobSize(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> Int64? {
        do {
            let response = try await send("HEAD", "/v2/\(repository.value)/blobs/\(digest)", repository: repository, accept: nil, sink: BufferSink(limit: 0))
            return response.contentLength ?? -1
        } catch where error.code == .notFound {
            return nil
        }
    }

    /// Streams a blob into `sink`. `sink.head` sees the final 2xx head first (with the size).
    public func fetchBlob(_ repository: RepositoryName, _ digest: Digest, sink: any TransferSink, from offset: Int64 = 0) async throws(UpstreamError) -> ResponseHead {
        let range = offset > 0 ? [("Range", "bytes=\(offset)-")] : []
        return try await send("GET", "/v2/\(repository.value)/blobs/\(digest)", repository: repository, accept: nil, sink: sink, extraHeaders: range)
    }

    /// Streams the answer to a ranged GET of a blob into `sink`; `range` is a `Range` header
    /// value (`bytes=…`, one range or several). An upstream without range support answers 200
    /// with the whole blob: `sink.head` sees the status and decides.
    public func fetchBlobRange(_ repository: RepositoryName, _ digest: Digest, range: String, sink: any TransferSink) async throws(UpstreamError) -> ResponseHead {
        let head = try await send("GET", "/v2/\(repository.value)/blobs/\(digest)", repository: repository, accept: nil, sink: sink, extraHeaders: [("Range", range)])
        if head.status == 200 { shared.rangesIgnored.store(true, ordering: .relaxed) }
        return head
    }

    /// Whether the upstream accepts this view's credentials: `GET /v2/`, its challenge answered
    /// (a token for no scope, as `docker login` asks for one). For a `docker login` to a mirror
    /// whose upstream checks its clients' credentials.
    public func verifyCredentials() async throws(UpstreamError) {
        _ = try await send("GET", "/v2/", repository: nil, accept: "application/json", sink: BufferSink(limit: 64 << 10))
    }

    /// Set once the upstream answered a ranged GET of a blob with the whole blob (200): it
    /// ignores `Range`, and asking it for ranges again would only cost aborted transfers.
    public var ignoresRanges: Bool { shared.rangesIgnored.load(ordering: .relaxed) }

    /// Every tag, following `Link` pagination (at most `maxPages` pages).
    public func tags(_ repository: RepositoryName, maxPages: Int = 50) async throws(UpstreamError) -> [String] {
        struct Page: Decodable { let tags: [String]? }
        var path = "/v2/\(repository.value)/tags/list?n=1000"
        var all: [String] = []
        for _ in 0..<maxPages {
            let sink = BufferSink(limit: 16 << 20)
            let response = try await send("GET", path, repository: repository, accept: "application/json", sink: sink)
            guard let page = try? JSONDecoder().decode(Page.self, from: Data(sink.bytes)) else {
                throw UpstreamError(.invalidResponse, "\(name) sent an unreadable tag list for \(repository)")
            }
            all += page.tags ?? []
            guard let link = response.header("link"), let next = Self.nextLink(link) else { break }
            path = next
        }
        return all
    }

    /// The referrers index bytes, or nil when the upstream has no referrers API (404).
    public func referrers(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> [UInt8]? {
        let sink = BufferSink(limit: ManifestDocument.maxSize)
        do {
            _ = try await send("GET", "/v2/\(repository.value)/referrers/\(digest)", repository: repository, accept: MediaType.ociIndex, sink: sink)
        } catch where error.code == .notFound {
            return nil
        }
        return sink.bytes
    }

    /// `</v2/x/tags/list?n=2&last=b>; rel="next"` → `/v2/x/tags/list?n=2&last=b`
    static func nextLink(_ header: String) -> String? {
        for part in header.split(separator: ",") where part.contains("rel=\"next\"") || part.contains("rel=next") {
            guard let open = part.firstIndex(of: "<"), let close = part.firstIndex(of: ">"), open < close else { continue }
            let target = String(part[part.index(after: open)..<close])
            if target.hasPrefix("/") { return target }
            if let url = URL(string: target) { return url.path + (url.query.map { "?" + $0 } ?? "") }
        }
        return nil
    }

    // MARK: The exchange: auth, redirects, retries

    /// One request with its retries, unless the upstream is marked down: then it is refused
    /// at once, or is the one probe that checks whether the upstream is back.
    func send(_ method: String, _ path: String, repository: RepositoryName?, accept: String?, sink: any TransferSink,
              extraHeaders: [(String, String)] = []) async throws(UpstreamError) -> ResponseHead {
        let admission = shared.availability.withLock { $0.admit(now: .now) }
        if case .refused(let nextCheck) = admission {
            let (failures, reason) = shared.availability.withLock { ($0.failures, $0.lastFailure) }
            let seconds = max(1, Int((nextCheck + .milliseconds(999)).components.seconds))
            var error = UpstreamError(.unavailable, "\(name) is marked down after \(failures) failed request\(failures == 1 ? "" : "s") in a row"
                                      + (reason.map { " (last: \($0))" } ?? "") + "; next check in \(seconds) s", retryAfter: seconds)
            error.markedDown = true
            throw error
        }
        let probe = admission == .probe
        var outcome = UpstreamAvailability.Outcome.abandoned
        defer { settle(outcome, probe: probe) }
        return try await attempts(method, path, repository: repository, accept: accept, sink: sink, extraHeaders: extraHeaders,
                                  limit: probe ? 1 : configuration.attempts, outcome: &outcome)
    }

    /// Records how a request ended, and tells the log and the observer when that marks the
    /// upstream down or back.
    func settle(_ outcome: UpstreamAvailability.Outcome, probe: Bool) {
        let (transition, reason) = shared.availability.withLock { ($0.record(outcome, probe: probe, now: .now), $0.lastFailure) }
        switch transition {
        case .markedDown(let failures, let nextCheck):
            logger.warning("upstream marked down: requests to it fail at once until a probe gets an answer", metadata: [
                "upstream": "\(name)", "failures": "\(failures)", "next_check": "\(nextCheck)", "error": "\(reason ?? "")"])
            observer?.upstreamAvailabilityChanged(name, down: true, nextCheck: nextCheck, reason: reason)
        case .stillDown(let nextCheck):
            logger.info("upstream still down", metadata: ["upstream": "\(name)", "next_check": "\(nextCheck)", "error": "\(reason ?? "")"])
            observer?.upstreamAvailabilityChanged(name, down: true, nextCheck: nextCheck, reason: reason)
        case .back:
            logger.notice("upstream is back", metadata: ["upstream": "\(name)"])
            observer?.upstreamAvailabilityChanged(name, down: false, nextCheck: nil, reason: nil)
        case nil:
            break
        }
    }

    /// Up to `limit` attempts, with backoff. `outcome` ends `.answered` if any attempt got an
    /// HTTP answer, `.failed` if none did, `.abandoned` if it was cancelled first.
    func attempts(_ method: String, _ path: String, repository: RepositoryName?, accept: String?, sink: any TransferSink,
                  extraHeaders: [(String, String)], limit: Int, outcome: inout UpstreamAvailability.Outcome) async throws(UpstreamError) -> ResponseHead {
        // No repository: the API root, whose token asks for no scope (as `docker login` does).
        let scope = repository.map { "repository:\($0.value):pull" } ?? ""
        let repository = repository.map(String.init(describing:)) ?? "its API root"
        var delay = configuration.backoff
        var lastError = UpstreamError(.unavailable, "\(name) did not answer")
        for attempt in 1...max(1, limit) {
            let counting = CountingSink(sink)
            do {
                let head = try await exchange(method, path, scope: scope, accept: accept, sink: counting, extraHeaders: extraHeaders)
                outcome = .answered
                if let remaining = head.rateLimitRemaining { shared.rateLimit.withLock { $0 = remaining } }
                observer?.upstreamResponded(name, head: head, bodyBytes: Int64(counting.received))
                switch head.status {
                case 200..<300:
                    return head
                case 404:
                    throw UpstreamError(.notFound, "\(name) has no \(repository) \(path.contains("/blobs/") ? "blob" : "content") at \(path.split(separator: "/").last ?? "")")
                case 401, 403:
                    if case .client(let client) = caller {
                        // The client asked with its own credentials (or none): it may answer with others.
                        throw UpstreamError(head.status == 401 ? .unauthorized : .denied,
                                            "\(name) refused \(client.isAnonymous ? "an anonymous client" : "this client's credentials") for \(repository) (\(head.status))")
                    }
                    if configuration.credentials == nil {
                        // Docker Hub answers 401 for repositories that do not exist.
                        throw UpstreamError(.notFound, "\(name) denies anonymous access to \(repository): unknown or private")
                    }
                    throw UpstreamError(.denied, "\(name) refused the configured credentials for \(repository) (\(head.status))")
                case 429:
                    let retryAfter = head.header("retry-after").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
                    lastError = UpstreamError(.tooManyRequests, "\(name) is rate-limiting this mirror (429)", retryAfter: retryAfter)
                    let wait = Duration.seconds(retryAfter ?? 1)
                    guard attempt < limit, wait <= configuration.maxRetryAfter else { throw lastError }
                    try? await Task.sleep(for: wait)
                    continue
                case 500..<600:
                    lastError = UpstreamError(.unavailable, "\(name) answered \(head.status) for \(path)")
                default:
                    throw UpstreamError(.invalidResponse, "\(name) answered \(head.status) for \(path)")
                }
            } catch let error as UpstreamError {
                // Thrown past an answer (a refused redirect, a token service's status).
                outcome = .answered
                throw error
            } catch let error as TransportError where error.kind == .busy {
                // Our own slots were full for the whole deadline: no upstream to blame, and a
                // retry would only queue again behind the same transfers.
                throw UpstreamError(.busy, error.message, retryAfter: 1, cause: error)
            } catch let error as TransportError {
                lastError = UpstreamError(.unavailable, error.message, cause: error)
                if error.afterAnswer {
                    outcome = .answered
                } else if error.kind != .aborted, outcome != .answered {
                    outcome = .failed(error.message)
                }
                observer?.upstreamFailed(name, message: error.message, bodyBytes: Int64(counting.received))
            } catch {
                // The sink refused the body (a size or digest check): not worth a retry.
                outcome = .answered
                throw UpstreamError(.invalidResponse, "\(name): \(error)", cause: error)
            }
            // A transfer that already delivered body bytes cannot be retried from here.
            guard attempt < limit, counting.received == 0, !Task.isCancelled else { break }
            logger.debug("retrying upstream request", metadata: ["upstream": "\(name)", "attempt": "\(attempt)", "error": "\(lastError.message)"])
            try? await Task.sleep(for: delay)
            delay *= 2
        }
        throw lastError
    }

    /// One logical request: follows redirects (at most 5; `Authorization` only to the
    /// upstream's own host; only those `RedirectPolicy` allows) and answers one
    /// authentication challenge.
    func exchange(_ method: String, _ path: String, scope: String, accept: String?, sink: any TransferSink,
                  extraHeaders: [(String, String)]) async throws -> ResponseHead {
        guard var url = URL(string: configuration.url.absoluteString.trimmingSuffix("/") + path) else {
            throw UpstreamError(.invalidResponse, "cannot build a URL for \(path)")
        }
        if let refused = RedirectPolicy.refusal(of: url) {
            throw UpstreamError(.invalidResponse, "\(name) at \(configuration.url) is not fetched: \(refused)")
        }
        let origin = Self.origin(of: url)
        var authorization = authorizationHeader(scope: scope)
        var answeredChallenge = false
        var redirects = 0
        while true {
            var headers = extraHeaders
            if let accept { headers.append(("Accept", accept)) }
            if let authorization, Self.origin(of: url) == origin { headers.append(("Authorization", authorization)) }
            let head: ResponseHead
            do {
                head = try await transport.perform(HTTPExchange(method: method, url: url, headers: headers), limits: configuration.limits, sink: sink)
            } catch var error as TransportError where redirects > 0 {
                // The upstream answered with a redirect; the host it named failed (a CDN, say).
                error.afterAnswer = true
                throw error
            }
            if (300..<400).contains(head.status), head.status != 304, let location = head.header("location") {
                redirects += 1
                guard redirects <= 5 else {
                    throw UpstreamError(.invalidResponse, "\(name) redirected more than 5 times for \(path)")
                }
                guard let next = URL(string: location, relativeTo: url)?.absoluteURL else {
                    throw UpstreamError(.invalidResponse, "\(name) redirected \(path) to an unreadable Location: \(location.prefix(200))")
                }
                // A protocol error, so `send` does not retry it.
                if let refused = RedirectPolicy.refusal(from: url, to: next) {
                    throw UpstreamError(.invalidResponse, "\(name) redirected \(path) to \(location.prefix(200)); not followed: \(refused)")
                }
                url = next
                continue
            }
            if head.status == 401, !answeredChallenge, Self.origin(of: url) == origin,
               let challenge = head.headers("www-authenticate").compactMap(AuthChallenge.parse).first {
                answeredChallenge = true
                if let answer = try await answer(challenge, scope: scope) {
                    authorization = answer
                    continue
                }
            }
            return head
        }
    }

    /// What to send before any challenge: a cached token for the scope.
    func authorizationHeader(scope: String) -> String? {
        tokens.token(for: tokenKey(scope)).map { "Bearer \($0)" }
    }

    /// A token is cached per scope, and for a client's view per (client credential key, scope):
    /// one client's token is never sent for another.
    func tokenKey(_ scope: String) -> String {
        switch caller {
        case .configured: return "\(name)|\(scope)"
        case .client(let client): return "\(name)|\(client.key)|\(scope)"
        }
    }

    /// Answers a challenge: fetches a Bearer token, or uses Basic credentials.
    func answer(_ challenge: AuthChallenge, scope: String) async throws -> String? {
        switch challenge.scheme {
        case "basic":
            return credentials?.basicHeader
        case "bearer":
            guard let realm = challenge.parameters["realm"], var components = URLComponents(string: realm) else {
                throw UpstreamError(.invalidResponse, "\(name) sent a Bearer challenge without a realm")
            }
            tokens.drop(tokenKey(scope))
            var query = components.queryItems ?? []
            if let service = challenge.parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
            let requested = challenge.parameters["scope"] ?? scope
            if !requested.isEmpty { query.append(URLQueryItem(name: "scope", value: requested)) }
            components.queryItems = query
            guard let tokenURL = components.url else { throw UpstreamError(.invalidResponse, "\(name) sent an unusable token realm") }
            // The realm is a redirect of sorts, and may carry our credentials: the same rule.
            if let refused = RedirectPolicy.refusal(from: configuration.url, to: tokenURL) {
                throw UpstreamError(.invalidResponse, "\(name) named the token realm \(realm); not used: \(refused)")
            }
            var headers: [(String, String)] = [("Accept", "application/json")]
            if let credentials { headers.append(("Authorization", credentials.basicHeader)) }
            let sink = BufferSink(limit: 1 << 20)
            let head = try await transport.perform(HTTPExchange(method: "GET", url: tokenURL, headers: headers), limits: configuration.limits, sink: sink)
            guard head.status == 200 else {
                if head.status == 401 || head.status == 403 {
                    if case .client(let client) = caller {
                        throw UpstreamError(head.status == 401 ? .unauthorized : .denied,
                                            "the token service of \(name) refused \(client.isAnonymous ? "an anonymous client" : "this client's credentials") for \(scope) (\(head.status))")
                    }
                    throw UpstreamError(configuration.credentials == nil ? .notFound : .denied,
                                        "the token service of \(name) refused a token for \(scope) (\(head.status))")
                }
                throw UpstreamError(.unavailable, "the token service of \(name) answered \(head.status)")
            }
            guard let response = try? JSONDecoder().decode(TokenResponse.self, from: Data(sink.bytes)), let token = response.bearer else {
                throw UpstreamError(.invalidResponse, "the token service of \(name) sent no token")
            }
            tokens.store(token, scope: tokenKey(scope), expiresIn: response.expiresIn)
            return "Bearer \(token)"
        default:
            return nil
        }
    }

    static func origin(of url: URL) -> String {
        "\(url.scheme ?? "")://\(url.host ?? ""):\(url.port ?? (url.scheme == "https" ? 443 : 80))"
    }
}

/// Collects a small body in memory, up to a limit.
public final class BufferSink: TransferSink, @unchecked Sendable {
    // Written by the transfer thread, read after `perform` returns.
    private(set) var bytes: [UInt8] = []
    private(set) var overflow = false
    let limit: Int
    private var accepting = false

    init(limit: Int) { self.limit = limit }

    public func head(_ head: ResponseHead) -> Bool {
        accepting = (200..<300).contains(head.status)
        return accepting
    }

    public func body(_ chunk: UnsafeRawBufferPointer) throws {
        guard bytes.count + chunk.count <= limit else {
            overflow = true
            throw UpstreamError(.invalidResponse, "response larger than \(limit) bytes")
        }
        bytes.append(contentsOf: chunk)
    }
}

/// Counts body bytes a sink accepted, so `send` knows whether a retry is still clean.
final class CountingSink: TransferSink, @unchecked Sendable {
    let inner: any TransferSink
    private(set) var received = 0

    init(_ inner: any TransferSink) { self.inner = inner }

    func head(_ head: ResponseHead) -> Bool { inner.head(head) }

    func body(_ chunk: UnsafeRawBufferPointer) throws {
        try inner.body(chunk)
        received += chunk.count
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
