import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
import Upstream

/// What a fleet replica does about a blob nobody here is downloading.
enum FleetFillClaim: Sendable {
    /// Download it: this replica holds the lease.
    case acquired
    /// Stream it from the holder's download (nil: it is already published; copy it from the store).
    case peer(FillLeaseHolder?)
}

// One upstream download per blob for a fleet (docs/scale-out.md). The replica that takes a
// blob's lease downloads it and publishes it to the shared store, renewing the lease as it
// goes; every other replica that misses the blob meanwhile streams the holder's growing spool
// over the peer endpoint into a spool of its own, verified like any download, and its
// clients read that as they read a download. A peer that cannot stream (gone, restarted,
// unreachable) leaves the replica waiting for the blob to be published, then copying the rest
// from the shared store; a holder that dies stops renewing, its lease runs out and the next
// request takes the download over.
extension PullThroughRegistry {
    func claimFill(_ digest: Digest, repository: RepositoryKey, fleet: FleetMember) async throws(MirrorError) -> FleetFillClaim {
        let holder = FillLeaseHolder(owner: fleet.owner, peerURL: fleet.peerURL, repository: repository.description)
        let claim = try await local.wrap { () async throws(IndexError) in
            try await fleet.leases.acquireFillLease(digest, holder: holder, ttl: fleet.leaseTTL)
        }
        switch claim {
        case .heldBy(let other):
            logger.debug("another replica is downloading this blob; streaming from it", metadata: [
                "oci.digest": "\(digest)", "fleet.owner": "\(other.owner)", "cache.result": "peer"])
            return .peer(other)
        case .acquired:
            // Published between the miss and the claim (its holder finished and let go):
            // copy it from the store rather than download it again.
            if try await local.wrap({ () async throws(IndexError) in try await index.blobSize(digest) }) != nil {
                try? await fleet.leases.releaseFillLease(digest, owner: fleet.owner)
                return .peer(nil)
            }
            return .acquired
        }
    }

