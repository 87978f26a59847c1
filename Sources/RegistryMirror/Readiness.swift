import ContentStore
import NIOPosix

/// What `/readyz` answers: ready when the index answers a query, the S3 bucket of
/// `storage.backend: s3` answers a HEAD, a small file can be written and fsynced where blob
/// writes (or their spool) go, and that filesystem has at least `minFreeSpace` bytes free.
///
/// Probes are cheap but not free (kubelet asks every few seconds, per pod, and an fsync can
/// stall on a sick disk): at most one runs at a time, off the cooperative threads, and its
/// answer is reused for `maxAge`.
actor Readiness {
    /// Nil when ready; otherwise why not, for the 503 body.
    typealias Verdict = String?

    private let data: DataDirectory
    private let minFreeSpace: Int64
    private let maxAge: Duration
    private var last: (at: ContinuousClock.Instant, verdict: Verdict)?
    /// Callers waiting for the probe in flight; nil when none is.
    private var waiting: [CheckedContinuation<Verdict, Never>]?

    init(data: DataDirectory, minFreeSpace: Int64, maxAge: Duration = .seconds(1)) {
        self.data = data
        self.minFreeSpace = minFreeSpace
        self.maxAge = maxAge
    }

    func check() async -> Verdict {
        if let last, last.at.duration(to: .now) < maxAge { return last.verdict }
        if waiting != nil {
            return await withCheckedContinuation { waiting?.append($0) }
        }
        waiting = []
        let (data, floor) = (data, minFreeSpace)
        var verdict: Verdict
        do {
            // The index runs its queries on threads of its own.
            _ = try await data.index.schemaVersion()
            verdict = nil
        } catch {
            verdict = "the index does not answer: \(error)"
        }
        if verdict == nil, let s3 = data.s3 {
            do throws(StoreError) {
                try await s3.check(timeout: Self.s3Timeout)
            } catch {
                verdict = "the S3 bucket does not answer: \(error.message)"
            }
        }
        if verdict == nil {
            do {
                verdict = try await NIOThreadPool.singleton.runIfActive { Self.probe(data, minFreeSpace: floor) }
            } catch {
                verdict = "the readiness probe could not run: \(error)"
            }
        }
        last = (.now, verdict)
        for waiter in waiting ?? [] { waiter.resume(returning: verdict) }
        waiting = nil
        return verdict
    }

    /// Below a kubelet probe's usual timeout, so a blackholed endpoint is "not ready", not a
    /// probe that times out.
    static let s3Timeout: Duration = .seconds(3)

    /// Blocking: a write with fsync, a statvfs.
    static func probe(_ data: DataDirectory, minFreeSpace: Int64) -> Verdict {
        do throws(StoreError) {
            try data.store.probeWrite()
            let free = try data.store.freeSpace()
            if free < minFreeSpace {
                return "the store has \(ByteSize.format(free)) free, below storage.min_free_space (\(ByteSize.format(minFreeSpace)))"
            }
        } catch {
            return "the store cannot be written: \(error.message)"
        }
        return nil
    }
}
