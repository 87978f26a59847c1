import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Puts the error envelope into the answer to a request the HTTP/1 decoder rejected.
///
/// Such a request (control bytes in the path, an unknown method token, a head over the
/// decoder's 80 KiB limits) never reaches the router: Hummingbird answers it with a bare
/// `400`, `Content-Length: 0`, and closes. A registry client expects `{"errors":[…]}` on
/// every error, so this handler, above the HTTP/1 codec, notes the decoder's error and
/// rewrites that one response: the envelope, and `431` when the head was too large. The
/// answer itself comes from the API layer (`ParseErrorAnswer`), which owns the error table.
final class ParseErrorEnvelopeHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var parseError: HTTPParserError?
    private let answer: ParseErrorAnswer.Render

    init(answer: @escaping ParseErrorAnswer.Render) { self.answer = answer }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError { parseError = error }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Only Hummingbird's own answer to the parse error: a router error always has a body.
        guard let error = parseError, case .head(var head) = unwrapOutboundIn(data), head.status == .badRequest,
              head.headerFields[.contentLength] == "0", head.headerFields[.contentType] == nil else {
            context.write(data, promise: promise)
            return
        }
        parseError = nil
        let rendered = answer(error == .headerOverflow, "the request could not be parsed: \(error.debugDescription)")
        head.status = rendered.status
        for field in rendered.headerFields { head.headerFields[field.name] = field.value }
        head.headerFields[.contentLength] = String(rendered.body.readableBytes)
        let body = rendered.body
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: promise)
    }
}

/// The answer to a request the HTTP/1 decoder rejected, rendered by the API layer.
public struct ParseErrorAnswer: Sendable {
    /// Renders the answer: whether the head was too large, and what went wrong.
    public typealias Render = @Sendable (_ headTooLarge: Bool, _ detail: String) -> ParseErrorAnswer

    public var status: HTTPResponse.Status
    public var headerFields: HTTPFields
    public var body: ByteBuffer

    public init(status: HTTPResponse.Status, headerFields: HTTPFields, body: ByteBuffer) {
        self.status = status
        self.headerFields = headerFields
        self.body = body
    }
}
