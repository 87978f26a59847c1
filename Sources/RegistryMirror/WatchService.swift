import Logging
import Mirror
import ServiceLifecycle

/// Runs the watch list as a service: a refresh at start, then one every `watch.interval`.
/// Graceful shutdown cancels a refresh in progress at its next suspension point.
struct WatchService: Service {
    let watch: WatchList
    func run() async throws {
        await cancelWhenGracefulShutdown { await watch.run() }
    }
}

/// The server's watch list, or nil when `watch.images` is empty or the mirror is offline.
/// An entry that names no configured upstream stops the start, with every such entry listed.
func makeWatchList(_ settings: ServeSettings, content: PullThroughRegistry, logger: Logger) throws -> WatchList? {
    guard !settings.watchImages.isEmpty else { return nil }
    guard !settings.offline else {
        logger.notice("watch list ignored: the mirror is offline", metadata: ["watch.images": "\(settings.watchImages.count)"])
        return nil
    }
    let images = try settings.resolvedWatchImages()
    return WatchList(images: images, interval: settings.watchInterval, registry: content, logger: logger)
}
