import Synchronization

/// Runs one operation per key at a time; callers that arrive meanwhile share its result.
///
/// The work runs in its own task, so a caller that goes away (a client hanging up) does
/// not cancel it for the others.
final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private let inflight = Mutex<[Key: Task<Result<Value, MirrorError>, Never>]>([:])

    func run(_ key: Key, _ work: @escaping @Sendable () async throws(MirrorError) -> Value) async throws(MirrorError) -> Value {
        let task = inflight.withLock { tasks in
            if let task = tasks[key] { return task }
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
            return task
        }
        return try await task.value.get()
    }
}
