import Hummingbird
import Logging
import NIOCore

/// The request context of the registry front. It keeps the connection's `Channel`, which
/// blob responses need for zero-copy file sends, and whose peer the login throttle counts.
public struct RegistryRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }

    public var remoteAddress: SocketAddress? { channel.remoteAddress }
}
