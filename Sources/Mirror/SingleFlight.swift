import Synchronization

/// Runs one operation per key at a time; callers that arrive meanwhile share its result.
///
/// The work runs in its own task, so a caller that goes away (a client hanging up) does
/// not cancel it for the others.
final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private let inflight = Mutex<[Key: Task<Result<Value, MirrorError>, Never>]>([:])

    /// Shares the run in flight for `key`, if there is one; nil when none is.
    func join(_ key: Key, joined: () -> Void = {}) async throws(MirrorError) -> Value? {
        guard let task = inflight.withLock({ $0[key] }) else { return nil }
        joined()
        return try await task.value.get()
    }

    /// `joined` is called when the caller shares a run already in flight.
    func run(_ key: Key, joined: () -> Void = {}, _ work: @escaping @Sendable () async throws(MirrorError) -> Value) async throws(MirrorError) -> Value {
        let (task, isJoin) = inflight.withLock { tasks -> (Task<Result<Value, MirrorError>, Never>, Bool) in
            if let task = tasks[key] { return (task, true) }
            let task = Task<Result<Value, MirrorError>, Never> {
                let result: Result<Value, MirrorError>
                do throws(MirrorError) {
                    result = .success(try await work())
                } catch {
                    result = .failure(error)
                }
                _ = self.inflight.withLock { $0.removeValue(forKey: key) }
                return result
            }
            tasks[key] = task
            return (task, false)
        }
        if isJoin { joined() }
        return try await task.value.get()
    }
}
