import ContentStore
import Foundation
import Logging
import S3Store
import ServiceLifecycle

/// `storage.s3.upload_sweep`: aborts the multipart uploads that a crashed or killed replica
/// left in the bucket, which S3 keeps (and bills) until they are aborted. Sweeps at start, then
/// every `interval`; an upload goes once it began more than `age` ago and no part arrived
/// within `age` (`S3Store.sweepIdleUploads`), so a live fill, on this replica or another, is
/// never cut. A failed sweep is logged and tried again at the next tick.
struct UploadSweepService: Service {
    let store: S3Store
    let age: Duration
    let interval: Duration
    let logger: Logger
    /// The sweep's clock (tests move it against a server's fixed upload dates).
    var now: @Sendable () -> Date = { Date() }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await sweepOnce()
                do { try await Task.sleep(for: interval) } catch { return }
            }
        }
    }

    /// One sweep; answers how many uploads it aborted (nil when it failed).
    @discardableResult
    func sweepOnce() async -> Int? {
        do throws(StoreError) {
            let aborted = try await store.sweepIdleUploads(olderThan: age, now: now())
            if aborted > 0 {
                logger.info("aborted abandoned multipart uploads in the bucket",
                            metadata: ["s3.uploads_aborted": "\(aborted)", "s3.bucket": "\(store.location.bucket)"])
            } else {
                logger.debug("no abandoned multipart uploads in the bucket", metadata: ["s3.bucket": "\(store.location.bucket)"])
            }
            return aborted
        } catch {
            logger.warning("the multipart upload sweep failed; it runs again in \(interval)",
                           metadata: ["error": "\(error.message)", "s3.bucket": "\(store.location.bucket)"])
            return nil
        }
    }
}
