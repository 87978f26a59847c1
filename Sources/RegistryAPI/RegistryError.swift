import Foundation
import HTTPTypes
import Hummingbird
import Mirror
import RegistryServer

/// An error as the Distribution API puts it on the wire: `{"errors":[{"code","message","detail"}]}`.
///
/// The only place where errors become HTTP statuses and codes. Every 4xx carries a code from
/// the distribution spec's table (BLOB_UNKNOWN … TOOMANYREQUESTS); where the spec has none for
/// a case (an unknown endpoint, a bad page size or range), `UNSUPPORTED` with the fitting status.
/// The spec has no code for a server failure, so 5xx keep distribution's own `UNKNOWN` and
/// `UNAVAILABLE` (`registry/api/errcode/register.go`), which its client libraries know.
public struct RegistryError: HTTPResponseError, Sendable, CustomStringConvertible {
    /// A wire code with its fixed status.
    public struct Code: Sendable, Equatable {
        public let name: String
        public let status: HTTPResponse.Status
        /// The code's fixed message, as distribution words it; the specifics go in `detail`.
        public let message: String

        init(name: String, status: HTTPResponse.Status, message: String = "") {
            self.name = name
            self.status = status
            self.message = message
        }

        public static let blobUnknown = Code(name: "BLOB_UNKNOWN", status: .notFound, message: "blob unknown to registry")
        public static let digestInvalid = Code(name: "DIGEST_INVALID", status: .badRequest, message: "invalid digest")
        public static let manifestUnknown = Code(name: "MANIFEST_UNKNOWN", status: .notFound, message: "manifest unknown")
        public static let manifestInvalid = Code(name: "MANIFEST_INVALID", status: .badRequest, message: "manifest invalid")
        public static let nameInvalid = Code(name: "NAME_INVALID", status: .badRequest, message: "invalid repository name")
        public static let nameUnknown = Code(name: "NAME_UNKNOWN", status: .notFound, message: "repository name not known to registry")
        /// distribution says PAGINATION_NUMBER_INVALID, which is not in the spec's table.
        public static let paginationNumberInvalid = Code(name: "UNSUPPORTED", status: .badRequest, message: "invalid number of results requested")
        /// distribution says RANGE_INVALID, which is not in the spec's table.
        public static let rangeInvalid = Code(name: "UNSUPPORTED", status: .rangeNotSatisfiable, message: "invalid content range")
        public static let unauthorized = Code(name: "UNAUTHORIZED", status: .unauthorized, message: "authentication required")
        public static let denied = Code(name: "DENIED", status: .forbidden, message: "requested access to the resource is denied")
        public static let unsupported = Code(name: "UNSUPPORTED", status: .methodNotAllowed, message: "The operation is unsupported.")
        /// A path or method the API does not have. `NOT_FOUND` is in neither the spec nor distribution.
        public static let notFound = Code(name: "UNSUPPORTED", status: .notFound, message: "no such endpoint")
        public static let tooManyRequests = Code(name: "TOOMANYREQUESTS", status: .tooManyRequests, message: "too many requests")
        public static let unavailable = Code(name: "UNAVAILABLE", status: .serviceUnavailable, message: "service unavailable")
        public static let badGateway = Code(name: "UNKNOWN", status: .badGateway, message: "the upstream sent content that failed verification")
        public static let unknown = Code(name: "UNKNOWN", status: .internalServerError, message: "unknown error")
        /// A request that is not valid HTTP, or one Hummingbird refuses; distribution has no code for it.
        public static let badRequest = Code(name: "UNSUPPORTED", status: .badRequest, message: "bad request")
        /// A request line and headers over the decoder's limits.
        public static let headersTooLarge = Code(name: "UNSUPPORTED", status: .requestHeaderFieldsTooLarge, message: "request header fields too large")

