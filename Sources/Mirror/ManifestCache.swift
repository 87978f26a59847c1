import OCI

/// Recently served manifests in memory, bounded in bytes, evicted oldest-first.
///
/// Manifests are immutable and small, and warm manifest GETs are the request a cluster
/// makes most; keeping them off the disk is what makes those fast. The map is split into
/// shards by digest, each with its own lock and a share of the bound, so concurrent hits on
/// different manifests never wait for each other.
///
/// An entry also remembers, for a second, which repositories the index said hold it (and the
/// media type it is served as), so a warm hit by digest needs no index query at all. Eviction
/// in this process forgets its manifests at once (`forget`); one in another process (`gc`) is
/// seen within that second.
final class ManifestCache: Sendable {
    private struct Verdict {
        let repository: RepositoryKey
        let mediaType: String
        let until: ContinuousClock.Instant
    }
    private struct Entry {
        var bytes: [UInt8]
        var verdicts: [Verdict] = []
    }
    private struct Shard {
        var entries: [Digest: Entry] = [:]
        var order: [Digest] = []
        var head = 0
        var bytes = 0
    }
    private let shardCapacity: Int
    private let shards: Sharded<Shard>
    /// How long an index answer ("this repository holds it") is reused.
    static let verdictLifetime: Duration = .seconds(1)
    private static let maxVerdicts = 8

    init(capacity: Int, shards count: Int = 16) {
        shards = Sharded(count: count) { Shard() }
        // A manifest up to 4 MiB must still fit a shard of the default 64 MiB cache.
        shardCapacity = capacity / shards.count
    }

    subscript(digest: Digest) -> [UInt8]? {
        get { shards.withLock(for: digest) { $0.entries[digest]?.bytes } }
        set {
            guard let newValue, newValue.count <= shardCapacity else { return }
            let capacity = shardCapacity
            shards.withLock(for: digest) { s in
                guard s.entries[digest] == nil else { return }
                s.entries[digest] = Entry(bytes: newValue)
                s.order.append(digest)
                s.bytes += newValue.count
                while s.bytes > capacity, s.head < s.order.count {
                    if let old = s.entries.removeValue(forKey: s.order[s.head]) { s.bytes -= old.bytes.count }
                    s.head += 1
                }
                if s.head > 1024, s.head * 2 > s.order.count {
                    s.order.removeFirst(s.head)
                    s.head = 0
                }
            }
        }
    }

    /// The bytes and media type of `digest`, if the index said within the last second that
    /// `repository` holds it.
    func linked(_ digest: Digest, in repository: RepositoryKey) -> (bytes: [UInt8], mediaType: String)? {
        let now = ContinuousClock.now
        return shards.withLock(for: digest) { s in
            guard let entry = s.entries[digest],
                  let verdict = entry.verdicts.first(where: { $0.repository == repository }), verdict.until > now else { return nil }
            return (entry.bytes, verdict.mediaType)
        }
    }

    /// Records that the index says `repository` holds `digest`, served as `mediaType`.
    func noteLinked(_ digest: Digest, in repository: RepositoryKey, mediaType: String) {
        let verdict = Verdict(repository: repository, mediaType: mediaType, until: .now + Self.verdictLifetime)
        shards.withLock(for: digest) { s in
            guard var entry = s.entries[digest] else { return }
            entry.verdicts.removeAll { $0.repository == repository }
            if entry.verdicts.count >= Self.maxVerdicts { entry.verdicts.removeFirst() }
            entry.verdicts.append(verdict)
            s.entries[digest] = entry
        }
    }

    /// Drops evicted manifests (their bytes stay correct, but the cache must not say a
    /// repository holds what the index no longer has).
    func forget(_ digests: [Digest]) {
        for digest in digests {
            shards.withLock(for: digest) { s in
                if let old = s.entries.removeValue(forKey: digest) { s.bytes -= old.bytes.count }
            }
        }
    }
}
