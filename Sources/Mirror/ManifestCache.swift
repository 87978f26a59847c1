import OCI
import Synchronization

/// Recently served manifests in memory, bounded in bytes, evicted oldest-first.
///
/// Manifests are immutable and small, and warm manifest GETs are the request a cluster
/// makes most; keeping them off the disk is what makes those fast.
final class ManifestCache: Sendable {
    private struct State {
        var entries: [Digest: [UInt8]] = [:]
        var order: [Digest] = []
        var head = 0
        var bytes = 0
    }
    private let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = capacity }

    subscript(digest: Digest) -> [UInt8]? {
        get { state.withLock { $0.entries[digest] } }
        set {
            guard let newValue, newValue.count <= capacity else { return }
            state.withLock { s in
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
