import Foundation
import Logging
import MetadataIndex
import OCI
import Synchronization

/// The watch list: images the server keeps fresh on a schedule, before any client asks for
/// them (what zot's periodic sync and Dragonfly's preheat do).
///
/// Once at start and then every `interval`, each image is seeded again through `Seeder`, the
/// path `registry-mirror seed` takes: its tag is revalidated with the upstream whatever the
/// tag's TTL (the interval is the freshness the operator asked for, and a HEAD is free
/// against Docker Hub's pull limit), and a new digest is fetched with the blobs of the
/// chosen platforms. Nothing is pinned: a watch that pinned every digest a tag ever had
/// would fill the disk. Each run marks the current image as used instead, so eviction takes
/// it last, and a digest the tag has left ages out like any other image.
///
/// In a fleet, each image is refreshed by one replica per interval, whichever takes the
/// image's lease for the interval first (`FleetWorkKey.watch`, in the fill lease table, held
/// for `interval` on the database's clock): the others skip it and show what the shared tag row
/// says. One node refreshes every image itself, as always.
///
/// Images are refreshed one after another, so a long list does not spend the upstream's
/// rate limit in a burst. `run()` stops at its next suspension point when its task is
/// cancelled; a blob download already started goes on in the `FillService`, as a client's
/// would, until the server's shutdown cancels it (nobody reads it then).
public final class WatchList: Sendable {
    /// One watched image, resolved to its cache key.
    public struct Image: Sendable {
        public let repository: RepositoryKey
        public let reference: ManifestReference
        /// The full reference, as logs and the status page name it.
        public let name: String
        public let platforms: PlatformSelection

        public init(repository: RepositoryKey, reference: ManifestReference, name: String, platforms: PlatformSelection) {
            self.repository = repository
            self.reference = reference
            self.name = name
            self.platforms = platforms
        }
    }

    /// How an image's last refresh went.
    public enum Outcome: String, Sendable {
        /// Not refreshed yet.
        case pending
        /// The upstream named the digest already cached; anything missing was fetched.
        case current
        /// A new digest was fetched.
        case updated
        case failed
    }

    /// One image's state, for the status page.
    public struct ImageStatus: Sendable {
        public let name: String
        public let platforms: PlatformSelection
        public var outcome = Outcome.pending
        /// The digest the last successful refresh found.
        public var digest: Digest?
        public var checkedAt: Date?
        /// Bytes downloaded by the last refresh (zero when everything was cached).
        public var fetchedBytes: Int64 = 0
        /// The last refresh's failure; nil after a success.
        public var error: String?
        /// In a fleet: the replica that refreshed the image this interval, when not this one.
        /// `digest` and `checkedAt` are then the shared tag row's (`liveSnapshot()`).
        public var checkedBy: String?
    }

    /// The whole list's state, for the status page.
    public struct Snapshot: Sendable {
        public let interval: Duration
        public var running = false
        public var runs = 0
        public var lastRunStarted: Date?
        public var lastRunFinished: Date?
        public var nextRun: Date?
        public var images: [ImageStatus]
    }

    let images: [Image]
    let interval: Duration
    let seeder: Seeder
    let registry: PullThroughRegistry
    let logger: Logger
    private let state: Mutex<Snapshot>

    public init(images: [Image], interval: Duration, registry: PullThroughRegistry, logger: Logger) {
        self.images = images
        self.interval = interval
        self.registry = registry
        self.seeder = Seeder(registry: registry)
        self.logger = logger
        state = Mutex(Snapshot(interval: interval, images: images.map { ImageStatus(name: $0.name, platforms: $0.platforms) }))
    }

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// The snapshot, with what the shared tag rows say now for the images another replica of
    /// the fleet refreshed: the digest every replica serves and when it was last checked.
    public func liveSnapshot() async -> Snapshot {
        var snapshot = self.snapshot
        for (position, image) in images.enumerated() where snapshot.images[position].checkedBy != nil {
            switch image.reference {
            case .tag(let tag):
                guard let row = try? await registry.index.tag(image.repository, tag) else { continue }
                snapshot.images[position].digest = row.digest
                snapshot.images[position].checkedAt = Date(timeIntervalSince1970: TimeInterval(row.checkedAt))
            case .digest(let digest):
                guard (try? await registry.index.blobSize(digest)) != nil else { continue }
                snapshot.images[position].digest = digest
            }
            snapshot.images[position].outcome = .current
        }
        return snapshot
    }

    /// The registry's clock: the times shown are those its tags are checked by.
    var clock: any MirrorClock { registry.clock }

    /// Refreshes every image now and then every `interval`, until the task is cancelled.
    public func run() async {
        while !Task.isCancelled {
            await refresh()
            let next = clock.now().addingTimeInterval(Self.seconds(interval))
            state.withLock { $0.nextRun = next }
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
        }
    }

