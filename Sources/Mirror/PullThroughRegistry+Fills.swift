import ContentStore
import Logging
import MetadataIndex
import OCI
import Synchronization
import Upstream

// Blob fills: one upstream download per (upstream, digest), shared by every reader, verified,
// then published and recorded (see BlobFill and docs/architecture.md, "Pull-through").
extension PullThroughRegistry {
    func fillKey(_ upstream: any UpstreamClient, _ digest: Digest) -> String { "\(upstream.name)|\(digest)" }

    /// Downloads in progress, for the status page: upstream, digest, bytes so far, size.
    public var activeFills: [(upstream: String, digest: Digest, written: Int64, size: Int64?)] {
        fills.withLock { fills in
            fills.map { key, fill in
                let snapshot = fill.snapshot
                return (String(key.prefix { $0 != "|" }), fill.digest, snapshot.written, snapshot.size)
            }
        }.sorted { $0.digest.description < $1.digest.description }
    }

    /// Joins the running download of `digest`, or starts one. The download belongs to the
    /// `FillService`, not to the request: a client hanging up does not cancel it.
    func startOrJoinFill(_ repository: RepositoryKey, _ digest: Digest, upstream: any UpstreamClient) async throws(MirrorError) -> BlobFill {
        let key = fillKey(upstream, digest)
        if let fill = fills.withLock({ $0[key] }) { return joined(fill) }
        // A chunked upstream sends no length, and this is the one a client can be told in its place.
        let expectedSize = try await descriptorSize(of: digest, in: repository)
        // On a fleet replica: download it (holding the lease), or stream another replica's download.
        var claim: FleetFillClaim?
        if let fleet { claim = try await claimFill(digest, repository: repository, fleet: fleet) }
        if let fleet, case .peer(let holder) = claim {
            return try await startPeerFill(repository, digest, key: key, holder: holder, expectedSize: expectedSize, fleet: fleet)
        }
        let leased = claim != nil
        // Every fill of this process shares one owner id, so the lease belongs to whichever
        // fill of the key runs here: let it go only when none does.
        let releaseLease: @Sendable () async -> Void = { [self] in
            if leased, let fleet { await releaseIfUnused(digest, key: key, fleet: fleet) }
        }
        let writer: any BlobWriter
        let spool: ReadableFile?
        do throws(StoreError) {
            writer = try await store.makeWriter(expecting: digest, size: nil)
            spool = try writer.openForReading()
        } catch {
            await releaseLease()
            throw MirrorError(.storeFailed, "the local store cannot start a download of \(digest): \(error.message)", cause: error)
        }
        guard let spool else {
            writer.abort()
            await releaseLease()
            throw MirrorError(.storeFailed, "the local store offers no readable spool for a download of \(digest)")
        }
        let (fill, isNew) = try await launch(writer, spool: spool, key: key, expectedSize: expectedSize, onRefused: releaseLease) { [self] fill in
            if leased, let fleet {
                await holdingLease(digest, key: key, fleet: fleet) {
                    await self.runFill(fill, writer: writer, repository: repository, upstream: upstream, key: key)
                }
            } else {
                await runFill(fill, writer: writer, repository: repository, upstream: upstream, key: key)
            }
        }
        // A fill already running holds the lease (the claim above only renewed it).
        guard isNew else { return joined(fill) }
        stats?.cache(.blob, .miss)
        return fill
    }

    /// Puts a new fill of `writer`'s bytes in the in-flight map and starts `job` on it in the
    /// `FillService`; or hands back the fill of `key` already running (`isNew` false, `writer`
    /// aborted). While the service drains it refuses: the fill fails, `onRefused` runs, a 503.
    func launch(_ writer: any BlobWriter, spool: ReadableFile, key: String, expectedSize: Int64?,
                onRefused: @Sendable () async -> Void = {},
                _ job: @escaping @Sendable (BlobFill) async -> Void) async throws(MirrorError) -> (fill: BlobFill, isNew: Bool) {
        let fill = BlobFill(digest: writer.digest, file: spool, expectedSize: expectedSize)
        if let running = fills.withLock({ fills -> BlobFill? in
            if let running = fills[key] { return running }
            fills[key] = fill
            return nil
        }) {
            writer.abort()
            return (running, false)
        }
        guard fillService.start(.fill, unwanted: { await fill.unread() }, { await job(fill) }) else {
            writer.abort()
            let refused = MirrorError(.upstreamUnavailable, "the mirror is shutting down; \(writer.digest) is not downloaded", retryAfter: 5)
            fills.withLock { fills in
                if fills[key] === fill { fills[key] = nil }
            }
            await onRefused()
            fill.finished(.failed(refused))
            throw refused
        }
        return (fill, true)
    }

