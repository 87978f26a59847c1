import Foundation

/// A thread of its own that owns one SQLite connection and runs the jobs given to it, in
/// order. SQLite calls block (on the disk, on another process's write lock for up to the busy
/// timeout, for a whole eviction transaction), so they never run on the cooperative pool,
/// whose few threads (two on a 2-core machine) every request shares.
///
/// The queue's lock is held only to append or take jobs, never while a statement runs.
final class ConnectionThread: @unchecked Sendable {
    typealias Job = @Sendable (SQLiteConnection) -> Void

    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var jobs: [Job] = []
    /// Guarded by `condition`.
    private var stopping = false
    /// Touched only by the thread once it has started.
    private var connection: SQLiteConnection?

    init(name: String, connection: SQLiteConnection) {
        self.connection = connection
        let thread = Thread { [self] in loop() }
        thread.name = name
        thread.start()
    }

    /// Runs `body` on this thread with its connection, and resumes the caller with the result.
    func run<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws(IndexError) -> T) async throws(IndexError) -> T {
        let result: Result<T, IndexError> = await withCheckedContinuation { continuation in
            let accepted = enqueue { db in
                continuation.resume(returning: Result { () throws(IndexError) -> T in try body(db) })
            }
            if !accepted { continuation.resume(returning: .failure(IndexError(.closed, "the index is closed"))) }
        }
        return try result.get()
    }

    /// Lets queued jobs finish, then closes the connection and ends the thread.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func enqueue(_ job: @escaping Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        jobs.append(job)
        if jobs.count == 1 { condition.signal() }
        return true
    }

    private func loop() {
        var batch: [Job] = []
        while true {
            condition.lock()
            while jobs.isEmpty, !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                break
            }
            swap(&batch, &jobs)
            condition.unlock()
            if let connection {
                for job in batch { job(connection) }
            }
            batch.removeAll(keepingCapacity: true)
        }
        connection = nil
    }
}
