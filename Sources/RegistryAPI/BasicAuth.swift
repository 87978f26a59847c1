import CCrypt
import Foundation
import HTTPTypes
import Hummingbird
import OCI
import Synchronization

/// An htpasswd file (`user:hash` lines, bcrypt as `htpasswd -B` and distribution write
/// them), re-read when it changes.
///
/// bcrypt is slow on purpose (tens of milliseconds), and registry clients send credentials
/// on every request, so a verified (user, password) pair is remembered for a while by its
/// SHA-256; changing the file forgets them all. Hashing runs on `CryptThreads`, never on
/// the request's task.
///
/// User names are compared byte for byte: Swift's `String` equality is canonical
/// equivalence, under which `u\u{308}` is `ü`, and two spellings must not share a password.
public final class Htpasswd: Sendable {
    public let path: String
    let rememberFor: Duration
    let hashing: CryptThreads
    /// A verified pair: the user name's bytes and the password's SHA-256.
    struct Remembered: Hashable {
        let user: [UInt8]
        let passwordDigest: String
    }
    private struct State {
        var entries: [[UInt8]: String] = [:]
        /// Hashed against in place of an unknown user's entry, so that an unknown user costs
        /// what a wrong password does and names cannot be told apart by timing.
        var dummy = ""
        var modified: Date?
        var checked = ContinuousClock.now - .seconds(3600)
        var verified: [Remembered: ContinuousClock.Instant] = [:]
    }
    private let state = Mutex(State())

    /// What `verify` found.
    public enum Verdict: Sendable, Equatable {
        case accepted, refused
        /// The hashing threads' line is full; nothing was checked.
        case busy
    }

    /// Loads `path`, failing with a message naming the bad line.
    public init(path: String, rememberFor: Duration = .seconds(300), hashing: CryptThreads = CryptThreads()) throws {
        self.path = path
        self.rememberFor = rememberFor
        self.hashing = hashing
        let (entries, modified) = try Self.load(path)
        let dummy = Self.dummySetting(like: Array(entries.values))
        state.withLock {
            $0.entries = entries
            $0.dummy = dummy
            $0.modified = modified
            $0.checked = .now
        }
    }

