import ContentStore
import Foundation
import Logging
import S3Store
import ServiceLifecycle

/// `storage.s3.upload_sweep`: aborts the multipart uploads that a crashed or killed replica
/// left in the bucket, which S3 keeps (and bills) until they are aborted. Sweeps at start, then
/// every `interval`; an upload goes once it began more than `age` ago and no part arrived
/// within `age` (`S3Store.idleUploads`), so a live fill, on this replica or another, is never
/// cut. An upload with no part yet (just created, its first part on the way) goes only if an
/// earlier sweep saw it partless too: where the server's `Initiated` is not the real start
/// (moto's is fixed), a replica starting up would otherwise abort another's brand-new fill.
/// A failed sweep is logged and tried again at the next tick.
struct UploadSweepService: Service {
    let store: S3Store
    let age: Duration
    let interval: Duration
    let logger: Logger
    /// The sweep's clock (tests move it against a server's fixed upload dates).
    var now: @Sendable () -> Date = { Date() }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var partless: Set<String> = []
            while !Task.isCancelled {
                await sweepOnce(partlessBefore: &partless)
                do { try await Task.sleep(for: interval) } catch { return }
            }
        }
    }

    /// One sweep. `partlessBefore`: the ids of the idle uploads without parts the last sweep
    /// saw, replaced by this sweep's. Answers how many uploads it aborted (nil when it failed).
    @discardableResult
    func sweepOnce(partlessBefore: inout Set<String>) async -> Int? {
        do throws(StoreError) {
            let idle = try await store.idleUploads(olderThan: age, now: now())
            var aborted = 0
            for upload in idle where upload.lastPart != nil || partlessBefore.contains(upload.uploadID) {
                try await store.abort(upload)
                aborted += 1
            }
            partlessBefore = Set(idle.filter { $0.lastPart == nil && !partlessBefore.contains($0.uploadID) }.map(\.uploadID))
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
