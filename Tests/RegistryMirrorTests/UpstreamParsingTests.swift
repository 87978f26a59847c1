import Foundation
import RegistryMirror
import Testing
@testable import Upstream

@Suite struct UpstreamParsing {
    @Test func bearerChallenge() throws {
        let c = try #require(AuthChallenge.parse(#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#))
        #expect(c.scheme == "bearer")
        #expect(c.parameters["realm"] == "https://auth.docker.io/token")
        #expect(c.parameters["service"] == "registry.docker.io")
        #expect(c.parameters["scope"] == "repository:library/alpine:pull")
    }

    @Test func challengeWithCommasEscapesAndBareValues() throws {
        let c = try #require(AuthChallenge.parse(#"Bearer realm="https://x/token",scope="repository:a:pull,push",error="invalid_token",error_description="say \"hi\"", foo=bar"#))
        #expect(c.parameters["scope"] == "repository:a:pull,push")
        #expect(c.parameters["error"] == "invalid_token")
        #expect(c.parameters["error_description"] == #"say "hi""#)
        #expect(c.parameters["foo"] == "bar")
        #expect(AuthChallenge.parse(#"Basic realm="Registry Realm""#)?.scheme == "basic")
        #expect(AuthChallenge.parse("") == nil)
    }

    @Test func linkPagination() {
        #expect(UpstreamRegistry.nextLink(#"</v2/a/tags/list?n=2&last=b>; rel="next""#) == "/v2/a/tags/list?n=2&last=b")
        #expect(UpstreamRegistry.nextLink(#"<https://r.example/v2/a/tags/list?last=c>; rel="next""#) == "/v2/a/tags/list?last=c")
        #expect(UpstreamRegistry.nextLink(#"</v2/a/tags/list?last=c>; rel="prev""#) == nil)
    }

    @Test func upstreamSpecs() throws {
        let hub = try UpstreamSpec.parse("https://registry-1.docker.io")
        #expect(hub.name == "docker.io")
        let local = try UpstreamSpec.parse("http://127.0.0.1:5000")
        #expect(local.name == "127.0.0.1:5000")
        #expect(local.url.absoluteString == "http://127.0.0.1:5000")
        let named = try UpstreamSpec.parse("ghcr.io=https://ghcr.io")
        #expect(named.name == "ghcr.io")
        let bare = try UpstreamSpec.parse("quay.io")
        #expect(bare.url.absoluteString == "https://quay.io" && bare.name == "quay.io")
        #expect(throws: ConfigurationError.self) { try UpstreamSpec.parse("ftp://x") }
        #expect(throws: ConfigurationError.self) { try UpstreamSpec.parse("=https://x") }
    }

    @Test func durations() {
        #expect(UpstreamSpec.duration("30s") == .seconds(30))
        #expect(UpstreamSpec.duration("5m") == .seconds(300))
        #expect(UpstreamSpec.duration("2h") == .seconds(7200))
        #expect(UpstreamSpec.duration("250ms") == .milliseconds(250))
        #expect(UpstreamSpec.duration("0") == .zero)
        #expect(UpstreamSpec.duration("-1s") == nil)
        #expect(UpstreamSpec.duration("soon") == nil)
    }

    @Test func tokenCacheExpires() {
        let cache = TokenCache()
        cache.store("t", scope: "s", expiresIn: 60)
        #expect(cache.token(for: "s") == "t")
        cache.drop("s")
        #expect(cache.token(for: "s") == nil)
    }
}
