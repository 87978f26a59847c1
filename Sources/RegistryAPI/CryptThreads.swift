import NIOPosix
import Synchronization

/// A few dedicated threads for password hashing, with a bounded line in front of them.
///
/// bcrypt costs tens of milliseconds of CPU. On Swift's cooperative pool (one thread per
/// core) a handful of concurrent logins would stall every other request, `/healthz`
/// included; here they take at most `threads` cores, and a caller that would wait behind
/// more than `maxWaiting` others is turned away at once instead of queueing without limit.
public final class CryptThreads: Sendable {
    public let threads: Int
    public let maxWaiting: Int
    private let pool: NIOThreadPool
    /// Jobs queued or running.
    private let admitted = Atomic<Int>(0)

    public init(threads: Int = 1, maxWaiting: Int = 32) {
        precondition(threads > 0 && maxWaiting >= 0)
        self.threads = threads
        self.maxWaiting = maxWaiting
        pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
    }

    deinit {
        // The pool's threads end once the queue drains; nothing waits for them.
        pool.shutdownGracefully { _ in }
    }

    /// Runs `body` on one of the threads; nil when the line is full (or the pool is gone).
    public func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T? {
        let ahead = admitted.wrappingAdd(1, ordering: .relaxed).oldValue
        defer { admitted.wrappingSubtract(1, ordering: .relaxed) }
        guard ahead < threads + maxWaiting else { return nil }
        return try? await pool.runIfActive(body)
    }
}