    /// Runs `body` (a download) while renewing its lease every third of the lease's time,
    /// then lets the lease go: its blob is published, or it failed and another may try.
    func holdingLease(_ digest: Digest, key: String, fleet: FleetMember, _ body: @escaping @Sendable () async -> Void) async {
        fleet.counters.leasesHeld.add(1, ordering: .relaxed)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: fleet.leaseTTL / 3)
                    guard !Task.isCancelled else { return }
                    do {
                        try await fleet.leases.renewFillLeases([digest], owner: fleet.owner, ttl: fleet.leaseTTL)
                    } catch {
                        // The download goes on: at worst another replica takes the lease and
                        // downloads the blob too, which is waste, not harm.
                        self.logger.warning("a fill lease could not be renewed", metadata: ["oci.digest": "\(digest)", "error": "\(error)"])
                    }
                }
            }
            await body()
            group.cancelAll()
        }
        // Also when the drain cancelled the download: a cancelled release would leave the
        // lease to run out, and the other replicas waiting for it.
        try? await FillService.finishing { [self] in await releaseIfUnused(digest, key: key, fleet: fleet) }
        fleet.counters.leasesHeld.subtract(1, ordering: .relaxed)
    }

    /// Lets `digest`'s lease go unless another fill of it runs here now, which holds it (a
    /// claim by this process renews its own lease rather than failing).
    func releaseIfUnused(_ digest: Digest, key: String, fleet: FleetMember) async {
        guard fills.withLock({ $0[key] == nil }) else { return }
        try? await fleet.leases.releaseFillLease(digest, owner: fleet.owner)
    }

    /// A download of this replica's own, fed from the holder's peer endpoint (or the store),
    /// joined by this replica's clients like any other.
    func startPeerFill(_ repository: RepositoryKey, _ digest: Digest, key: String, holder: FillLeaseHolder?, expectedSize: Int64?,
                       fleet: FleetMember) async throws(MirrorError) -> BlobFill {
        let writer: any BlobWriter
        let spool: ReadableFile?
        do throws(StoreError) {
            writer = try fleet.makeSpool(digest)
            spool = try writer.openForReading()
        } catch {
            throw MirrorError(.storeFailed, "cannot make a spool for \(digest): \(error.message)", cause: error)
        }
        guard let spool else {
            writer.abort()
            throw MirrorError(.storeFailed, "the spool for \(digest) cannot be read")
        }
        let (fill, isNew) = try await launch(writer, spool: spool, key: key, expectedSize: expectedSize) { [self] fill in
            await runPeerFill(fill, writer: writer, repository: repository, holder: holder, key: key, fleet: fleet)
        }
        guard isNew else { return joined(fill) }
        stats?.cache(.blob, .join)
        return fill
    }

    func runPeerFill(_ fill: BlobFill, writer: any BlobWriter, repository: RepositoryKey, holder: FillLeaseHolder?, key: String, fleet: FleetMember) async {
        let digest = fill.digest
        let outcome: BlobFill.Outcome
        do {
            var complete = false
            if let holder { complete = await streamFromPeer(holder, fill: fill, writer: writer, fleet: fleet) }
            if !complete { try await copyFromStore(fill: fill, writer: writer, fleet: fleet) }
            if let told = fill.snapshot.size, told != writer.bytesWritten {
                throw StoreError(.verification, "\(writer.bytesWritten) bytes arrived, \(told) were announced")
            }
            try await writer.verify()
            fill.verified()
            // Publishes nothing shared: keeps the copy in the local disk tier, if there is one.
            try await writer.commit()
            outcome = .done
            logger.info("blob streamed from the fleet", metadata: ["oci.repository": "\(repository)", "oci.digest": "\(digest)",
                                                                  "bytes": "\(writer.bytesWritten)", "cache.result": "peer"])
        } catch let error as StoreError where error.code == .verification {
            stats?.verificationFailed()
            outcome = .failed(MirrorError(.invalidContent, "the fleet sent a bad blob for \(digest): \(error.message)", cause: error))
        } catch let error as MirrorError {
            outcome = .failed(error)
        } catch {
            outcome = .failed(MirrorError(.storeFailed, "streaming \(digest) from the fleet failed: \(error)", cause: error))
        }
        if case .failed(let error) = outcome {
            writer.abort()
            logger.warning("blob from the fleet failed; nothing was kept", metadata: ["oci.digest": "\(digest)", "error": "\(error.debugDescription)"])
        }
        fills.withLock { fills in
            if fills[key] === fill { fills[key] = nil }
        }
        fill.finished(outcome)
    }

    /// Streams the holder's download into `writer`. True when the whole blob arrived; false
    /// when the peer could not give it (whatever arrived stays, and the rest comes from the store).
    func streamFromPeer(_ holder: FillLeaseHolder, fill: BlobFill, writer: any BlobWriter, fleet: FleetMember) async -> Bool {
        let path = FleetMember.peerPath(fill.digest)
        guard let url = URL(string: holder.peerURL + path) else { return false }
        let token = FleetToken.header(secret: fleet.secret, method: "GET", path: path, now: now)
        var limits = TransferLimits()
        limits.connectTimeout = .seconds(2)
        let sink = PeerSink(FillSink(writer: writer, fill: fill), counter: fleet.counters)
        do {
            let head = try await fleet.transport.perform(HTTPExchange(method: "GET", url: url, headers: [("Authorization", token)]),
                                                         limits: limits, sink: sink)
            guard head.status == 200 else {
                logger.info("a peer could not stream a blob; waiting for it to be published", metadata: [
                    "oci.digest": "\(fill.digest)", "fleet.peer": "\(holder.peerURL)", "http.status": "\(head.status)"])
                return false
            }
            if let size = head.contentLength { return writer.bytesWritten == size }
            return true
        } catch {
            logger.info("a peer stream broke; the rest comes from the store once published", metadata: [
                "oci.digest": "\(fill.digest)", "fleet.peer": "\(holder.peerURL)", "bytes": "\(writer.bytesWritten)", "error": "\(error)"])
            return false
        }
    }

    /// Waits (up to `fleet.peerWait`) for the blob to be published, then copies what `writer`
    /// lacks from the store. Fails at once when nobody holds the lease and nothing was
    /// published: the download it waited for failed or died, and a retry takes it over.
    func copyFromStore(fill: BlobFill, writer: any BlobWriter, fleet: FleetMember) async throws {
        let digest = fill.digest
        let deadline = ContinuousClock.now + fleet.peerWait
        while true {
            if try await local.wrap({ () async throws(IndexError) in try await index.blobSize(digest) }) != nil,
               let reader = try await store.openBlob(digest) {
                if let size = try await reader.size(), fill.snapshot.size == nil { fill.started(contentLength: size) }
                let sink = FillSink(writer: writer, fill: fill)
                for try await chunk in reader.chunks(from: writer.bytesWritten, length: nil) {
                    try chunk.withUnsafeBytes { try sink.body($0) }
                    fleet.counters.fromStore.add(Int64(chunk.count), ordering: .relaxed)
                }
                return
            }
            let holder = try await local.wrap { () async throws(IndexError) in try await fleet.leases.fillLeaseHolder(digest) }
            guard holder != nil else {
                throw MirrorError(.upstreamUnavailable, "the replica downloading \(digest) stopped before publishing it; retry", retryAfter: 1)
            }
            guard ContinuousClock.now < deadline else {
                throw MirrorError(.upstreamUnavailable, "\(digest) was not published within fleet.peer_wait (\(fleet.peerWait)); retry", retryAfter: 5)
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// The download of `digest` running here, for a peer replica's request; nil when none is.
    public func peerBlob(_ digest: Digest) -> BlobContent? {
        guard let fleet, let fill = fills.withLock({ $0.values.first { $0.digest == digest } }) else { return nil }
        let counters = fleet.counters
        return BlobContent(reader: fill.reader(), cacheResult: .miss, fill: fill, onFinish: { sent in
            counters.toPeers.add(sent, ordering: .relaxed)
        })
    }
}

/// Counts a peer's bytes as they pass into a fill.
final class PeerSink: TransferSink, @unchecked Sendable {
    // Called only on the transfer thread.
    let inner: FillSink
    let counters: FleetCounters

    init(_ inner: FillSink, counter: FleetCounters) {
        self.inner = inner
        self.counters = counter
    }

    func head(_ head: ResponseHead) -> Bool { inner.head(head) }

    func body(_ chunk: UnsafeRawBufferPointer) throws {
        try inner.body(chunk)
        counters.fromPeers.add(Int64(chunk.count), ordering: .relaxed)
    }
}
