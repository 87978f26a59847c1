import CoreMetrics
import Foundation
import OCI
import Synchronization
import Upstream

/// What the mirror did, for `/metrics` (through swift-metrics) and the status page (kept
/// here, in memory, since start). One call per event feeds both.
///
/// Metric names (Prometheus):
/// - `registry_mirror_http_requests_total{route,method,status}`, `registry_mirror_http_request_duration_seconds{route}`
/// - `registry_mirror_cache_requests_total{kind,result}`: kind manifest_tag, manifest_digest, blob;
///   result hit, revalidated, miss, stale, join
/// - `registry_mirror_served_bytes_total` (to clients), `registry_mirror_upstream_bytes_total{upstream}`
///   (from upstreams): bytes saved = served − upstream
/// - `registry_mirror_upstream_requests_total{upstream,status}` (status "error" for transport failures)
/// - `registry_mirror_singleflight_joins_total{kind}`, `registry_mirror_verification_failures_total`,
///   `registry_mirror_stale_serves_total{upstream}`, `registry_mirror_store_failures_total` (the
///   mirror's own disk or index, never the upstream's fault), `registry_mirror_prefetches_total{kind}`
/// - `registry_mirror_store_bytes`, `registry_mirror_store_objects`, `registry_mirror_store_max_bytes`,
///   `registry_mirror_evicted_images_total`, `registry_mirror_evicted_bytes_total`
/// - `registry_mirror_upstream_down{upstream}` (1 while marked down), `registry_mirror_upstream_marked_down_total{upstream}`,
///   `registry_mirror_upstream_ratelimit_remaining{upstream}` (Docker Hub's `ratelimit-remaining`, once seen)
public final class MirrorStats: UpstreamObserver, Sendable {
    public enum CacheKind: String, Sendable, CaseIterable { case manifestByTag = "manifest_tag", manifestByDigest = "manifest_digest", blob }
    public enum CacheResult: String, Sendable, CaseIterable { case hit, revalidated, miss, stale, join }

    /// One upstream's health, as the status page shows it.
    public struct UpstreamHealth: Sendable {
        public var requests = 0
        public var failures = 0
        public var lastStatus: Int?
        public var lastError: String?
        public var lastErrorAt: Date?
        public var staleServes = 0
        public var bytes: Int64 = 0
        /// Rate-limit headers last seen (Docker Hub's `ratelimit-remaining`, and the like).
        public var rateLimit: [String: String] = [:]
        /// The count in the last `ratelimit-remaining` header: pulls left in the window.
        public var rateLimitRemaining: Int?
        /// Marked down: requests fail at once until a probe gets an answer.
        public var down = false
        public var downSince: Date?
        /// When the next probe may go out (while down).
        public var nextCheck: Date?

        public init() {}
    }

    public struct Snapshot: Sendable {
        public var started: Date
        public var cache: [String: Int]
        public var servedBytes: Int64
        public var upstreamBytes: Int64
        public var upstreams: [String: UpstreamHealth]
        public var repositories: [String: Int64]
        public var storeBytes: Int64
        public var storeObjects: Int
        public var storeMaxBytes: Int64?
        public var evictedImages: Int
        public var verificationFailures: Int
        public var storeFailures: Int

        /// Hits (of any kind, revalidations included) over hits and misses.
        public var hitRatio: Double? {
            let hits = cache.filter { $0.key.hasSuffix("/hit") || $0.key.hasSuffix("/revalidated") || $0.key.hasSuffix("/join") || $0.key.hasSuffix("/stale") }.values.reduce(0, +)
            let misses = cache.filter { $0.key.hasSuffix("/miss") }.values.reduce(0, +)
            return hits + misses == 0 ? nil : Double(hits) / Double(hits + misses)
        }
    }

    /// What is not counted on the request path (that is in `cacheCounts`, `servedBytes` and
    /// `servedByRepository`, which take no lock every request shares).
    private struct State {
        var upstreamBytes: Int64 = 0
        var upstreams: [String: UpstreamHealth] = [:]
        var storeBytes: Int64 = 0
        var storeObjects = 0
        var storeMaxBytes: Int64?
        var evictedImages = 0
        var verificationFailures = 0
        var storeFailures = 0
    }

    let factory: any MetricsFactory
    let clock: any MirrorClock
    let started: Date
    private let state = Mutex(State())
    /// One counter per (kind, result), indexed by `cacheSlot`.
    private let cacheCounts: [AtomicCount] = (0..<(CacheKind.allCases.count * CacheResult.allCases.count)).map { _ in AtomicCount() }
    private let servedBytes = AtomicCount()
    private let servedByRepository = Sharded<[String: Int64]> { [:] }
    // Metric objects, made once per label set and shard. Every request looks some up, mostly
    // under the same few keys, so the shard is the calling thread's (swift-metrics objects for
    // one label set all feed one Prometheus series).
    private let counters = Sharded<[String: Counter]> { [:] }
    private let timers = Sharded<[String: CoreMetrics.Timer]> { [:] }
    private let gauges = Sharded<[String: Gauge]> { [:] }

