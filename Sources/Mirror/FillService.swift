import Logging
import Synchronization

/// Owns the work a request starts but does not wait for: blob fills (a client hanging up does
/// not cancel the shared download) and prefetches.
///
/// Run by `serve` as a `Service` (`run()`, in RegistryMirror): every job is a child task of its
/// task group. On graceful shutdown (`shutDown(grace:)`) it refuses new prefetches, lets running
/// fills finish for up to the grace, then cancels them. A cancelled fill aborts its write, so
/// nothing unverified stays in the store. A fill asked for while it drains is refused (the
/// client gets a 503 and retries against a replica that is not stopping).
///
/// A process that never runs it (`seed`, the in-process tests) awaits every fill it starts;
/// its jobs then run as tasks of their own.
public final class FillService: Sendable {
    public enum Kind: Sendable { case fill, prefetch }
    typealias Job = @Sendable () async -> Void

    private struct State {
        var running = false
        var draining = false
        var jobs: AsyncStream<Job>.Continuation?
        var drainStarted: CheckedContinuation<Void, Never>?
        var drainRequested = false
    }

    private let state = Mutex(State())
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    /// Starts `work` in the background. False when it was refused: while draining.
    @discardableResult
    func start(_ kind: Kind, _ work: @escaping @Sendable () async -> Void) -> Bool {
        enum Decision { case queued, refused, unowned }
        let decision = state.withLock { s -> Decision in
            if s.draining { return .refused }
            guard s.running, let jobs = s.jobs else { return .unowned }
            if case .enqueued = jobs.yield(work) { return .queued }
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
            if s.drainRequested { jobs.finish() }
        }
        await withTaskGroup(of: Bool.self) { outer in
            // The jobs: ends when the stream is finished (shutdown) and every job returned.
            outer.addTask {
                await withTaskGroup(of: Void.self) { group in
                    for await job in stream { group.addTask(operation: job) }
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
            if !drained { logger.warning("background downloads still running after the shutdown grace were cancelled; nothing partial is kept", metadata: ["grace": "\(grace)"]) }
            outer.cancelAll()
        }
        state.withLock { $0.running = false }
    }

    /// Graceful shutdown: no new prefetches; running work has until the grace to finish.
    public func shutDown() {
        let (jobs, waiter) = state.withLock { s in
            s.draining = true
            s.drainRequested = true
            defer { s.drainStarted = nil }
            return (s.jobs, s.drainStarted)
        }
        jobs?.finish()
        waiter?.resume()
    }

    private func drainStarted() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { s -> Bool in
                    guard !s.drainRequested, !Task.isCancelled else { return false }
                    s.drainStarted = continuation
                    return true
                }
                if !parked { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.drainStarted.take() }?.resume()
        }
    }
}
