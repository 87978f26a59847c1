import Hummingbird
import Logging
import NIOCore

/// The request context of the registry front. It keeps the connection's `Channel`, which
/// blob responses need for zero-copy file sends.
public struct RegistryRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}