    static func load(_ path: String) throws -> ([[UInt8]: String], Date?) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw MirrorSetupFailure("auth.htpasswd.path: cannot read \(path)")
        }
        var entries: [[UInt8]: String] = [:]
        for (number, line) in text.split(whereSeparator: \.isNewline).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            // Split on the byte: a combining mark after the colon would hide it from Character search.
            let bytes = Array(trimmed.utf8)
            guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else {
                throw MirrorSetupFailure("\(path):\(number + 1): expected user:hash")
            }
            let hash = String(decoding: bytes[(colon + 1)...], as: UTF8.self)
            // crypt(3) verifies bcrypt and SHA-crypt; plain text and Apache's $apr1$ are refused.
            guard hash.hasPrefix("$2y$") || hash.hasPrefix("$2b$") || hash.hasPrefix("$2a$") || hash.hasPrefix("$5$") || hash.hasPrefix("$6$") else {
                throw MirrorSetupFailure("\(path):\(number + 1): only bcrypt entries (htpasswd -B) are supported")
            }
            entries[Array(bytes[..<colon])] = hash
        }
        let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        return (entries, modified)
    }

    /// Re-reads the file if it changed (checked at most every 2 s). A file that became
    /// unreadable or invalid keeps the last good entries.
    private func refresh() {
        let now = ContinuousClock.now
        let due = state.withLock { s -> Bool in
            guard s.checked.duration(to: now) > .seconds(2) else { return false }
            s.checked = now
            return true
        }
        guard due else { return }
        let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        guard modified != state.withLock({ $0.modified }), let (entries, stamp) = try? Self.load(path) else { return }
        let dummy = Self.dummySetting(like: Array(entries.values))
        state.withLock {
            $0.entries = entries
            $0.dummy = dummy
            $0.modified = stamp
            $0.verified.removeAll()
        }
    }

    /// Whether this pair was verified lately: the answer that costs no hashing.
    public func remembers(user: String, password: String) -> Bool {
        refresh()
        let key = Remembered(user: Array(user.utf8), passwordDigest: DigestHasher.digest(of: Array(password.utf8)).hex)
        let now = ContinuousClock.now
        return state.withLock { s in
            guard s.entries[key.user] != nil, let until = s.verified[key] else { return false }
            return now < until
        }
    }

    public func verify(user: String, password: String) async -> Verdict {
        // crypt(3) takes C strings: a NUL would end the password early, and "secret\0junk" log in.
        guard !password.utf8.contains(0) else { return .refused }
        if remembers(user: user, password: password) { return .accepted }
        let key = Remembered(user: Array(user.utf8), passwordDigest: DigestHasher.digest(of: Array(password.utf8)).hex)
        let (hash, dummy) = state.withLock { ($0.entries[key.user], $0.dummy) }
        // An unknown user is hashed too, against the dummy, and refused whatever comes out.
        guard let result = await hashing.run({ Self.crypt(password, setting: hash ?? dummy) }) else { return .busy }
        guard let hash, let result, result.utf8.elementsEqual(hash.utf8) else { return .refused }
        let now = ContinuousClock.now
        state.withLock { s in
            if s.verified.count > 10_000 { s.verified.removeAll() }
            s.verified[key] = now + rememberFor
        }
        return .accepted
    }

    /// crypt_r with its ~32 KiB state on the heap; nil if the setting is refused or either
    /// string holds a NUL (a C string would end there).
    static func crypt(_ password: String, setting: String) -> String? {
        guard !password.utf8.contains(0), !setting.utf8.contains(0) else { return nil }
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        guard let result = crypt_r(password, setting, data) else { return nil }
        let text = String(cString: result)
        return text.hasPrefix("*") ? nil : text
    }

    /// What crypt_gensalt needs to make a salt of an entry's cost.
    struct Scheme: Hashable {
        var prefix = "$2b$"
        var count = 0
    }

    /// A fresh salt with the scheme and cost most entries use (bcrypt `$2b$NN$`, SHA-crypt
    /// `rounds=N`): hashing against it costs what checking a real entry does.
    static func dummySetting(like hashes: [String]) -> String {
        func scheme(_ hash: String) -> Scheme {
            let fields = hash.split(separator: "$")
            guard let id = fields.first else { return Scheme() }
            if id.hasPrefix("2") { return Scheme(prefix: "$2b$", count: fields.count > 1 ? Int(fields[1]) ?? 0 : 0) }
            let rounds = fields.count > 1 && fields[1].hasPrefix("rounds=") ? Int(fields[1].dropFirst(7)) ?? 0 : 0
            return Scheme(prefix: "$\(id)$", count: rounds)
        }
        var uses: [Scheme: Int] = [:]
        for hash in hashes { uses[scheme(hash), default: 0] += 1 }
        let common = uses.max { ($0.value, $0.key.count) < ($1.value, $1.key.count) }?.key ?? Scheme()
        var output = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn(common.prefix, UInt(common.count), nil, 0, &output, Int32(output.count)) != nil else {
            // Not expected with libxcrypt; a real entry costs the same, and its answer is ignored.
            return hashes.first ?? "$2b$10$abcdefghijklmnopqrstuu"
        }
        return String(cString: output)
    }
}

/// HTTP Basic authentication against an htpasswd file, for every route but the health
/// probes. `GET /v2/` answers 401 with the challenge: dockerd and containers/image learn
/// how to authenticate only there.
///
/// Every 401 that answers credentials counts as a failed login per client address
/// (`LoginThrottle`): a wrong password or unknown user, and an `Authorization` header that is
/// not readable Basic credentials. Past the limit the address gets 429 with `Retry-After`,
/// after a pause, and no password is hashed for it, right or wrong. The one 401 not counted is
/// the challenge to a request with no `Authorization` at all, which guesses nothing and is how
/// every client learns to authenticate.
///
/// Requests that `delegated` picks (those for an upstream that forwards client credentials,
/// see `CredentialForwarding`) are not checked against the file: their upstream checks the
/// credentials. A 401 they end in still costs the address an attempt, and a throttled address
/// is refused them too, so the mirror does not become a free password guesser for the upstream.
public struct BasicAuthMiddleware<Context: RemoteAddressRequestContext>: RouterMiddleware {
    let htpasswd: Htpasswd
    let realm: String
    let throttle: LoginThrottle
    let delegated: @Sendable (Request) -> Bool

