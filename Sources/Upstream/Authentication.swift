import Foundation
import OCI
import Synchronization

/// One `WWW-Authenticate` challenge: `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
public struct AuthChallenge: Sendable, Equatable {
    public let scheme: String
    public let parameters: [String: String]

    /// Parses a header value. Quoted values may contain commas and escaped quotes.
    public static func parse(_ header: String) -> AuthChallenge? {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard let space = trimmed.firstIndex(of: " ") else {
            return trimmed.isEmpty ? nil : AuthChallenge(scheme: trimmed.lowercased(), parameters: [:])
        }
        let scheme = trimmed[..<space].lowercased()
        var parameters: [String: String] = [:]
        var rest = trimmed[trimmed.index(after: space)...]
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                var escaped = false
                while let c = rest.first {
                    rest = rest.dropFirst()
                    if escaped { value.append(c); escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { break } else { value.append(c) }
                }
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = rest[..<end].trimmingCharacters(in: .whitespaces)
                rest = rest[end...]
            }
            parameters[key] = value
        }
        return AuthChallenge(scheme: scheme, parameters: parameters)
    }
}

/// Credentials for one upstream. Never logged: `description` hides the secret.
public struct Credentials: Sendable, CustomStringConvertible {
    public let username: String
    public let password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    var basicHeader: String { "Basic " + Data("\(username):\(password)".utf8).base64EncodedString() }
    public var description: String { "\(username):<redacted>" }
}

/// The credentials a client sent the mirror, for an upstream that forwards them
/// (`forward_client_credentials`), or none: an anonymous client.
///
/// Held in memory for the request, and for a download that request starts; never logged
/// (`description` hides them), never written anywhere. Caches know a client by `key` alone:
/// the SHA-256 of its credentials under a random salt made at process start, so equal
/// credentials share tokens and access checks while the key says nothing outside this
/// process (no offline guessing from a memory dump or a log).
public struct ClientCredentials: Sendable, Hashable, CustomStringConvertible {
    let credentials: Credentials?
    /// `anonymous`, or 64 hex digits.
    public let key: String

    public static let anonymous = ClientCredentials(credentials: nil, key: "anonymous")

    public init(username: String, password: String) {
        credentials = Credentials(username: username, password: password)
        key = Self.key(username: username, password: password)
    }

    private init(credentials: Credentials?, key: String) {
        self.credentials = credentials
        self.key = key
    }

    public var isAnonymous: Bool { credentials == nil }

    /// Made once per process; never leaves it.
    private static let salt: [UInt8] = {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }()

    /// SHA-256 over salt, the user name's length (so user and password cannot trade bytes),
    /// user name and password.
    static func key(username: String, password: String) -> String {
        let user = Array(username.utf8)
        let length = withUnsafeBytes(of: UInt32(truncatingIfNeeded: user.count).bigEndian) { Array($0) }
        return DigestHasher.digest(of: salt + length + user + Array(password.utf8)).hex
    }

    public static func == (a: ClientCredentials, b: ClientCredentials) -> Bool { a.key == b.key }
    public func hash(into hasher: inout Hasher) { hasher.combine(key) }
    public var description: String { credentials.map { "client \($0)" } ?? "anonymous client" }
}

/// Bearer tokens per scope, kept until they expire (`expires_in`, 60 s when absent, as
/// the token spec says), less a margin (up to 5 s, a quarter of short lifetimes) so a
/// token does not expire in flight. Keys carry the client's credential key when an upstream
/// forwards client credentials, so clients never share a token. At most `capacity` entries:
/// past it, expired ones go, and if none had expired, all of them.
final class TokenCache: Sendable {
    private struct Entry { let token: String; let expires: ContinuousClock.Instant }
    private let entries = Mutex<[String: Entry]>([:])
    let capacity: Int

    init(capacity: Int = 10_000) { self.capacity = capacity }

    var count: Int { entries.withLock { $0.count } }

    func token(for scope: String) -> String? {
        entries.withLock { entries in
            guard let entry = entries[scope] else { return nil }
            if entry.expires < .now {
                entries[scope] = nil
                return nil
            }
            return entry.token
        }
    }

    func store(_ token: String, scope: String, expiresIn: Int?) {
        let seconds = max(1, expiresIn ?? 60)
        let lifetime = Duration.milliseconds(Int64(seconds) * 1000 - Int64(min(5000, seconds * 250)))
        let now = ContinuousClock.now
        entries.withLock { entries in
            if entries.count >= capacity, entries[scope] == nil {
                entries = entries.filter { $0.value.expires >= now }
                if entries.count >= capacity { entries.removeAll() }
            }
            entries[scope] = Entry(token: token, expires: now + lifetime)
        }
    }

    func drop(_ scope: String) { _ = entries.withLock { $0.removeValue(forKey: scope) } }
}

/// The token endpoint's answer (distribution's token spec: `token` or `access_token`).
struct TokenResponse: Decodable {
    let token: String?
    let accessToken: String?
    let expiresIn: Int?

    enum CodingKeys: String, CodingKey {
        case token
        case accessToken = "access_token"
        case expiresIn = "expires_in"
    }

    var bearer: String? { token ?? accessToken }
}
