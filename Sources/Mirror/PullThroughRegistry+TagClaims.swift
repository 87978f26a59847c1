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
extension PullThroughRegistry {
    /// How long a claimed revalidation keeps the tag looking checked, at most (less when the
    /// TTL is shorter): bounds what a claimer that dies costs the fleet.
    static let tagClaimHold: Int64 = 30

    enum TagClaim: Sendable {
        /// No claim taken: nothing cached to serve meanwhile, the tag not expired, or a TTL of zero.
        case unclaimed
        /// This replica asks the upstream; `observed` is what `checked_at` was.
        case won(observed: Int64, claimed: Int64)
        /// Another replica claimed it: what the row says now.
        case lost(ManifestContent)
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

    /// Gives a won claim back (only if the row still holds it), so the tag is expired again.
    func release(_ claim: TagClaim, _ repository: RepositoryKey, _ tag: Tag) async {
        guard case .won(let observed, let claimed) = claim else { return }
        do {
            _ = try await index.claimTagRevalidation(repository, tag, observedCheckedAt: claimed, checkedAt: observed)
        } catch {
            // It frees itself when the hold ends.
            logger.debug("a tag revalidation claim was not given back", metadata: ["oci.repository": "\(repository)", "oci.tag": "\(tag)", "error": "\(error)"])
        }
    }
}
