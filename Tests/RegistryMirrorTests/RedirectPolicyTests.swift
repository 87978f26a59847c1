import Foundation
import Testing
import Upstream

/// Which redirects the upstream client follows (issue 10, item 3), as a pure decision.
/// `FaultRedirectTests` checks the same against a running mirror.
@Suite struct RedirectPolicyTests {
    static func url(_ text: String) -> URL { URL(string: text)! }

    @Test("followed: http and https, same or other host, http up to https", arguments: [
        ("http://registry.local/v2/a/blobs/x", "http://cdn.local/data"),
        ("http://registry.local/v2/a/blobs/x", "https://cdn.local/data"),
        ("https://registry.local/v2/a/blobs/x", "https://cdn.local/data?sig=1"),
        ("HTTPS://registry.local/v2/a/blobs/x", "HTTPS://cdn.local/data"),
    ])
    func allowed(from: String, to: String) {
        #expect(RedirectPolicy.refusal(from: Self.url(from), to: Self.url(to)) == nil)
    }

    @Test("refused, naming the scheme: anything but http and https", arguments: [
        ("gopher://127.0.0.1:6379/_SET%20x%201", "gopher"),
        ("dict://127.0.0.1:11211/info", "dict"),
        ("file:///etc/shadow", "file"),
        ("ftp://127.0.0.1/x", "ftp"),
        ("ldap://127.0.0.1/x", "ldap"),
        ("GOPHER://127.0.0.1:70/_x", "gopher"),
    ])
    func otherSchemes(target: String, scheme: String) throws {
        for from in ["http://registry.local/v2/a/blobs/x", "https://registry.local/v2/a/blobs/x"] {
            let refused = try #require(RedirectPolicy.refusal(from: Self.url(from), to: Self.url(target)), "\(from) → \(target) was allowed")
            #expect(refused.contains("the \(scheme) scheme is not allowed"), "\(refused)")
        }
        #expect(RedirectPolicy.refusal(of: Self.url(target)) != nil)
    }

    @Test("refused: https down to http, on any host")
    func downgrade() throws {
        for target in ["http://registry.local/v2/a/blobs/x", "http://cdn.local/data", "HTTP://cdn.local/data"] {
            let refused = try #require(RedirectPolicy.refusal(from: Self.url("https://registry.local/v2/a/blobs/x"), to: Self.url(target)),
                                       "https → \(target) was allowed")
            #expect(refused.contains("downgrades https to http"), "\(refused)")
        }
    }
}