    private final class AtomicCount: Sendable {
        let value = Atomic<Int64>(0)
        func add(_ n: Int64) { value.wrappingAdd(n, ordering: .relaxed) }
        var current: Int64 { value.load(ordering: .relaxed) }
    }

    private static func cacheSlot(_ kind: CacheKind, _ result: CacheResult) -> Int {
        CacheKind.allCases.firstIndex(of: kind)! * CacheResult.allCases.count + CacheResult.allCases.firstIndex(of: result)!
    }

    public init(factory: any MetricsFactory, clock: any MirrorClock = .system) {
        self.factory = factory
        self.clock = clock
        started = clock.now()
    }

    // MARK: Events

    public func cache(_ kind: CacheKind, _ result: CacheResult) {
        cacheCounts[Self.cacheSlot(kind, result)].add(1)
        counter("registry_mirror_cache_requests_total", [("kind", kind.rawValue), ("result", result.rawValue)]).increment()
        if result == .join { counter("registry_mirror_singleflight_joins_total", [("kind", kind.rawValue)]).increment() }
    }

    /// A caller shared a manifest fetch already in flight (its cache result is counted apart).
    public func joined(_ kind: CacheKind) {
        counter("registry_mirror_singleflight_joins_total", [("kind", kind.rawValue)]).increment()
    }

    /// Bytes sent to a client for `repository` (manifests and blobs).
    public func served(_ bytes: Int64, repository: RepositoryKey) {
        guard bytes > 0 else { return }
        servedBytes.add(bytes)
        let name = repository.description
        servedByRepository.withLockForThisThread { $0[name, default: 0] += bytes }
        counter("registry_mirror_served_bytes_total", []).increment(by: bytes)
    }

    public func stale(upstream: String) {
        state.withLock { $0.upstreams[upstream, default: UpstreamHealth()].staleServes += 1 }
        counter("registry_mirror_stale_serves_total", [("upstream", upstream)]).increment()
    }

    public func verificationFailed() {
        state.withLock { $0.verificationFailures += 1 }
        counter("registry_mirror_verification_failures_total", []).increment()
    }

    /// The mirror's own store or index failed to keep content (a full disk, an I/O error).
    public func storeFailed() {
        state.withLock { $0.storeFailures += 1 }
        counter("registry_mirror_store_failures_total", []).increment()
    }

    /// A background fetch an index started: `kind` manifest (a child) or blob.
    public func prefetched(_ kind: String) {
        counter("registry_mirror_prefetches_total", [("kind", kind)]).increment()
    }

