import MetadataIndex
import OCI

/// A fleet revalidates a tag once per TTL, whichever replica is asked: the replicas share the
/// tag's row (PostgreSQL), and the first to find it expired claims the revalidation with a
/// compare-and-set on its `checked_at` (`MetadataStore.claimTagRevalidation`). The claim makes
/// the row look checked for a short hold, so the others serve what it says (the old digest
/// until the winner records the new one, then the new one): every replica answers from the
/// one row. A winner that fails (stale-if-error, the rate-limit reserve, an error) puts
/// `checked_at` back, so the next request tries again; one that dies frees it when the hold ends.
/// With one SQLite index the claim is a write per revalidation and changes nothing else.
///
/// A tag no replica has cached has no row to claim: a fleet replica takes a lease on its first
/// fetch instead (`FleetWorkKey.tagFetch`, in the fill lease table), and the replicas that
/// lose wait for the winner's row and serve it, or fetch it themselves when the winner let go
/// without writing one (it failed) or `fleet.peer_wait` ran out. One node has no lease: its
/// in-process single flight already shares one fetch.
extension PullThroughRegistry {
    /// How long a claimed revalidation keeps the tag looking checked, at most (less when the
    /// TTL is shorter): bounds what a claimer that dies costs the fleet.
    static let tagClaimHold: Int64 = 30

    enum TagClaim: Sendable {
        /// No claim taken: nothing cached to serve meanwhile, the tag not expired, or a TTL of zero.
        case unclaimed
        /// This replica asks the upstream; `observed` is what `checked_at` was.
        case won(observed: Int64, claimed: Int64)
        /// This replica fetches a tag the fleet has not cached, under the lease `key`.
        case fetching(FleetWorkKey, FleetMember)
        /// Another replica claimed it: what the row says now.
        case lost(ManifestContent)
    }

    /// The claim for a request by tag: the first fetch of a tag the fleet has no row for, or
    /// the revalidation of an expired one (not for the watch list, `forced`, which asks anyway).
    func claimTag(_ repository: RepositoryKey, _ tag: Tag, _ cached: TagRecord?, ttl: Duration, forced: Bool) async throws(MirrorError) -> TagClaim {
        if cached == nil, let fleet { return try await claimFirstFetch(repository, tag, fleet: fleet) }
        return forced ? .unclaimed : try await claimRevalidation(repository, tag, cached, ttl: ttl)
    }

    /// How often a replica waiting for another's first fetch of a tag looks at the tag's row.
    static let tagFetchPoll: Duration = .milliseconds(50)

    /// Takes the lease on the first fetch of a tag with no row, or waits for the replica that
    /// holds it to write the row (as long as its lease lives, `fleet.peer_wait` at most).
    func claimFirstFetch(_ repository: RepositoryKey, _ tag: Tag, fleet: FleetMember) async throws(MirrorError) -> TagClaim {
        let key = FleetWorkKey.tagFetch(repository, tag)
        let holder = FillLeaseHolder(owner: fleet.owner, peerURL: fleet.peerURL, repository: repository.description)
        let claim = try await local.wrap { () async throws(IndexError) in try await fleet.leases.acquireLease(key, holder: holder, ttl: fleet.leaseTTL) }
        if case .acquired = claim {
            // Written between the miss and the claim (its fetcher finished and let go): serve it.
            guard let content = await recordedTag(repository, tag) else { return .fetching(key, fleet) }
            try? await fleet.leases.releaseLease(key, owner: fleet.owner)
            return .lost(content)
        }
        let deadline = ContinuousClock.now + fleet.peerWait
        while ContinuousClock.now < deadline {
            try? await Task.sleep(for: Self.tagFetchPoll)
            if let content = await recordedTag(repository, tag) { return .lost(content) }
            // Let go (or its time ran out) with no row: it failed; ask the upstream here. The
            // row is read once more, for a winner that wrote it and let go since the read above.
            if (try? await fleet.leases.leaseHolder(key)) == nil { break }
        }
        if let content = await recordedTag(repository, tag) { return .lost(content) }
        logger.debug("another replica's first fetch of a tag wrote nothing; fetching it here", metadata: [
            "oci.repository": "\(repository)", "oci.tag": "\(tag)"])
        return .unclaimed
    }

    /// What the tag's row names, if it has one whose manifest is stored: another replica's
    /// fetch, shared, so counted as a join (as a blob streamed from a peer is).
    private func recordedTag(_ repository: RepositoryKey, _ tag: Tag) async -> ManifestContent? {
        guard let row = try? await index.tag(repository, tag),
              var content = try? await local.manifestContent(row.digest, mediaType: row.mediaType) else { return nil }
        content.cacheResult = .join
        return content
    }

    /// Claims the revalidation of a cached, expired tag, or finds another replica has.
    func claimRevalidation(_ repository: RepositoryKey, _ tag: Tag, _ cached: TagRecord?, ttl: Duration) async throws(MirrorError) -> TagClaim {
        let ttlSeconds = ttl.components.seconds
        // A fresh tag whose manifest is gone is fetched again here, unclaimed.
        guard let cached, ttlSeconds > 0, now - cached.checkedAt >= ttlSeconds else { return .unclaimed }
        // Fresh for min(TTL, hold) from now: `now - checked_at < TTL` holds that long.
        let claimed = now - ttlSeconds + min(ttlSeconds, Self.tagClaimHold)
        let won = try await local.wrap { () async throws(IndexError) in
            try await index.claimTagRevalidation(repository, tag, observedCheckedAt: cached.checkedAt, checkedAt: claimed)
        }
        if won { return .won(observed: cached.checkedAt, claimed: claimed) }
        if let current = try await local.wrap({ () async throws(IndexError) in try await index.tag(repository, tag) }),
           let content = try? await local.manifestContent(current.digest, mediaType: current.mediaType) {
            logger.debug("tag revalidation claimed by another replica", metadata: [
                "oci.repository": "\(repository)", "oci.tag": "\(tag)", "oci.digest": "\(current.digest)"])
            return .lost(content)
        }
        // The row or its manifest is gone: ask the upstream here.
        return .unclaimed
    }

    /// Ends a claim once its fetch is over. A won revalidation that `recorded` nothing is given
    /// back (only if the row still holds it), so the tag is expired again; a first fetch's
    /// lease is let go either way, so replicas waiting for it stop at once.
    func release(_ claim: TagClaim, _ repository: RepositoryKey, _ tag: Tag, recorded: Bool) async {
        if case .fetching(let key, let fleet) = claim {
            try? await fleet.leases.releaseLease(key, owner: fleet.owner)
            return
        }
        guard case .won(let observed, let claimed) = claim, !recorded else { return }
        do {
            _ = try await index.claimTagRevalidation(repository, tag, observedCheckedAt: claimed, checkedAt: observed)
        } catch {
            // It frees itself when the hold ends.
            logger.debug("a tag revalidation claim was not given back", metadata: ["oci.repository": "\(repository)", "oci.tag": "\(tag)", "error": "\(error)"])
        }
    }
}
