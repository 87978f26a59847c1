import HummingbirdCore
import Logging
import NIOCore

/// The connection pipelines the registry serves on. Today the plain HTTP/1 one; a TLS pipeline
/// is built beside it (without `FileRegionHandler`, which TLS cannot carry: blob bodies then go
/// out as buffers, which the API layer falls back to by itself).
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
        // Evaluated per connection: each gets handlers of its own.
        .http1(configuration: .init(additionalChannelHandlers: (zeroCopy ? [FileRegionHandler()] : []) + [ParseErrorEnvelopeHandler(answer: parseErrorAnswer)],
                                           idleTimeout: .nanoseconds(Int64(idleTimeout.components.seconds) * 1_000_000_000 + idleTimeout.components.attoseconds / 1_000_000_000)))
    }

    /// Guards a listening channel against more than `maxConnections` connections and against
    /// running out of file descriptors (see `ConnectionGuard`). Call it from `onServerRunning`.
    public static func guardConnections(of channel: any Channel, maxConnections: Int, logger: Logger) async throws {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ConnectionGuard(maxConnections: maxConnections, port: channel.localAddress?.port, logger: logger), position: .first)
        }.get()
    }
}
