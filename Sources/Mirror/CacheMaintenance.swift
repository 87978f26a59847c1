import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
import Synchronization

/// Keeps the cache under its size cap: records access times cheaply and evicts least
/// recently used images when the store is over `maxBytes`.
///
/// - Access times are kept in memory, in shards by digest (no lock every request takes), and
///   written in one transaction per flush (before each eviction pass, and at shutdown), never
///   a SQLite write per request.
/// - Blobs an open response is streaming hold a `BlobLease`; eviction skips them, and a
///   later pass takes them once the response is done.
/// - A pass runs every `checkInterval`, and soon after a fill adds content (`nudge()`).
public final class CacheMaintenance: Sendable {
    public let store: any BlobStore
    public let index: any MetadataStore
    /// The cap; nil means no eviction (access times are still recorded).
    public let maxBytes: Int64?
    let logger: Logger
    let checkInterval: Duration
    let stats: MirrorStats?
    /// Access times and the unindexed sweep's cutoff are read from it.
    let clock: any MirrorClock
    private let accessed = Sharded<[Digest: Int64]> { [:] }
    private let leases = Sharded<[Digest: Int]> { [:] }
    private struct Wakeup {
        var pending = false
        /// `stop()` was called: the loop ends after the pass in progress.
        var stopping = false
        var sleeper: CheckedContinuation<Void, Never>?
    }
    private let wakeup = Mutex(Wakeup())
    private let evictionObservers = Mutex<[@Sendable ([Digest]) -> Void]>([])
    private let shared = Mutex<SharedReads?>(nil)
    /// The last publication of reads was the empty set.
    private let publishedNothing = Mutex(false)

    public init(store: any BlobStore, index: any MetadataStore, maxBytes: Int64?, checkInterval: Duration = .seconds(30),
                stats: MirrorStats? = nil, clock: any MirrorClock = .system, logger: Logger) {
        self.stats = stats
        self.clock = clock
        self.store = store
        self.index = index
        self.maxBytes = maxBytes
        self.checkInterval = checkInterval
        self.logger = logger
    }

    // MARK: Access and leases (request path: one shard's lock and a dictionary write)

    /// Marks `digest` as used now.
    public func touch(_ digest: Digest) {
        let now = clock.unixMilliseconds
        accessed.withLock(for: digest) { $0[digest] = now }
    }

    /// Holds `digest` against eviction until the returned lease is released (deinit).
    public func lease(_ digest: Digest) -> BlobLease {
        leases.withLock(for: digest) { $0[digest, default: 0] += 1 }
        return BlobLease(digest: digest, owner: self)
    }

    fileprivate func release(_ digest: Digest) {
        leases.withLock(for: digest) { leases in
            if let count = leases[digest], count > 1 { leases[digest] = count - 1 } else { leases[digest] = nil }
        }
    }

    public func isLeased(_ digest: Digest) -> Bool { leases.withLock(for: digest) { $0[digest] != nil } }

    /// Every blob an open response streams now.
    public func leasedDigests() -> [Digest] {
        var all: [Digest] = []
        for shard in 0..<leases.count { leases.withLock(shard: shard) { all.append(contentsOf: $0.keys) } }
        return all
    }

    // MARK: A fleet's shared store

    /// On a fleet replica: where the replicas publish what they stream. Set once, at start.
    public func share(_ reads: SharedReads) { shared.withLock { $0 = reads } }

    /// Publishes this replica's open reads, for the other replicas' eviction passes.
    /// An idle replica writes nothing: an empty set already published is not published again.
    public func publishReads() async throws(IndexError) {
        guard let reads = shared.withLock({ $0 }) else { return }
        let digests = leasedDigests()
        if digests.isEmpty, publishedNothing.withLock({ $0 }) { return }
        try await reads.store.publishReads(digests, owner: reads.owner, ttl: reads.interval * 5)
        publishedNothing.withLock { $0 = digests.isEmpty }
    }

