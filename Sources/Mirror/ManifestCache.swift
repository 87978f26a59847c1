import OCI

/// Recently served manifests in memory, bounded in bytes, evicted oldest-first.
///
/// Manifests are immutable and small, and warm manifest GETs are the request a cluster
/// makes most; keeping them off the disk is what makes those fast. The map is split into
/// shards by digest, each with its own lock and a share of the bound, so concurrent hits on
/// different manifests never wait for each other.
final class ManifestCache: Sendable {
    private struct Shard {
        var entries: [Digest: [UInt8]] = [:]
        var order: [Digest] = []
        var head = 0
        var bytes = 0
    }
    private let shardCapacity: Int
    private let shards: Sharded<Shard>

    init(capacity: Int, shards count: Int = 16) {
        shards = Sharded(count: count) { Shard() }
        // A manifest up to 4 MiB must still fit a shard of the default 64 MiB cache.
        shardCapacity = capacity / shards.count
    }

    subscript(digest: Digest) -> [UInt8]? {
        get { shards.withLock(for: digest) { $0.entries[digest] } }
        set {
            guard let newValue, newValue.count <= shardCapacity else { return }
            let capacity = shardCapacity
            shards.withLock(for: digest) { s in
                guard s.entries[digest] == nil else { return }
                s.entries[digest] = newValue
                s.order.append(digest)
                s.bytes += newValue.count
                while s.bytes > capacity, s.head < s.order.count {
                    if let old = s.entries.removeValue(forKey: s.order[s.head]) { s.bytes -= old.count }
                    s.head += 1
                }
                if s.head > 1024, s.head * 2 > s.order.count {
                    s.order.removeFirst(s.head)
                    s.head = 0
                }
            }
        }
    }
}