    public init(htpasswd: Htpasswd, realm: String, throttle: LoginThrottle = LoginThrottle(limit: 10, window: .seconds(60)),
                delegated: @escaping @Sendable (Request) -> Bool = { _ in false }) {
        self.htpasswd = htpasswd
        self.realm = realm
        self.throttle = throttle
        self.delegated = delegated
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/healthz" || path == "/readyz" { return try await next(request, context) }
        if delegated(request) { return try await delegate(request, context: context, next: next) }
        guard let header = request.headers[.authorization] else {
            throw challenge("authentication required")
        }
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        // A throttled address is refused even a remembered pair: else guessing would go on, free.
        if let wait = throttle.retryAfter(address) { throw await tooManyFailures(wait) }
        guard let (user, password) = Self.basic(header) else {
            // Unreadable credentials are a failed login too: no 401 to a credential is free.
            if let wait = throttle.admit(address) { throw await tooManyFailures(wait) }
            throw challenge("invalid username or password")
        }
        if htpasswd.remembers(user: user, password: password) { return try await next(request, context) }
        if let wait = throttle.admit(address) { throw await tooManyFailures(wait) }
        switch await htpasswd.verify(user: user, password: password) {
        case .accepted:
            throttle.refund(address)
            return try await next(request, context)
        case .refused:
            throw challenge("invalid username or password")
        case .busy:
            throttle.refund(address)
            throw RegistryError(.tooManyRequests, "too many logins are being checked; retry shortly", headers: [.retryAfter: "1"])
        }
    }

    /// A request whose credentials the upstream checks, throttled like a login.
    func delegate(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        try await throttle.delegated(request, context: context, next: next)
    }

    func challenge(_ message: String) -> RegistryError {
        var error = RegistryError(.unauthorized, message)
        error.headers[.wwwAuthenticate] = "Basic realm=\"\(realm)\""
        error.headers[.dockerDistributionAPIVersion] = "registry/2.0"
        return error
    }

    /// The 429 for a throttled address, after a pause: answered at once, a guesser's
    /// connections would turn into a flood of cheap requests that still crowds out others.
    func tooManyFailures(_ wait: Duration) async -> RegistryError { await throttle.refusal(wait) }

    /// `Basic base64(user:password)` → (user, password), split at the first colon byte.
    static func basic(_ header: String) -> (String, String)? {
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic", parts[1].utf8.count < 4096,
              let data = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
              String(data: data, encoding: .utf8) != nil, let colon = data.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        return (String(decoding: data[..<colon], as: UTF8.self), String(decoding: data[(colon + 1)...], as: UTF8.self))
    }
}

/// A setup problem in the HTTP front (an unreadable htpasswd file, say).
public struct MirrorSetupFailure: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension LoginThrottle {
    /// The 429 for a throttled address, after a pause: answered at once, a guesser's
    /// connections would turn into a flood of cheap requests that still crowds out others.
    func refusal(_ wait: Duration) async -> RegistryError {
        try? await Task.sleep(for: min(wait, pause))
        let seconds = max(1, Int((wait / .seconds(1)).rounded(.up)))
        return RegistryError(.tooManyRequests, "too many failed logins from this address; retry in \(seconds) s",
                             headers: [.retryAfter: String(seconds)])
    }

    /// A request whose credentials an upstream checks (`CredentialForwarding`), throttled like
    /// a login: refused while its address is throttled, and a 401 it ends in takes an attempt.
    /// Without credentials it guesses nothing and passes.
    func delegated<Context: RemoteAddressRequestContext>(_ request: Request, context: Context,
                                                         next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.headers[.authorization] != nil else { return try await next(request, context) }
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        if let wait = retryAfter(address) { throw await refusal(wait) }
        do {
            return try await next(request, context)
        } catch let error as RegistryError where error.status == .unauthorized {
            if let wait = admit(address) { throw await refusal(wait) }
            throw error
        }
    }
}

/// Without `auth.htpasswd`, the login throttle for requests whose credentials an upstream
/// checks (`CredentialForwarding`): the mirror must not become a free password guesser for
/// the upstream, nor let one guesser get the mirror itself refused there.
public struct DelegatedLoginThrottleMiddleware<Context: RemoteAddressRequestContext>: RouterMiddleware {
    let throttle: LoginThrottle
    let delegated: @Sendable (Request) -> Bool

    public init(throttle: LoginThrottle, delegated: @escaping @Sendable (Request) -> Bool) {
        self.throttle = throttle
        self.delegated = delegated
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard delegated(request) else { return try await next(request, context) }
        return try await throttle.delegated(request, context: context, next: next)
    }
}
