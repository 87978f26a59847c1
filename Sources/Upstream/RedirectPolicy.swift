import Foundation

/// Which URLs the upstream client may fetch, and which redirects it may follow.
///
/// Only `http` and `https`: libcurl also speaks gopher, dict, file and more, and a
/// `Location` naming one of them would make the mirror send bytes to an internal service
/// or read a local file (a server-side request forgery). And never from `https` down to
/// `http`, where anyone on the path could read or rewrite what follows.
public enum RedirectPolicy: Sendable {
    /// The schemes the mirror speaks, for the first request and for every redirect.
    public static let schemes: Set<String> = ["http", "https"]

    /// Why a request to `url` is refused, or nil when it is allowed.
    public static func refusal(of url: URL) -> String? {
        let scheme = url.scheme?.lowercased() ?? ""
        guard schemes.contains(scheme) else { return "the \(scheme.isEmpty ? "(missing)" : scheme) scheme is not allowed (only http and https)" }
        return nil
    }

    /// Why a redirect from `current` to `next` is refused, or nil when it may be followed.
    public static func refusal(from current: URL, to next: URL) -> String? {
        if let refused = refusal(of: next) { return refused }
        if current.scheme?.lowercased() == "https", next.scheme?.lowercased() == "http" {
            return "it downgrades https to http"
        }
        return nil
    }
}
