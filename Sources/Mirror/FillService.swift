import Logging
import Synchronization

/// Owns the work a request starts but does not wait for: blob fills (a client hanging up does
/// not cancel the shared download) and prefetches.
///
/// Run by `serve` as a `Service` (`run()`, in RegistryMirror): every job is a child task of its
/// task group. On graceful shutdown (`shutDown()`) it takes no new jobs, cancels at once the
/// ones nobody waits for (prefetches, fills no response is reading), gives fills that clients
/// are reading up to the grace to finish, then cancels what is left. A cancelled fill aborts
/// its write, so nothing unverified stays in the store. A fill asked for while it drains is
/// refused (the client gets a 503 and retries, against a replica that is not stopping).
///
/// Cancellation reaches a fill only while it downloads: once every byte is in, its commit and
/// index record run in `finishing`, which the drain does not cut (the last reader leaving or
/// the grace running out used to cancel the record half-way, deleting or orphaning the blob).
/// `run()` returns only after them, so the index and stores, which outlive it, see every one.
///
/// A process that never runs it (`seed`, the in-process tests) awaits every fill it starts;
/// its jobs then run as tasks of their own.
public final class FillService: Sendable {
    public enum Kind: Sendable { case fill, prefetch }

    struct Job: Sendable {
        let work: @Sendable () async -> Void
        /// Returns once the job may be cancelled during a drain (nobody waits for it).
        let unwanted: @Sendable () async -> Void
    }

    private struct State {
        var running = false
        var draining = false
        var jobs: AsyncStream<Job>.Continuation?
        var drainWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    /// Starts `work` in the background. False when it was refused: while draining.
    /// `unwanted` returns once nobody waits for the work any more (a prefetch: at once).
    @discardableResult
    func start(_ kind: Kind, unwanted: @escaping @Sendable () async -> Void = {}, _ work: @escaping @Sendable () async -> Void) -> Bool {
        enum Decision { case queued, refused, unowned }
        let decision = state.withLock { s -> Decision in
            if s.draining { return .refused }
            guard s.running, let jobs = s.jobs else { return .unowned }
            if case .enqueued = jobs.yield(Job(work: work, unwanted: unwanted)) { return .queued }
            return .refused
        }
        switch decision {
        case .queued: return true
        case .refused: return false
        case .unowned:
            Task.detached(operation: work)
            return true
        }
    }

    /// Runs every job started from now on, until `shutDown` and the end of the grace.
    public func run(grace: Duration = .seconds(10)) async {
        let (stream, jobs) = AsyncStream.makeStream(of: Job.self)
        state.withLock { s in
            s.running = true
            s.jobs = jobs
            if s.draining { jobs.finish() }
        }
        await withTaskGroup(of: Bool.self) { outer in
            // The jobs: ends when the stream is finished (shutdown) and every job returned.
            outer.addTask { [self] in
                await withTaskGroup(of: Void.self) { group in
                    for await job in stream {
                        group.addTask { await self.run(job) }
                    }
                    await group.waitForAll()
                }
                return true
            }
            // The grace: starts with the shutdown; when it runs out, what still runs is cancelled.
            outer.addTask { [self] in
                await drainStarted()
                try? await Task.sleep(for: grace)
                return false
            }
            let drained = await outer.next() ?? true
            if !drained {
                logger.warning("downloads still running after the shutdown grace were cancelled; nothing partial is kept", metadata: ["grace": "\(grace)"])
            }
            outer.cancelAll()
        }
        state.withLock { $0.running = false }
    }

    /// A job, cancelled early if the server drains and nobody waits for it.
    private func run(_ job: Job) async {
        await withTaskGroup(of: Void.self) { race in
            race.addTask { await job.work() }
            race.addTask { [self] in
                await drainStarted()
                guard !Task.isCancelled else { return }
                await job.unwanted()
            }
            await race.next()
            race.cancelAll()
        }
    }

    /// Runs `body` to its end even if the calling job is cancelled meanwhile: what a fill does
    /// once its bytes are all in (verify, commit, record) and the clean-up after a fill (its
    /// fleet lease). The caller still waits for it, so a job, and `run()`, end after it. Only
    /// for short work bounded by its own timeouts (the store's and the index's).
    static func finishing<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        // An unstructured task: a child would inherit the job's cancellation.
        try await Task { try await body() }.value
    }

    /// Whether `run()` is taking jobs.
    var isRunning: Bool { state.withLock { $0.running } }

    /// Graceful shutdown: no new jobs; running ones have until the grace to finish.
    public func shutDown() {
        let (jobs, waiters) = state.withLock { s in
            s.draining = true
            defer { s.drainWaiters.removeAll() }
            return (s.jobs, Array(s.drainWaiters.values))
        }
        jobs?.finish()
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when the drain starts, or when the calling task is cancelled.
    private func drainStarted() async {
        let id = state.withLock { s -> Int in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { s -> Bool in
                    guard !s.draining, !Task.isCancelled else { return false }
                    s.drainWaiters[id] = continuation
                    return true
                }
                if !parked { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.drainWaiters.removeValue(forKey: id) }?.resume()
        }
    }
}
