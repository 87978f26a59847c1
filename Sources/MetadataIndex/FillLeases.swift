import OCI

/// Who is downloading a blob for a fleet: a replica's owner id (its id and a per-process
/// nonce, so a restarted replica never mistakes a dead process's lease for its own), the URL
/// its peer endpoint answers on, and the repository the download was asked for.
public struct FillLeaseHolder: Sendable, Equatable {
    public var owner: String
    public var peerURL: String
    public var repository: String

    public init(owner: String, peerURL: String, repository: String) {
        self.owner = owner
        self.peerURL = peerURL
        self.repository = repository
    }
}

/// The answer to a lease claim.
public enum FillLeaseClaim: Sendable, Equatable {
    /// This replica downloads the blob; it renews the lease while it does and releases it after.
    case acquired
    /// Another replica does, and has heartbeated within the lease's time.
    case heldBy(FillLeaseHolder)
}

/// Fill leases for a fleet: one upstream download per blob across replicas that share an index.
///
/// Expiry is the database's clock, not the replicas', so replicas whose clocks disagree still
/// agree on when a lease ran out. Only the PostgreSQL index implements it: one node's SQLite
/// index has one process, whose in-memory fill map already shares every download.
public protocol FillLeaseStore: Sendable {
    /// Takes the lease of `digest` when nobody holds it or its holder's time ran out.
    func acquireFillLease(_ digest: Digest, holder: FillLeaseHolder, ttl: Duration) async throws(IndexError) -> FillLeaseClaim
    /// Moves the expiry of `owner`'s leases of `digests` to `ttl` from now.
    func renewFillLeases(_ digests: [Digest], owner: String, ttl: Duration) async throws(IndexError)
    /// Gives the lease up (the blob is published, or the download failed).
    func releaseFillLease(_ digest: Digest, owner: String) async throws(IndexError)
    /// The holder of `digest`'s lease, if its time has not run out.
    func fillLeaseHolder(_ digest: Digest) async throws(IndexError) -> FillLeaseHolder?
    /// Leases whose time has not run out, with their holders (blob leases only).
    func liveFillLeases() async throws(IndexError) -> [(digest: Digest, holder: FillLeaseHolder)]
    /// Replaces `owner`'s published reads with `digests` (the blobs its responses stream now),
    /// each good for `ttl` unless published again.
    func publishReads(_ digests: [Digest], owner: String, ttl: Duration) async throws(IndexError)
    /// Those of `digests` that must not be deleted from the shared store now: a replica reads
    /// or downloads them, or the index records them (again).
    func stillWanted(_ digests: [Digest]) async throws(IndexError) -> Set<Digest>
    /// A lease on other work than a blob's download (`FleetWorkKey`: a tag the fleet has not
    /// cached, a watched image's check), in the same table and under the same rules: of the
    /// replicas racing for `key` one gets `.acquired`; its own claim again renews it.
    func acquireLease(_ key: FleetWorkKey, holder: FillLeaseHolder, ttl: Duration) async throws(IndexError) -> FillLeaseClaim
    /// Gives the lease of `key` up, if `owner` holds it.
    func releaseLease(_ key: FleetWorkKey, owner: String) async throws(IndexError)
    /// The holder of `key`'s lease, if its time has not run out.
    func leaseHolder(_ key: FleetWorkKey) async throws(IndexError) -> FillLeaseHolder?
    /// Says this replica is alive (for the status page's list of peers).
    func heartbeat(replica: String, owner: String, peerURL: String) async throws(IndexError)
    /// Replicas that heartbeated within `within`: id, owner and peer URL.
    func replicas(within: Duration) async throws(IndexError) -> [(replica: String, owner: String, peerURL: String)]
}

/// The key of a lease on work the fleet does once that is not a blob's download. Its text
/// holds a space, which no digest does, so it shares the lease table with blob leases without
/// ever meeting one (and lists of blob leases skip it).
public struct FleetWorkKey: Sendable, Hashable, CustomStringConvertible {
    public let description: String

    /// The first fetch of a tag no replica has cached yet.
    public static func tagFetch(_ repository: RepositoryKey, _ tag: Tag) -> FleetWorkKey {
        FleetWorkKey(description: "tag \(repository):\(tag)")
    }

    /// A watched image's check, for one watch interval (`what` names the image and its platforms).
    public static func watch(_ what: String) -> FleetWorkKey {
        FleetWorkKey(description: "watch \(what)")
    }
}
