import Foundation

/// Runs blocking calls (fsync, rename) on a thread of their own, never on the cooperative
/// pool, whose few threads (two on a 2-core machine) every request shares.
enum BlockingWork {
    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try work() })
            }
            thread.name = "registry-mirror-blocking"
            thread.start()
        }
    }
}
