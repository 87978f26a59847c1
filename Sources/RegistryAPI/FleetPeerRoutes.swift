import Foundation
import HTTPTypes
import Hummingbird
import Mirror
import OCI

/// The fleet's peer endpoint: `GET /fleet/v1/blobs/<digest>` streams this replica's running
/// download of a blob to another replica of the fleet, as it arrives.
///
/// Served on a listener of its own (`fleet.listen`), never the clients' one, and every
/// request must carry a `FleetToken` made with the fleet secret for exactly that path: without
/// the secret it answers 401 and reveals nothing. It has no store reads and no upstream: a blob
/// not being downloaded here is a 404, and the asking replica reads the shared store instead.
public struct FleetPeerRoutes: Sendable {
    let secret: [UInt8]
    let blob: @Sendable (Digest) -> BlobContent?
    let now: @Sendable () -> Int64

    public init(secret: [UInt8], now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970) },
                blob: @escaping @Sendable (Digest) -> BlobContent?) {
        self.secret = secret
        self.blob = blob
        self.now = now
    }

    public func add(to router: Router<RegistryRequestContext>) {
        router.add(middleware: RegistryErrorMiddleware())
        router.get("/fleet/v1/blobs/:digest") { request, context in try await self.serve(request, context) }
        router.get("/healthz") { _, _ in "ok\n" }
    }

    func serve(_ request: Request, _ context: RegistryRequestContext) async throws -> Response {
        guard FleetToken.verify(request.headers[.authorization], secret: secret, method: "GET", path: request.uri.path, now: now()) else {
            throw RegistryError(.unauthorized, "a fleet token for this path is required")
        }
        let text = context.parameters.get("digest") ?? ""
        let digest: Digest
        do {
            digest = try Digest(parsing: text)
        } catch {
            throw RegistryError(.digestInvalid, error.message)
        }
        guard let content = blob(digest) else {
            throw RegistryError(.blobUnknown, "\(digest) is not being downloaded by this replica")
        }
        let size: Int64?
        do {
            size = try await content.reader.size()
        } catch let error as MirrorError {
            content.finished(sent: 0)
            throw RegistryError(error)
        }
        var headers: HTTPFields = [.contentType: "application/octet-stream", .dockerContentDigest: digest.description]
        headers[.contentLength] = size.map(String.init)
        return Response(status: .ok, headers: headers, body: BlobBody(content: content, start: 0, length: size).body(channel: context.channel))
    }
}
