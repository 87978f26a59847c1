#if canImport(Darwin)
import Darwin
#else
import Glibc
#endif
import Synchronization

/// State split into shards, each behind a lock of its own, picked by a key's hash. Requests
/// for different keys seldom meet on one lock, and no lock is taken by every request: the
/// warm manifest path must keep scaling with cores.
final class Sharded<State: Sendable>: Sendable {
    private final class Shard: Sendable {
        let state: Mutex<State>
        init(_ state: sending State) { self.state = Mutex(state) }
    }
    private let shards: [Shard]

    /// `count` shards (rounded up to a power of two), each starting as `make()`.
    init(count: Int = 16, _ make: () -> State) {
        var n = 1
        while n < count { n <<= 1 }
        shards = (0..<n).map { _ in Shard(make()) }
    }

    var count: Int { shards.count }

    /// Runs `body` on the shard `key` falls in.
    func withLock<Key: Hashable, T>(for key: Key, _ body: (inout State) throws -> T) rethrows -> T {
        try shards[key.hashValue & (shards.count - 1)].state.withLock { try body(&$0) }
    }

    /// Runs `body` on the shard of the calling thread: for state every request updates under
    /// the same key (one counter, one repository's bytes), where a shard by key would be one
    /// lock again. Readers then merge every shard.
    func withLockForThisThread<T>(_ body: (inout State) throws -> T) rethrows -> T {
        var hasher = Hasher()
        #if canImport(Darwin)
        hasher.combine(UInt(bitPattern: pthread_self()))
        #else
        hasher.combine(UInt(pthread_self()))
        #endif
        return try shards[hasher.finalize() & (shards.count - 1)].state.withLock { try body(&$0) }
    }

    /// Runs `body` on shard `index`, for walks over every shard (a flush, a snapshot).
    func withLock<T>(shard index: Int, _ body: (inout State) throws -> T) rethrows -> T {
        try shards[index].state.withLock { try body(&$0) }
    }
}