    public func request(route: String, method: String, status: Int, duration: Duration) {
        counter("registry_mirror_http_requests_total", [("route", route), ("method", method), ("status", String(status))]).increment()
        timer("registry_mirror_http_request_duration_seconds", [("route", route)]).recordNanoseconds(
            duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    public func store(bytes: Int64, objects: Int, maxBytes: Int64?) {
        state.withLock {
            $0.storeBytes = bytes
            $0.storeObjects = objects
            $0.storeMaxBytes = maxBytes
        }
        gauge("registry_mirror_store_bytes").record(bytes)
        gauge("registry_mirror_store_objects").record(objects)
        if let maxBytes { gauge("registry_mirror_store_max_bytes").record(maxBytes) }
    }

    /// A fleet replica's activity, as gauges of running totals (`FleetActivity`), and its id.
    public func fleet(_ activity: FleetActivity, replica: String) {
        gauge("registry_mirror_fleet_replica_info", [("replica", replica)]).record(1)
        gauge("registry_mirror_fleet_leases_held").record(activity.leasesHeld)
        gauge("registry_mirror_fleet_bytes_from_peers").record(activity.bytesFromPeers)
        gauge("registry_mirror_fleet_bytes_from_store").record(activity.bytesFromStore)
        gauge("registry_mirror_fleet_bytes_to_peers").record(activity.bytesToPeers)
    }

    public func evicted(images: Int, bytes: Int64) {
        state.withLock { $0.evictedImages += images }
        counter("registry_mirror_evicted_images_total", []).increment(by: images)
        counter("registry_mirror_evicted_bytes_total", []).increment(by: bytes)
    }

    // MARK: UpstreamObserver

    public func upstreamResponded(_ upstream: String, head: ResponseHead, bodyBytes: Int64) {
        state.withLock { s in
            s.upstreamBytes += bodyBytes
            var health = s.upstreams[upstream, default: UpstreamHealth()]
            health.requests += 1
            health.bytes += bodyBytes
            health.lastStatus = head.status
            if head.status >= 500 || head.status == 429 {
                health.failures += 1
                health.lastError = "HTTP \(head.status)"
                health.lastErrorAt = clock.now()
            }
            for (name, value) in head.headers where name.hasPrefix("ratelimit-") || name.hasPrefix("x-ratelimit-") || name == "retry-after" {
                health.rateLimit[name] = value
            }
            if let remaining = head.rateLimitRemaining { health.rateLimitRemaining = remaining }
            s.upstreams[upstream] = health
        }
        if let remaining = head.rateLimitRemaining {
            gauge("registry_mirror_upstream_ratelimit_remaining", [("upstream", upstream)]).record(remaining)
        }
        counter("registry_mirror_upstream_requests_total", [("upstream", upstream), ("status", String(head.status))]).increment()
        if bodyBytes > 0 { counter("registry_mirror_upstream_bytes_total", [("upstream", upstream)]).increment(by: bodyBytes) }
    }

    public func upstreamFailed(_ upstream: String, message: String, bodyBytes: Int64) {
        state.withLock { s in
            s.upstreamBytes += bodyBytes
            var health = s.upstreams[upstream, default: UpstreamHealth()]
            health.requests += 1
            health.failures += 1
            health.bytes += bodyBytes
            health.lastError = message
            health.lastErrorAt = clock.now()
            s.upstreams[upstream] = health
        }
        counter("registry_mirror_upstream_requests_total", [("upstream", upstream), ("status", "error")]).increment()
        if bodyBytes > 0 { counter("registry_mirror_upstream_bytes_total", [("upstream", upstream)]).increment(by: bodyBytes) }
    }

    public func upstreamAvailabilityChanged(_ upstream: String, down: Bool, nextCheck: Duration?, reason: String?) {
        let now = clock.now()
        let newlyDown = state.withLock { s in
            var health = s.upstreams[upstream, default: UpstreamHealth()]
            let wasDown = health.down
            health.down = down
            health.downSince = down ? (health.downSince ?? now) : nil
            health.nextCheck = nextCheck.map { now.addingTimeInterval(Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18) }
            s.upstreams[upstream] = health
            return down && !wasDown
        }
        gauge("registry_mirror_upstream_down", [("upstream", upstream)]).record(down ? 1 : 0)
        if newlyDown { counter("registry_mirror_upstream_marked_down_total", [("upstream", upstream)]).increment() }
    }

    /// Starts each upstream's availability gauge at "up", so `/metrics` has the series before
    /// anything goes wrong.
    public func register(upstreams: [String]) {
        for upstream in upstreams { gauge("registry_mirror_upstream_down", [("upstream", upstream)]).record(0) }
    }

    // MARK: Reading

    public var snapshot: Snapshot {
        let s = state.withLock { $0 }
        var cache: [String: Int] = [:]
        for kind in CacheKind.allCases {
            for result in CacheResult.allCases {
                let count = cacheCounts[Self.cacheSlot(kind, result)].current
                if count > 0 { cache["\(kind.rawValue)/\(result.rawValue)"] = Int(count) }
            }
        }
        var repositories: [String: Int64] = [:]
        for shard in 0..<servedByRepository.count {
            servedByRepository.withLock(shard: shard) { repositories.merge($0, uniquingKeysWith: +) }
        }
        return Snapshot(started: started, cache: cache, servedBytes: servedBytes.current, upstreamBytes: s.upstreamBytes,
                        upstreams: s.upstreams, repositories: repositories, storeBytes: s.storeBytes,
                        storeObjects: s.storeObjects, storeMaxBytes: s.storeMaxBytes, evictedImages: s.evictedImages,
                        verificationFailures: s.verificationFailures, storeFailures: s.storeFailures)
    }

    // MARK: Metric objects, made once per label set

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        dimensions.reduce(label) { $0 + "|" + $1.0 + "=" + $1.1 }
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        let key = Self.key(label, dimensions)
        return counters.withLockForThisThread { cache in
            if let counter = cache[key] { return counter }
            let counter = Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = counter
            return counter
        }
    }

    private func timer(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Timer {
        let key = Self.key(label, dimensions)
        return timers.withLockForThisThread { cache in
            if let timer = cache[key] { return timer }
            let timer = CoreMetrics.Timer(label: label, dimensions: dimensions, factory: factory)
            cache[key] = timer
            return timer
        }
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)] = []) -> Gauge {
        let key = Self.key(label, dimensions)
        return gauges.withLockForThisThread { cache in
            if let gauge = cache[key] { return gauge }
            let gauge = Gauge(label: label, dimensions: dimensions, factory: factory)
            cache[key] = gauge
            return gauge
        }
    }
}