        /// Every code above; the tests hold each against the spec's table.
        static let all: [Code] = [blobUnknown, digestInvalid, manifestUnknown, manifestInvalid, nameInvalid, nameUnknown,
                                  paginationNumberInvalid, rangeInvalid, unauthorized, denied, unsupported, notFound,
                                  tooManyRequests, unavailable, badGateway, unknown, badRequest, headersTooLarge]
    }

    public let code: Code
    /// What exactly went wrong, for a person reading the client's error.
    public let detail: String
    public var headers: HTTPFields
    /// The mirror's error with where it was raised and its causes, for the request log of a
    /// 5xx; never sent to the client.
    public var cause: String? { source?.debugDescription }
    private var source: MirrorError?

    public init(_ code: Code, _ detail: String, headers: HTTPFields = [:]) {
        self.code = code
        self.detail = detail
        self.headers = headers
    }

    public var status: HTTPResponse.Status { code.status }
    public var description: String { "\(code.name): \(detail)" }

    /// Maps a mirror-core error to its wire code: the single table.
    public init(_ error: MirrorError) {
        let code: Code
        switch error.code {
        case .manifestUnknown: code = .manifestUnknown
        case .blobUnknown: code = .blobUnknown
        case .nameUnknown: code = .nameUnknown
        case .nameInvalid: code = .nameInvalid
        case .upstreamUnavailable, .indexUnavailable: code = .unavailable
        case .upstreamDenied, .accessDenied: code = .denied
        case .unauthorized: code = .unauthorized
        case .tooManyRequests: code = .tooManyRequests
        case .unsupported: code = .unsupported
        case .invalidContent: code = .badGateway
        default: code = .unknown
        }
        var headers: HTTPFields = [:]
        if let retryAfter = error.retryAfter { headers[.retryAfter] = String(retryAfter) }
        self.init(code, error.message, headers: headers)
        source = error
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "application/json"
        let body = Self.envelope(code: code.name, message: code.message, detail: detail)
        headers[.contentLength] = String(body.readableBytes)
        if request.method == .head {
            return Response(status: status, headers: headers, body: .init())
        }
        return Response(status: status, headers: headers, body: .init(byteBuffer: body))
    }

    /// The answer to a request the HTTP/1 decoder rejected (`RegistryPipeline`): the envelope,
    /// `431` for a head that is too large, `400` otherwise.
    public static let parseErrorAnswer: ParseErrorAnswer.Render = { headTooLarge, detail in
        let code: Code = headTooLarge ? .headersTooLarge : .badRequest
        return ParseErrorAnswer(status: code.status,
                                headerFields: [.contentType: "application/json", .dockerDistributionAPIVersion: "registry/2.0"],
                                body: envelope(code: code.name, message: code.message, detail: detail))
    }

    static func envelope(code: String, message: String, detail: String) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Envelope(errors: [.init(code: code, message: message, detail: detail)]))) ?? Data()
        return ByteBuffer(bytes: data)
    }
}

/// Turns errors that are not `RegistryError` (an unmatched route, an unexpected failure) into
/// the envelope, so a `/v2/` client never gets a body it cannot parse.
struct RegistryErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as RegistryError {
            throw error
        } catch let error as MirrorError {
            throw RegistryError(error)
        } catch let error as HTTPError {
            switch error.status {
            case .notFound: throw RegistryError(.notFound, "no such endpoint: \(request.method) \(request.uri.path.prefix(200))")
            case .methodNotAllowed: throw RegistryError(.unsupported, "\(request.method) is not supported by this read-only mirror")
            case .badRequest: throw RegistryError(.badRequest, error.body ?? "bad request")
            default: throw error
            }
        } catch {
            context.logger.error("unexpected error", metadata: ["error": "\(error)"])
            throw RegistryError(.unknown, "internal error")
        }
    }

    typealias Code = RegistryError.Code
}

/// `{"errors":[{"code","message","detail"}]}`
struct Envelope: Codable, Equatable {
    struct Item: Codable, Equatable {
        let code: String
        let message: String
        let detail: String
    }
    let errors: [Item]
}
