import Foundation
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

/// Bearer tokens per scope, kept until they expire (`expires_in`, 60 s when absent, as
/// the token spec says), less a margin (up to 5 s, a quarter of short lifetimes) so a
/// token does not expire in flight.
final class TokenCache: Sendable {
    private struct Entry { let token: String; let expires: ContinuousClock.Instant }
    private let entries = Mutex<[String: Entry]>([:])

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
        entries.withLock { $0[scope] = Entry(token: token, expires: .now + lifetime) }
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
