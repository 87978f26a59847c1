import Synchronization

/// A counting semaphore for async code, FIFO.
///
/// Bounds the libcurl transfers in flight (`CurlTransport`) and the mirror's prefetches
/// (`PullThroughRegistry`); it lives here, the lower of the two modules.
public final class AsyncSemaphore: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Bool, Never>
    }
    private struct State {
        var available: Int
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }
    private let state: Mutex<State>

    public init(_ count: Int) { state = Mutex(State(available: count)) }

    /// Waits for a unit, however long it takes, even if the task is cancelled.
    public func wait() async {
        while await !acquire() {}
    }

    /// Waits for a unit until `deadline`. True when one was taken (the caller must
    /// `signal()` it back); false on timeout or cancellation, with nothing taken.
    public func wait(until deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.acquire(cancellable: true) }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return false
            }
            let first = await group.next()!
            group.cancelAll()
            // The other child's answer matters too: a wait cancelled by the timer may have
            // been handed a unit just before, and then holds it.
            let second = await group.next()!
            return first || second
        }
    }

    /// Takes a unit, or with `cancellable` gives up (false) when the task is cancelled.
    private func acquire(cancellable: Bool = false) async -> Bool {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { s -> Bool? in
                    if s.available > 0 {
                        s.available -= 1
                        return true
                    }
                    // Checked under the lock: a cancellation that came before this point
                    // found no waiter to remove, so it is answered here.
                    if cancellable, Task.isCancelled { return false }
                    s.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            guard cancellable else { return }
            let waiter = state.withLock { s -> Waiter? in
                guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    public func signal() {
        let next = state.withLock { s -> Waiter? in
            if s.waiters.isEmpty {
                s.available += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        next?.continuation.resume(returning: true)
    }
}
