import HTTPTypes
import Hummingbird
import Logging
import Mirror
import NIOCore
import RegistryServer

/// The id of the request being served, for log lines written below the HTTP layer (the
/// mirror core logs with its own logger; a metadata provider adds this id to its lines).
public enum RequestID {
    @TaskLocal public static var current: String?

    /// Adds `hb.request.id` to every log line written while a request is being served.
    public static let metadataProvider = Logger.MetadataProvider {
        guard let id = current else { return [:] }
        return ["hb.request.id": .string(id)]
    }
}

/// One log line per request at info level (route, status, bytes, duration, cache result,
/// request id), request metrics, and `X-Request-Id` on every response. A streamed body is
/// logged once it has been written, so the duration covers the transfer.
public struct RequestLogMiddleware<Context: RequestContext>: RouterMiddleware {
    let stats: MirrorStats?

    public init(stats: MirrorStats?) {
        self.stats = stats
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let id = context.id
        let start = ContinuousClock.now
        let route = Self.route(request.uri.path)
        return try await RequestID.$current.withValue(id) {
            do {
                var response = try await next(request, context)
                response.headers[.xRequestID] = id
                let status = response.status.code
                let cache = response.headers[.xCache]
                let body = response.body
                response.body = ResponseBody(contentLength: body.contentLength) { writer in
                    // `bytes=` is what was sent, not the Content-Length: a cut body logs less.
                    let sent = SentBytes()
                    var failure: (any Error)?
                    do {
                        try await SentBytes.$current.withValue(sent) { try await body.write(CountingBodyWriter(writer, into: sent)) }
                    } catch {
                        failure = error
                    }
                    let bytes = Int(sent.value)
                    self.finish(request, context, route: route, status: status, bytes: bytes, cache: cache, start: start, cut: failure != nil)
                    if let failure { throw failure }
                }
                return response
            } catch var error as RegistryError {
                error.headers[.xRequestID] = id
                finish(request, context, route: route, status: error.status.code, bytes: 0, cache: nil, start: start, cut: false,
                       cause: error.status.code >= 500 ? error.cause : nil)
                throw error
            } catch let error as HTTPResponseError {
                finish(request, context, route: route, status: error.status.code, bytes: 0, cache: nil, start: start, cut: false)
                throw error
            } catch {
                finish(request, context, route: route, status: 500, bytes: 0, cache: nil, start: start, cut: false)
                throw error
            }
        }
    }

    private func finish(_ request: Request, _ context: Context, route: String, status: Int, bytes: Int, cache: String?, start: ContinuousClock.Instant, cut: Bool, cause: String? = nil) {
        let duration = start.duration(to: .now)
        stats?.request(route: route, method: request.method.rawValue, status: status, duration: duration)
        var metadata: Logger.Metadata = [
            "http.method": "\(request.method)", "http.route": "\(route)", "http.path": "\(request.uri.path.prefix(300))",
            "http.status": "\(status)", "bytes": "\(bytes)",
            "duration_ms": "\(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)",
        ]
        if let cache { metadata["cache.result"] = "\(cache.lowercased())" }
        if cut { metadata["error"] = "the response body was cut short" }
        if let cause { metadata["error"] = "\(cause)" }
        context.logger.info("request", metadata: metadata)
    }

    /// The route name for metrics and logs: bounded cardinality, never the raw path.
    static func route(_ path: String) -> String {
        guard path.hasPrefix("/v2/") || path == "/v2" else {
            switch path {
            case "/": return "status"
            case "/metrics": return "metrics"
            case "/healthz", "/readyz": return "health"
            default: return "other"
            }
        }
        if path == "/v2/" || path == "/v2" { return "base" }
        if path.contains("/manifests/") { return "manifest" }
        if path.contains("/blobs/uploads") { return "upload" }
        if path.contains("/blobs/") { return "blob" }
        if path.hasSuffix("/tags/list") { return "tags" }
        if path.contains("/referrers/") { return "referrers" }
        return "other"
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-Id")!
}

/// Passes a body through, counting its bytes (file-region markers excepted: `SentBytes`
/// counts the regions they stand for).
struct CountingBodyWriter: ResponseBodyWriter {
    var inner: any ResponseBodyWriter
    let sent: SentBytes

    init(_ inner: any ResponseBodyWriter, into sent: SentBytes) {
        self.inner = inner
        self.sent = sent
    }

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await inner.write(buffer)
        if buffer != ZeroCopySender.marker { sent.add(Int64(buffer.readableBytes)) }
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await inner.finish(trailingHeaders)
    }
}
