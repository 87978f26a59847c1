import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Mirror
import NIOCore
import OCI
import Upstream

extension HTTPField.Name {
    static let dockerContentDigest = Self("Docker-Content-Digest")!
    static let dockerDistributionAPIVersion = Self("Docker-Distribution-API-Version")!
    static let ociFiltersApplied = Self("OCI-Filters-Applied")!
    static let ociNamespace = Self("OCI-Namespace")!
    static let warning = Self("Warning")!
    static let link = Self("Link")!
    /// HIT, MISS, REVALIDATED or STALE: how the cache answered (as nginx-style caches say it).
    static let xCache = Self("X-Cache")!
}

/// The body of `GET /v2/<name>/tags/list`.
struct TagList: Encodable {
    let name: String
    let tags: [String]
}

/// The read side of the Distribution API (`/v2/…`), over any `RegistryContent`.
///
/// Parses names, references and digests into OCI types at the edge; a malformed one never
/// reaches the mirror core, the store or an upstream. Every response to a `/v2/` request
/// carries `Docker-Distribution-API-Version: registry/2.0`.
public struct RegistryRoutes<Content: RegistryContent>: Sendable {
    let content: Content
    let router: UpstreamRouter
    /// Upstreams that take the client's own credentials; nil when none does.
    let forwarding: CredentialForwarding?

    public init(content: Content, router: UpstreamRouter, forwarding: CredentialForwarding? = nil) {
        self.content = content
        self.router = router
        self.forwarding = forwarding
    }

    public func add(to hbRouter: Router<RegistryRequestContext>) {
        // Router-wide, so that unmatched paths and methods get the envelope too.
        hbRouter.add(middleware: APIVersionMiddleware())
        hbRouter.add(middleware: RegistryErrorMiddleware())
        let group = hbRouter.group("v2")
        group.get("/") { request, _ in try await self.base(request) }
        group.head("/") { request, _ in try await self.base(request) }
        group.get("**") { request, context in try await self.dispatch(request, context, head: false) }
        group.head("**") { request, context in try await self.dispatch(request, context, head: true) }
        for method in [HTTPRequest.Method.put, .post, .patch, .delete] {
            group.on("**", method: method) { request, _ -> Response in
                throw RegistryError(.unsupported, "\(request.method) is not supported: this mirror is read-only")
            }
        }
    }

    /// `GET /v2/`. With an upstream that forwards client credentials, a request without any
    /// gets the challenge: clients send credentials only to a registry that asked for them here.
    /// With credentials (a `docker login`), the default upstream checks them if it forwards them.
    func base(_ request: Request) async throws -> Response {
        guard let forwarding else { return Self.base() }
        guard request.headers[.authorization] != nil else {
            throw forwarding.challenge(RegistryError(.unauthorized, "an upstream of this mirror checks your own credentials; send them"))
        }
        guard forwarding.upstreams.contains(router.defaultUpstream) else { return Self.base() }
        let client = try forwarding.client(of: request)
        do {
            try await RequestClient.$credentials.withValue(client) { try await content.verifyClient(of: router.defaultUpstream) }
        } catch let error as MirrorError {
            let refused = RegistryError(error)
            throw refused.code == .unauthorized ? forwarding.challenge(refused) : refused
        }
        return Self.base()
    }