    /// One run over the whole list. A failed image does not stop the others.
    public func refresh() async {
        state.withLock {
            $0.running = true
            $0.lastRunStarted = clock.now()
            $0.nextRun = nil
        }
        defer {
            state.withLock {
                $0.running = false
                $0.runs += 1
                $0.lastRunFinished = clock.now()
            }
        }
        for (position, image) in images.enumerated() {
            guard !Task.isCancelled else { return }
            await refresh(image, at: position)
        }
    }

    private func refresh(_ image: Image, at position: Int) async {
        let metadata: Logger.Metadata = ["oci.reference": "\(image.name)"]
        if let fleet = registry.fleet, let other = await refreshedElsewhere(image, fleet: fleet) {
            let replica = other.owner.lastIndex(of: "/").map { String(other.owner[..<$0]) } ?? other.owner
            state.withLock {
                $0.images[position].checkedBy = replica
                // What the other replica found is read from the shared rows (`liveSnapshot()`).
                $0.images[position].outcome = .pending
                $0.images[position].digest = nil
                $0.images[position].checkedAt = nil
                $0.images[position].fetchedBytes = 0
                $0.images[position].error = nil
            }
            logger.debug("watch list: refreshed by another replica this interval", metadata: metadata.merging(["fleet.owner": "\(other.owner)"]) { $1 })
            return
        }
        let known = await cachedDigest(image)
        let fetched = ByteTally()
        do throws(MirrorError) {
            let result = try await seeder.seed(image.repository, image.reference, platforms: image.platforms, pin: false,
                                               revalidate: true, name: image.name) { event in
                if case .blobFinished(_, _, let bytes, false) = event { fetched.add(bytes) }
            }
            // Used now, as far as eviction is concerned: watched images go last.
            registry.maintenance?.touch(result.digest)
            let now = clock.now()
            let bytes = fetched.total
            let updated = known != result.digest
            state.withLock {
                $0.images[position].outcome = updated ? .updated : .current
                $0.images[position].digest = result.digest
                $0.images[position].checkedAt = now
                $0.images[position].fetchedBytes = bytes
                $0.images[position].error = nil
                $0.images[position].checkedBy = nil
            }
            if updated || bytes > 0 {
                logger.info("watch list: fetched", metadata: metadata.merging([
                    "oci.digest": "\(result.digest)", "oci.previous_digest": "\(known.map(\.description) ?? "none")", "bytes": "\(bytes)",
                ]) { $1 })
            } else {
                logger.debug("watch list: up to date", metadata: metadata.merging(["oci.digest": "\(result.digest)"]) { $1 })
            }
        } catch {
            // A shutdown in the middle of a refresh is not the image's failure.
            guard !Task.isCancelled else { return }
            state.withLock {
                $0.images[position].outcome = .failed
                $0.images[position].checkedAt = clock.now()
                $0.images[position].error = error.message
                $0.images[position].checkedBy = nil
            }
            logger.warning("watch list: refresh failed", metadata: metadata.merging(["error": "\(error.message)"]) { $1 })
        }
    }

    /// The replica that holds `image`'s refresh for this interval, when it is another one. The
    /// lease is not let go after the refresh: it lasts the interval, so each image is refreshed
    /// once per interval for the fleet, whatever the replicas' timers. Nil when this replica
    /// refreshes it, or cannot tell (the index failed: it refreshes, as one node would).
    private func refreshedElsewhere(_ image: Image, fleet: FleetMember) async -> FillLeaseHolder? {
        let key = FleetWorkKey.watch("\(image.name) \(image.platforms)")
        let holder = FillLeaseHolder(owner: fleet.owner, peerURL: fleet.peerURL, repository: image.repository.description)
        do {
            if case .heldBy(let other) = try await fleet.leases.acquireLease(key, holder: holder, ttl: interval) { return other }
        } catch {
            logger.debug("watch list: the fleet's lease could not be claimed; refreshing here", metadata: [
                "oci.reference": "\(image.name)", "error": "\(error)"])
        }
        return nil
    }

    /// The digest the cache holds for the image before a refresh.
    private func cachedDigest(_ image: Image) async -> Digest? {
        switch image.reference {
        case .digest(let digest): return digest
        case .tag(let tag): return (try? await registry.index.tag(image.repository, tag))?.digest
        }
    }

    static func seconds(_ duration: Duration) -> TimeInterval {
        let (seconds, attoseconds) = duration.components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

/// Bytes a refresh downloaded, added up from progress events that may come from several tasks.
private final class ByteTally: Sendable {
    private let bytes = Mutex<Int64>(0)
    func add(_ count: Int64) { bytes.withLock { $0 += count } }
    var total: Int64 { bytes.withLock { $0 } }
}
