import HTTPTypes
import Hummingbird
import Mirror
import Upstream

/// How the API treats `Authorization` on requests for upstreams that forward client
/// credentials (`upstreams[].forward_client_credentials`): the upstream, not the mirror,
/// decides whom they admit.
///
/// A request for such an upstream runs as its client (`RequestClient.credentials`): the
/// Basic credentials it sent, or anonymous without an `Authorization` header. Whatever the
/// upstream refuses comes back as `401 UNAUTHORIZED` with a Basic challenge, which docker,
/// podman and skopeo answer with the credentials they hold for the mirror. `GET /v2/` answers
/// the challenge to a request without credentials, since clients learn how to authenticate
/// only there.
public struct CredentialForwarding: Sendable {
    /// The upstreams that forward client credentials, by name.
    public let upstreams: Set<String>
    /// The realm of the Basic challenge.
    public let realm: String

    public init(upstreams: Set<String>, realm: String) {
        self.upstreams = upstreams
        self.realm = realm
    }

    /// The request's client. An `Authorization` that is not readable Basic credentials is a 401.
    func client(of request: Request) throws -> ClientCredentials {
        guard let header = request.headers[.authorization] else { return .anonymous }
        guard let (user, password) = BasicAuthMiddleware<RegistryRequestContext>.basic(header), !user.isEmpty else {
            throw challenge(RegistryError(.unauthorized, "send Basic credentials that the upstream accepts"))
        }
        return ClientCredentials(username: user, password: password)
    }

    /// `error` with the Basic challenge, so the client can answer it.
    func challenge(_ error: RegistryError) -> RegistryError {
        var error = error
        error.headers[.wwwAuthenticate] = "Basic realm=\"\(realm)\""
        return error
    }
}