    /// Writes the batched access times.
    public func flush() async {
        var batch: [Digest: Int64] = [:]
        for shard in 0..<accessed.count {
            accessed.withLock(shard: shard) { a in
                batch.merge(a) { old, _ in old }
                a.removeAll(keepingCapacity: true)
            }
        }
        do {
            try await index.recordAccess(batch)
        } catch {
            logger.warning("recording access times failed", metadata: ["error": "\(error.debugDescription)"])
            // Keep them for the next flush, unless newer ones arrived.
            for (digest, ms) in batch {
                accessed.withLock(for: digest) { a in a[digest] = max(a[digest] ?? ms, ms) }
            }
        }
    }

    // MARK: Eviction

    /// One pass: flush access times, evict to the cap (or to `target`), delete the files.
    /// The pass's transaction runs on the index's writer thread, never on the cooperative pool.
    @discardableResult
    public func evict(toAtMost target: Int64? = nil, dryRun: Bool = false) async throws(IndexError) -> EvictionPlan {
        await flush()
        let plan: EvictionPlan
        if let limit = target ?? maxBytes {
            // `isLeased` is called on the writer thread; the leases are sharded Mutexes.
            plan = try await index.evict(toAtMost: limit, dryRun: dryRun, inUse: isLeased)
            if !dryRun { await deleteFiles(plan, limit: limit) }
        } else {
            let usage = try await index.usage()
            var none = EvictionPlan()
            none.bytesBefore = usage.bytes
            none.bytesAfter = usage.bytes
            plan = none
        }
        if !dryRun, let stats, let usage = try? await index.usage() {
            stats.store(bytes: usage.bytes, objects: usage.objects, maxBytes: maxBytes)
        }
        return plan
    }

    /// Calls `observer` with the digests each pass removes (after their rows are gone), so
    /// what is held in memory (the manifest cache) forgets them too.
    public func onEviction(_ observer: @escaping @Sendable ([Digest]) -> Void) {
        evictionObservers.withLock { $0.append(observer) }
    }

    /// Unlinks the evicted files on a thread of their own (a pass at scale removes thousands),
    /// then reports the pass.
    private func deleteFiles(_ plan: EvictionPlan, limit: Int64) async {
        if !plan.blobs.isEmpty {
            let digests = plan.blobs.map(\.digest)
            for observer in evictionObservers.withLock({ $0 }) { observer(digests) }
        }
        var doomed = plan.blobs.map(\.digest)
        if let reads = shared.withLock({ $0 }), !doomed.isEmpty {
            // Another replica may have opened one of these objects since it last published its
            // reads, or downloaded one again: wait until any such read is published, then
            // delete only what nobody reads and the index does not hold again.
            try? await Task.sleep(for: reads.interval * 3)
            if let wanted = try? await reads.store.stillWanted(doomed) {
                if !wanted.isEmpty {
                    logger.info("evicted blobs another replica reads keep their objects", metadata: ["blobs": "\(wanted.count)"])
                }
                doomed.removeAll { wanted.contains($0) }
            } else {
                logger.warning("the index cannot say which evicted blobs other replicas read; their objects stay for now")
                doomed = []
            }
        }
        for (digest, error) in await store.delete(doomed) {
            logger.warning("deleting an evicted blob failed", metadata: ["oci.digest": "\(digest)", "error": "\(error.debugDescription)"])
        }
        if !plan.blobs.isEmpty {
            stats?.evicted(images: plan.images.count, bytes: plan.bytesFreed)
            logger.info("evicted least recently used content", metadata: [
                "images": "\(plan.images.count)", "blobs": "\(plan.blobs.count)", "bytes": "\(plan.bytesFreed)",
                "store.bytes": "\(plan.bytesAfter)", "store.max_bytes": "\(limit)",
            ])
        }
        if plan.bytesAfter > limit {
            logger.warning("the store is still over its cap: the rest is pinned or in use", metadata: [
                "store.bytes": "\(plan.bytesAfter)", "store.max_bytes": "\(limit)"])
        }
    }