    static func base() -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: "{}")))
    }

    /// `/v2/<name>/(manifests/<ref>|blobs/<digest>|tags/list|referrers/<digest>)`, matched on the
    /// last two path components, since names themselves contain slashes.
    func dispatch(_ request: Request, _ context: RegistryRequestContext, head: Bool) async throws -> Response {
        let path = request.uri.path
        guard let (name, kind, last) = Self.split(path) else { throw RegistryError(.notFound, "no such endpoint") }
        let namespace = request.uri.queryParameters["ns"].map(String.init)
        guard let forwarding, let key = try? router.route(path: name, namespace: namespace), forwarding.upstreams.contains(key.upstream) else {
            return try await dispatch(request, context, name: name, kind: kind, last: last, namespace: namespace, head: head)
        }
        // The upstream decides: the mirror core asks it as this client (ClientAccess.swift).
        let client = try forwarding.client(of: request)
        do {
            return try await RequestClient.$credentials.withValue(client) {
                try await dispatch(request, context, name: name, kind: kind, last: last, namespace: namespace, head: head)
            }
        } catch let error as RegistryError where error.code == .unauthorized {
            throw forwarding.challenge(error)
        }
    }

    /// `<name>`, the kind (`manifests`, `blobs`, `tags`, `referrers`) and the last component of a `/v2/` path.
    static func split(_ path: String) -> (name: Substring, kind: Substring, last: Substring)? {
        guard path.hasPrefix("/v2/") else { return nil }
        let rest = path.dropFirst(4)
        guard let lastSlash = rest.lastIndex(of: "/") else { return nil }
        let front = rest[..<lastSlash]
        guard let kindSlash = front.lastIndex(of: "/") else { return nil }
        return (front[..<kindSlash], front[front.index(after: kindSlash)...], rest[rest.index(after: lastSlash)...])
    }

    /// Whether the upstream, not `auth.htpasswd`, checks this request's credentials: `/v2/`
    /// itself and the repositories of an upstream that forwards client credentials.
    public func delegatesAuthentication(_ request: Request) -> Bool {
        guard let forwarding else { return false }
        let path = request.uri.path
        if path == "/v2/" || path == "/v2" { return true }
        guard let (name, _, _) = Self.split(path),
              let key = try? router.route(path: name, namespace: request.uri.queryParameters["ns"].map(String.init)) else { return false }
        return forwarding.upstreams.contains(key.upstream)
    }

    func dispatch(_ request: Request, _ context: RegistryRequestContext, name: Substring, kind: Substring, last: Substring,
                  namespace: String?, head: Bool) async throws -> Response {
        let path = request.uri.path
        switch kind {
        case "manifests":
            return try await manifest(request, name: name, namespace: namespace, reference: last, head: head)
        case "blobs":
            return try await blob(request, context, name: name, namespace: namespace, digest: last, head: head)
        case "tags" where last == "list":
            return try await tags(request, name: name, namespace: namespace, head: head)
        case "referrers":
            return try await referrers(request, name: name, namespace: namespace, digest: last, head: head)
        default:
            throw RegistryError(.notFound, "no such endpoint: \(path.prefix(200))")
        }
    }

    /// A digest from the path; malformed is `DIGEST_INVALID`.
    static func digest(_ text: Substring) throws -> Digest {
        do {
            return try Digest(parsing: text)
        } catch {
            throw RegistryError(.digestInvalid, error.message)
        }
    }

    func repository(_ name: Substring, _ namespace: String?) throws -> RepositoryKey {
        do {
            return try router.route(path: name, namespace: namespace)
        } catch {
            throw RegistryError(error)
        }
    }

    // MARK: Manifests

    func manifest(_ request: Request, name: Substring, namespace: String?, reference text: Substring, head: Bool) async throws -> Response {
        let repository = try repository(name, namespace)
        guard let reference = try? ManifestReference(parsing: text) else {
            // Neither a valid tag nor a valid digest: such a manifest cannot exist.
            throw RegistryError(.manifestUnknown, "no manifest can be named \(text.prefix(200))")
        }
        let manifest: ManifestContent
        do {
            manifest = try await content.manifest(repository, reference)
        } catch {
            throw RegistryError(error)
        }
        let accept = AcceptNegotiation(headerValues: request.headers[values: .accept])
        guard accept.accepts(manifest.mediaType) else {
            throw RegistryError(.manifestUnknown, "the manifest is \(manifest.mediaType), which the request's Accept header does not include")
        }
        let etag = "\"\(manifest.digest)\""
        var headers: HTTPFields = [
            .contentType: manifest.mediaType,
            .dockerContentDigest: manifest.digest.description,
            .eTag: etag,
        ]
        if let namespace { headers[.ociNamespace] = namespace }
        if let warning = manifest.warning { headers[.warning] = warning }
        headers[.xCache] = manifest.cacheResult.rawValue.uppercased()
        if let ifNoneMatch = request.headers[.ifNoneMatch], Self.matches(ifNoneMatch, etag: etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentLength] = String(manifest.bytes.count)
        if head { return Response(status: .ok, headers: headers) }
        content.delivered(Int64(manifest.bytes.count), of: manifest, in: repository)
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: manifest.bytes)))
    }

    static func matches(_ ifNoneMatch: String, etag: String) -> Bool {
        ifNoneMatch.split(separator: ",").contains { item in
            let tag = item.trimmingWhitespace()
            return tag == "*" || tag == etag || tag == "W/" + etag
        }
    }

    // MARK: Blobs

    func blob(_ request: Request, _ context: RegistryRequestContext, name: Substring, namespace: String?, digest text: Substring, head: Bool) async throws -> Response {
        let repository = try repository(name, namespace)
        let digest = try Self.digest(text)
        var headers: HTTPFields = [
            .contentType: "application/octet-stream",
            .dockerContentDigest: digest.description,
            .eTag: "\"\(digest)\"",
            .acceptRanges: "bytes",
            .cacheControl: "max-age=31536000",
        ]
        if let namespace { headers[.ociNamespace] = namespace }
        if head {
            // A HEAD for an uncached blob asks the upstream for the size and downloads nothing.
            let size: Int64
            do {
                size = try await content.blobSize(repository, digest)
            } catch {
                throw RegistryError(error)
            }
            let (status, _, length) = try Self.resolveRange(request, size: size, headers: &headers)
            headers[.contentLength] = String(length)
            return Response(status: status, headers: headers)
        }
        let blob: BlobContent
        do {
            // A well-formed Range may be answered by the upstream while the blob is not cached.
            blob = try await content.blob(repository, digest, range: request.headers[.range].flatMap(RangeRequest.init(header:)))
        } catch {
            throw RegistryError(error)
        }
        headers[.xCache] = blob.cacheResult == .hit ? "HIT" : "MISS"
        if let location = blob.redirectLocation() {
            // The store lets the client fetch the bytes itself (`storage.s3.redirect`), as
            // distribution does: a 307 keeps the method and the client's Range. Not cacheable,
            // since the URL expires.
            blob.finished(sent: 0)
            headers[.cacheControl] = "no-store"
            headers[.location] = location
            headers[.contentLength] = "0"
            headers[.contentType] = nil
            return Response(status: .temporaryRedirect, headers: headers)
        }
        // Headers go out once the size is known (a download: once the upstream's head came);
        // the body follows the reader.
        let size: Int64?
        do {
            size = try await blob.reader.size()
        } catch let error as MirrorError {
            throw RegistryError(error)
        }
        if let relayed = blob.relayedRange {
            // The upstream's own 206, relayed as it is.
            headers[.contentRange] = relayed.contentRange
            if let type = relayed.multipartType { headers[.contentType] = type }
            headers[.contentLength] = size.map(String.init)
            return Response(status: .partialContent, headers: headers,
                            body: BlobBody(content: blob, start: 0, length: size).body(channel: context.channel))
        }
        guard let size else {
            // No length from the upstream and none known: a plain GET streams chunked.
            return Response(status: .ok, headers: headers, body: BlobBody(content: blob, start: 0, length: nil).body(channel: context.channel))
        }
        let (status, start, length) = try Self.resolveRange(request, size: size, headers: &headers)
        headers[.contentLength] = String(length)
        if length == 0 {
            blob.finished(sent: 0)
            return Response(status: status, headers: headers)
        }
        return Response(status: status, headers: headers, body: BlobBody(content: blob, start: start, length: length).body(channel: context.channel))
    }

    /// Applies the request's `Range` to a blob of `size`: status, start and length, and `Content-Range`.
    static func resolveRange(_ request: Request, size: Int64, headers: inout HTTPFields) throws -> (HTTPResponse.Status, Int64, Int64) {
        switch ByteRange.resolve(request.headers[.range], size: size) {
        case .full:
            return (.ok, 0, size)
        case .partial(let from, let to):
            headers[.contentRange] = "bytes \(from)-\(to)/\(size)"
            return (.partialContent, from, to - from + 1)
        case .unsatisfiable:
            throw RegistryError(.rangeInvalid, "range \(request.headers[.range]?.prefix(100) ?? "") cannot be satisfied for a blob of \(size) bytes",
                                headers: [.contentRange: "bytes */\(size)"])
        }
    }

    // MARK: Tags and referrers

    func tags(_ request: Request, name: Substring, namespace: String?, head: Bool) async throws -> Response {
        let repository = try repository(name, namespace)
        let query = request.uri.queryParameters
        var limit = Int.max
        if let n = query["n"] {
            guard let value = Int(n), value >= 0 else {
                throw RegistryError(.paginationNumberInvalid, "n must be a non-negative integer")
            }
            limit = value
        }
        let all: [String]
        do {
            all = try await content.tags(repository)
        } catch {
            throw RegistryError(error)
        }
        var page = all
        if let last = query["last"] { page = page.filter { $0 > last } }
        var headers: HTTPFields = [.contentType: "application/json"]
        if page.count > limit {
            page = Array(page.prefix(limit))
            if let lastOnPage = page.last {
                let escaped = lastOnPage.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? lastOnPage
                headers[.link] = "</v2/\(name)/tags/list?n=\(limit)&last=\(escaped)>; rel=\"next\""
            }
        }
        return try Self.json(TagList(name: repository.name.value, tags: page), headers: headers, head: head)
    }

    func referrers(_ request: Request, name: Substring, namespace: String?, digest text: Substring, head: Bool) async throws -> Response {
        let repository = try repository(name, namespace)
        let digest = try Self.digest(text)
        var listed: [Descriptor]
        do {
            listed = try await content.referrers(repository, digest)
        } catch {
            throw RegistryError(error)
        }
        var headers: HTTPFields = [.contentType: MediaType.ociIndex]
        if let artifactType = request.uri.queryParameters["artifactType"].map(String.init) {
            listed = listed.filter { $0.artifactType == artifactType }
            headers[.ociFiltersApplied] = "artifactType"
        }
        return try Self.json(ImageIndex(manifests: listed), headers: headers, head: head)
    }

    static func json(_ value: some Encodable, headers: HTTPFields, head: Bool) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        var headers = headers
        headers[.contentLength] = String(data.count)
        if head { return Response(status: .ok, headers: headers) }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Adds `Docker-Distribution-API-Version: registry/2.0` to every `/v2/` response, errors included.
struct APIVersionMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            var response = try await next(request, context)
            response.headers[.dockerDistributionAPIVersion] = "registry/2.0"
            return response
        } catch let error as RegistryError {
            var error = error
            error.headers[.dockerDistributionAPIVersion] = "registry/2.0"
            throw error
        }
    }
}