    func joined(_ fill: BlobFill) -> BlobFill {
        logger.debug("joined a running download", metadata: ["oci.digest": "\(fill.digest)", "cache.result": "join"])
        stats?.cache(.blob, .join)
        return fill
    }

    func runFill(_ fill: BlobFill, writer: any BlobWriter, repository: RepositoryKey, upstream: any UpstreamClient, key: String) async {
        let digest = fill.digest
        let sink = FillSink(writer: writer, fill: fill)
        let outcome: BlobFill.Outcome
        var level = Logger.Level.warning
        do {
            do {
                _ = try await upstream.fetchBlob(repository.name, digest, sink: sink, from: 0)
            } catch {
                // The transfer reports a sink that gave up as the upstream's fault; it was ours.
                if let storeError = sink.storeError { throw storeError }
                throw error
            }
            if let told = fill.snapshot.size, told != writer.bytesWritten {
                throw StoreError(.verification, "\(writer.bytesWritten) bytes arrived, \(told) were announced")
            }
            // Every byte is in: a drain no longer cancels this fill, or the record would be cut
            // after the commit (its last reader leaving, or the grace running out, cancels it).
            try await FillService.finishing { [self] in
                // Verified bytes may be sent in full now; durability (fsync, rename) follows.
                try await writer.verify()
                fill.verified()
                try await publish(writer, repository: repository)
            }
            maintenance?.nudge()
            outcome = .done
            logger.info("blob cached", metadata: ["oci.repository": "\(repository)", "oci.digest": "\(digest)", "bytes": "\(writer.bytesWritten)", "cache.result": "fill"])
        } catch let error as UpstreamError {
            writer.abort()
            // A blob the upstream does not have is the client's question, not a fault; and an
            // upstream marked down was logged as such once.
            if error.code == .notFound || error.markedDown { level = .debug }
            outcome = .failed(Self.map(error, upstream: upstream, what: "\(repository)@\(digest)", unknown: .blobUnknown))
        } catch let error as StoreError where error.code == .verification {
            writer.abort()
            stats?.verificationFailed()
            outcome = .failed(MirrorError(.invalidContent, "\(upstream.name) sent a bad blob for \(repository)@\(digest): \(error.message)", cause: error))
        } catch let error as StoreError {
            writer.abort()
            stats?.storeFailed()
            outcome = .failed(MirrorError(.storeFailed, "the local store failed while caching \(digest): \(error.message)", cause: error))
        } catch let error as MirrorError {
            writer.abort()
            outcome = .failed(error)
        } catch {
            writer.abort()
            outcome = .failed(MirrorError(.internal, "download of \(digest) failed: \(error)", cause: error))
        }
        if case .failed(let error) = outcome {
            logger.log(level: level, "blob download failed; nothing was cached", metadata: ["oci.repository": "\(repository)", "oci.digest": "\(digest)", "error": "\(error.debugDescription)"])
        }
        // Leave the in-flight map first: a request arriving now starts afresh (or finds the
        // published blob) instead of joining a download that already failed.
        fills.withLock { fills in
            if fills[key] === fill { fills[key] = nil }
        }
        fill.finished(outcome)
    }

    /// Makes a verified blob durable and visible, then records it. fsync and rename block, so
    /// they run on a thread of their own, off the cooperative pool. A blob the index cannot
    /// record is deleted again (unless the index already knew it): nothing unindexed stays.
    func publish(_ writer: any BlobWriter, repository: RepositoryKey) async throws {
        let digest = writer.digest
        let knownBefore = try await local.wrap { () async throws(IndexError) in try await index.blobSize(digest) } != nil
        // The store leaves the cooperative pool for the fsync and rename itself.
        try await writer.commit()
        var batch = ContentBatch()
        batch.addBlob(digest, size: writer.bytesWritten)
        batch.link(repository, digest)
        try await record(batch, stored: digest, knownBefore: knownBefore)
    }

    /// Records what was just stored; if the index refuses, the stored file goes again (unless
    /// the index already knew it), so no file stays that the index does not know.
    func record(_ batch: ContentBatch, stored digest: Digest, knownBefore: Bool) async throws(MirrorError) {
        do {
            try await index.record(batch, now: now)
        } catch {
            // On one node, nothing the index does not know stays on disk. A fleet's store is
            // shared: another replica may be reading the object already, and an unindexed one
            // costs only its bytes until `gc` sweeps it.
            if !knownBefore, fleet == nil { try? await store.delete(digest) }
            stats?.storeFailed()
            throw MirrorError(.storeFailed, "the local index cannot record \(digest): \(error.description)", cause: error)
        }
    }
}