    /// Removes store files the index has no row for, older than `age`: left by a crash between
    /// a blob's rename and its index record. They cost disk the cap does not count, and are
    /// never served. The age spares writes whose record is still to come (an import records
    /// its blobs at its end). Walks the whole store, so it runs on demand (`gc`), not per pass.
    public func sweepUnindexed(olderThan age: TimeInterval = 6 * 3600, dryRun: Bool = false) async throws -> [EvictionPlan.Blob] {
        let indexed = Set(try await index.allBlobs().map(\.digest))
        let cutoff = clock.now().addingTimeInterval(-age)
        var swept: [EvictionPlan.Blob] = []
        for digest in try await store.allDigests() where !indexed.contains(digest) {
            guard let size = await store.size(of: digest), let modified = await store.modificationDate(of: digest),
                  modified < cutoff else { continue }
            if !dryRun { try? await store.delete(digest) }
            swept.append(EvictionPlan.Blob(digest: digest, size: size))
        }
        if !swept.isEmpty, !dryRun {
            logger.info("removed store files the index does not know", metadata: ["blobs": "\(swept.count)", "bytes": "\(swept.reduce(0) { $0 + $1.size })"])
        }
        return swept
    }

    /// Asks for a pass soon (after a fill added content); without a cap, the pass only
    /// refreshes the store gauges.
    public func nudge() {
        wakeup.withLock { w -> CheckedContinuation<Void, Never>? in
            w.pending = true
            return w.sleeper.take()
        }?.resume()
    }

    /// The background loop, until `stop()` (or cancelled): flush and evict every
    /// `checkInterval`, or when nudged. Flushes once more on the way out.
    public func run() async {
        var first = true
        while !Task.isCancelled {
            if !first { await sleepOrNudge() }
            first = false
            guard !Task.isCancelled, !wakeup.withLock({ $0.stopping }) else { break }
            wakeup.withLock { $0.pending = false }
            do {
                try await evict()
            } catch {
                logger.error("eviction pass failed", metadata: ["error": "\(error.debugDescription)"])
            }
        }
        await flush()
    }

    /// Ends `run()` after the pass in progress and a last flush, both uncancelled: a
    /// cancelled call to a PostgreSQL index fails, and the access times would be lost.
    public func stop() {
        wakeup.withLock { w -> CheckedContinuation<Void, Never>? in
            w.stopping = true
            return w.sleeper.take()
        }?.resume()
    }

    private func sleepOrNudge() async {
        let interval = checkInterval
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: interval) }
            group.addTask { [self] in
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        // One lock for the check and the store, so a nudge or cancel cannot slip between.
                        let parked = wakeup.withLock { w -> Bool in
                            guard !w.pending, !w.stopping, !Task.isCancelled else { return false }
                            w.sleeper = continuation
                            return true
                        }
                        if !parked { continuation.resume() }
                    }
                } onCancel: {
                    wakeup.withLock { $0.sleeper.take() }?.resume()
                }
            }
            await group.next()
            group.cancelAll()
        }
    }
}

/// A fleet replica's link to the others' reads: the index where every replica publishes the
/// blobs it streams (`FillLeaseStore.publishReads`), this replica's owner id, and how often
/// it publishes.
public struct SharedReads: Sendable {
    let store: any FillLeaseStore
    let owner: String
    let interval: Duration

    public init(store: any FillLeaseStore, owner: String, interval: Duration) {
        self.store = store
        self.owner = owner
        self.interval = interval
    }
}

/// Keeps a blob from eviction while it lives; a response holds one while it streams.
public final class BlobLease: Sendable {
    let digest: Digest
    let owner: CacheMaintenance
    init(digest: Digest, owner: CacheMaintenance) {
        self.digest = digest
        self.owner = owner
    }
    deinit { owner.release(digest) }
}
