import HummingbirdCore
import HummingbirdHTTP2
import Logging
import NIOCore
import NIOHTTP2
import NIOSSL
import NIOTLS

/// The connection pipelines the registry serves on: plain HTTP/1, and TLS with HTTP/2 or
/// HTTP/1.1 as ALPN decides. The TLS one has no `FileRegionHandler` (TLS cannot carry a file
/// region): blob bodies then go out as buffers, which the API layer falls back to by itself.
/// Both have a `WritePacer`, so a body sent as buffers waits for the socket (see `WritePacing`).
public enum RegistryPipeline {
    /// HTTP/1 with the zero-copy blob handler unless `zeroCopy` is off (then blob bodies are
    /// read into buffers), the pacer for bodies sent as buffers (those, a relayed range, a
    /// remote store's blob), and the envelope for requests the HTTP/1 decoder rejects.
    ///
    /// `idleTimeout`: an idle keep-alive connection, or a request head that stops arriving, is
    /// closed after it. A response in progress, however slow its client, is never cut by it.
    /// The default 75 s is nginx's: below Go clients' 90 s pool timeout, so dockerd and
    /// containerd see the close of an idle connection before they would reuse it.
    public static func http1(zeroCopy: Bool = true, idleTimeout: Duration = .seconds(75),
                             parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTPServerBuilder {
        .http1(configuration: configuration(zeroCopy: zeroCopy, idleTimeout: idleTimeout, parseErrorAnswer: parseErrorAnswer))
    }

    /// TLS, then HTTP/2 when the client offers `h2` in ALPN, else HTTP/1.1. `NIOSSLServerHandler`
    /// comes first, with the identity's context of the moment, so a renewed certificate reaches
    /// new connections while open ones keep theirs. Each HTTP/1.1 connection and each HTTP/2
    /// stream is set up as `http1` without zero-copy, so blob bodies all go out as buffers, paced
    /// by its `WritePacer`. `idleTimeout` also bounds the handshake.
    public static func https(identity: TLSIdentity, idleTimeout: Duration = .seconds(75),
                             parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTPServerBuilder {
        let configuration = configuration(zeroCopy: false, idleTimeout: idleTimeout, parseErrorAnswer: parseErrorAnswer)
        return HTTPServerBuilder { responder in
            TLSChildChannel(http1: HTTP1Channel(responder: responder, configuration: configuration),
                            http2: HTTP2Channel(responder: responder, configuration: .init(idleTimeout: idleTimeout, streamConfiguration: configuration)),
                            identity: identity, handshakeTimeout: idleTimeout)
        }
    }

    private static func configuration(zeroCopy: Bool, idleTimeout: Duration,
                                      parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTP1Channel.Configuration {
        // Evaluated per connection: each gets handlers of its own. Outbound parts pass the
        // pacer before `FileRegionHandler`, which sits next to the codec.
        .init(additionalChannelHandlers: (zeroCopy ? [FileRegionHandler()] : []) + [WritePacer()]
                  + [ParseErrorEnvelopeHandler(answer: parseErrorAnswer)],
              idleTimeout: TimeAmount(idleTimeout))
    }

    /// Guards a listening channel against more than `maxConnections` connections and against
    /// running out of file descriptors (see `ConnectionGuard`). Call it from `onServerRunning`.
    public static func guardConnections(of channel: any Channel, maxConnections: Int, logger: Logger) async throws {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ConnectionGuard(maxConnections: maxConnections, port: channel.localAddress?.port, logger: logger), position: .first)
        }.get()
    }
}

/// A child channel that starts with a TLS handshake, then sets up HTTP/2 or HTTP/1.1 above it,
/// as ALPN chose (Hummingbird's `HTTP2UpgradeChannel` does the same with a fixed context).
struct TLSChildChannel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<NIONegotiatedHTTPVersion<HTTP1Channel.Value, HTTP2Channel.Value>>
        let channel: any Channel
    }

    let http1: HTTP1Channel
    let http2: HTTP2Channel
    let identity: TLSIdentity
    let handshakeTimeout: Duration

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: identity.context()))
            let negotiation = NIOTypedApplicationProtocolNegotiationHandler<NIONegotiatedHTTPVersion<HTTP1Channel.Value, HTTP2Channel.Value>> { result, channel in
                switch result {
                case .negotiated("h2"):
                    return http2.setup(channel: channel, logger: logger).map { .http2($0) }
                case .negotiated("http/1.1"), .fallback:
                    return http1.setup(channel: channel, logger: logger).map { .http1_1($0) }
                case .negotiated:
                    return channel.close().flatMap { channel.eventLoop.makeFailedFuture(NIOHTTP2Errors.invalidALPNToken()) }
                }
            }
            try channel.pipeline.syncOperations.addHandler(negotiation)
            // Until a protocol is agreed no idle handler is in the pipeline: a handshake that
            // stalls is closed here instead.
            let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(handshakeTimeout)) { channel.close(promise: nil) }
            negotiation.protocolNegotiationResult.whenComplete { _ in deadline.cancel() }
            return Value(negotiated: negotiation.protocolNegotiationResult, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .http1_1(let connection): await http1.handle(value: connection, logger: logger)
            case .http2(let connection): await http2.handle(value: connection, logger: logger)
            }
        } catch {
            logger.debug("TLS connection closed before a protocol was agreed: \(error)")
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        self = .nanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }
}
