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
/// SHA-256; changing the file forgets them all.
public final class Htpasswd: Sendable {
    public let path: String
    let rememberFor: Duration
    private struct State {
        var entries: [String: String] = [:]
        var modified: Date?
        var checked = ContinuousClock.now - .seconds(3600)
        var verified: [String: ContinuousClock.Instant] = [:]
    }
    private let state = Mutex(State())

    /// Loads `path`, failing with a message naming the bad line.
    public init(path: String, rememberFor: Duration = .seconds(300)) throws {
        self.path = path
        self.rememberFor = rememberFor
        let (entries, modified) = try Self.load(path)
        state.withLock {
            $0.entries = entries
            $0.modified = modified
            $0.checked = .now
        }
    }

    static func load(_ path: String) throws -> ([String: String], Date?) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw MirrorSetupFailure("auth.htpasswd.path: cannot read \(path)")
        }
        var entries: [String: String] = [:]
        for (number, line) in text.split(whereSeparator: \.isNewline).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let colon = trimmed.firstIndex(of: ":") else {
                throw MirrorSetupFailure("\(path):\(number + 1): expected user:hash")
            }
            let hash = String(trimmed[trimmed.index(after: colon)...])
            // crypt(3) verifies bcrypt and SHA-crypt; plain text and Apache's $apr1$ are refused.
            guard hash.hasPrefix("$2y$") || hash.hasPrefix("$2b$") || hash.hasPrefix("$2a$") || hash.hasPrefix("$5$") || hash.hasPrefix("$6$") else {
                throw MirrorSetupFailure("\(path):\(number + 1): only bcrypt entries (htpasswd -B) are supported")
            }
            entries[String(trimmed[..<colon])] = hash
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
        state.withLock {
            $0.entries = entries
            $0.modified = stamp
            $0.verified.removeAll()
        }
    }

    public func verify(user: String, password: String) -> Bool {
        refresh()
        let key = user + "\u{0}" + DigestHasher.digest(of: Array(password.utf8)).hex
        let now = ContinuousClock.now
        let (hash, remembered) = state.withLock { s -> (String?, Bool) in
            if let until = s.verified[key], now < until { return (s.entries[user], true) }
            return (s.entries[user], false)
        }
        guard let hash else { return false }
        if remembered { return true }
        guard Self.crypt(password, setting: hash) == hash else { return false }
        state.withLock { s in
            if s.verified.count > 10_000 { s.verified.removeAll() }
            s.verified[key] = now + rememberFor
        }
        return true
    }

    /// crypt_r with its ~32 KiB state on the heap; nil if the setting is refused.
    static func crypt(_ password: String, setting: String) -> String? {
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer { data.deallocate() }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        guard let result = crypt_r(password, setting, data) else { return nil }
        let text = String(cString: result)
        return text.hasPrefix("*") ? nil : text
    }
}

/// HTTP Basic authentication against an htpasswd file, for every route but the health
/// probes. `GET /v2/` answers 401 with the challenge: dockerd and containers/image learn
/// how to authenticate only there.
public struct BasicAuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let htpasswd: Htpasswd
    let realm: String

    public init(htpasswd: Htpasswd, realm: String) {
        self.htpasswd = htpasswd
        self.realm = realm
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/healthz" || path == "/readyz" { return try await next(request, context) }
        guard let header = request.headers[.authorization] else {
            throw challenge("authentication required")
        }
        guard let (user, password) = Self.basic(header), htpasswd.verify(user: user, password: password) else {
            throw challenge("invalid username or password")
        }
        return try await next(request, context)
    }

    func challenge(_ message: String) -> RegistryError {
        var error = RegistryError(.unauthorized, message)
        error.headers[.wwwAuthenticate] = "Basic realm=\"\(realm)\""
        error.headers[.dockerDistributionAPIVersion] = "registry/2.0"
        return error
    }

    /// `Basic base64(user:password)` → (user, password).
    static func basic(_ header: String) -> (String, String)? {
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic", parts[1].utf8.count < 4096,
              let data = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
              let text = String(data: data, encoding: .utf8), let colon = text.firstIndex(of: ":") else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }
}

/// A setup problem in the HTTP front (an unreadable htpasswd file, say).
public struct MirrorSetupFailure: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
