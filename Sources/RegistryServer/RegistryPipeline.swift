import HummingbirdCore
import Logging
import NIOCore
import NIOSSL

/// The connection pipelines the registry serves on: plain HTTP/1, and HTTP/1 over TLS. The TLS
/// one has no `FileRegionHandler` (TLS cannot carry a file region): blob bodies then go out as
/// buffers, which the API layer falls back to by itself.
public enum RegistryPipeline {
    /// HTTP/1 with the zero-copy blob handler unless `zeroCopy` is off (then blob bodies are
    /// read into buffers), and the envelope for requests the HTTP/1 decoder rejects.
    ///
    /// `idleTimeout`: an idle keep-alive connection, or a request head that stops arriving, is
    /// closed after it. A response in progress, however slow its client, is never cut by it.
    /// The default 75 s is nginx's: below Go clients' 90 s pool timeout, so dockerd and
    /// containerd see the close of an idle connection before they would reuse it.
    public static func http1(zeroCopy: Bool = true, idleTimeout: Duration = .seconds(75),
                             parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTPServerBuilder {
        .http1(configuration: configuration(zeroCopy: zeroCopy, idleTimeout: idleTimeout, parseErrorAnswer: parseErrorAnswer))
    }

    /// HTTP/1 over TLS: `NIOSSLServerHandler` first, with the identity's context of the moment, so a
    /// renewed certificate reaches new connections while open ones keep theirs. Otherwise as
    /// `http1` without zero-copy, and with a `WritePacer` in its place, so blob bodies wait for
    /// their writes (see `WritePacing`). The idle timeout also closes a stalled handshake.
    public static func https(identity: TLSIdentity, idleTimeout: Duration = .seconds(75),
                             parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTPServerBuilder {
        let configuration = configuration(zeroCopy: false, pacing: true, idleTimeout: idleTimeout, parseErrorAnswer: parseErrorAnswer)
        return HTTPServerBuilder { responder in
            TLSChildChannel(base: HTTP1Channel(responder: responder, configuration: configuration), identity: identity)
        }
    }

    private static func configuration(zeroCopy: Bool, pacing: Bool = false, idleTimeout: Duration,
                                      parseErrorAnswer: @escaping ParseErrorAnswer.Render) -> HTTP1Channel.Configuration {
        // Evaluated per connection: each gets handlers of its own.
        .init(additionalChannelHandlers: (zeroCopy ? [FileRegionHandler()] : []) + (pacing ? [WritePacer()] : [])
                  + [ParseErrorEnvelopeHandler(answer: parseErrorAnswer)],
              idleTimeout: .nanoseconds(Int64(idleTimeout.components.seconds) * 1_000_000_000 + idleTimeout.components.attoseconds / 1_000_000_000))
    }

    /// Guards a listening channel against more than `maxConnections` connections and against
    /// running out of file descriptors (see `ConnectionGuard`). Call it from `onServerRunning`.
    public static func guardConnections(of channel: any Channel, maxConnections: Int, logger: Logger) async throws {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ConnectionGuard(maxConnections: maxConnections, port: channel.localAddress?.port, logger: logger), position: .first)
        }.get()
    }
}

/// A child channel that starts with a TLS handshake, then sets up `base` above it.
struct TLSChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let identity: TLSIdentity

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: identity.context()))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
