import Foundation
import MetadataIndex
import OCI
import PostgresNIO

extension PostgresMetadataStore: FillLeaseStore {
    public func acquireFillLease(_ digest: Digest, holder: FillLeaseHolder, ttl: Duration) async throws(IndexError) -> FillLeaseClaim {
        try await acquire(digest.description, holder: holder, ttl: ttl)
    }

    public func fillLeaseHolder(_ digest: Digest) async throws(IndexError) -> FillLeaseHolder? {
        try await holder(of: digest.description)
    }

    public func acquireLease(_ key: FleetWorkKey, holder: FillLeaseHolder, ttl: Duration) async throws(IndexError) -> FillLeaseClaim {
        try await acquire(key.description, holder: holder, ttl: ttl)
    }

    public func releaseLease(_ key: FleetWorkKey, owner: String) async throws(IndexError) {
        try await release(key.description, owner: owner)
    }

    public func leaseHolder(_ key: FleetWorkKey) async throws(IndexError) -> FillLeaseHolder? {
        try await holder(of: key.description)
    }

    /// One statement: the insert wins when no row exists, the update only when the row's time
    /// ran out (or it is this owner's), so of replicas racing for one key exactly one gets
    /// a row back. The others read who holds it.
    private func acquire(_ key: String, holder: FillLeaseHolder, ttl: Duration) async throws(IndexError) -> FillLeaseClaim {
        let milliseconds = Self.milliseconds(ttl)
        for _ in 0..<3 {
            let won = try await rows("lease acquire", """
                INSERT INTO fill_leases(digest, owner, peer_url, repository, expires_at)
                VALUES (\(key), \(holder.owner), \(holder.peerURL), \(holder.repository), now() + (\(milliseconds) * interval '1 millisecond'))
                ON CONFLICT (digest) DO UPDATE SET owner = EXCLUDED.owner, peer_url = EXCLUDED.peer_url,
                  repository = EXCLUDED.repository, expires_at = EXCLUDED.expires_at
                WHERE fill_leases.expires_at < now() OR fill_leases.owner = EXCLUDED.owner
                RETURNING 1
                """) { _ in true }
            if !won.isEmpty { return .acquired }
            // Released or expired between the two statements: claim again.
            if let current = try await self.holder(of: key) { return .heldBy(current) }
        }
        throw IndexError(.io, "the lease of \(key) changed hands three times during one claim")
    }

    private func holder(of key: String) async throws(IndexError) -> FillLeaseHolder? {
        try await rows("lease holder", """
            SELECT owner, peer_url, repository FROM fill_leases WHERE digest = \(key) AND expires_at >= now()
            """) { row in
            let (owner, peer, repository) = try row.decode((String, String, String).self)
            return FillLeaseHolder(owner: owner, peerURL: peer, repository: repository)
        }.first
    }

    private func release(_ key: String, owner: String) async throws(IndexError) {
        _ = try await rows("lease release", "DELETE FROM fill_leases WHERE digest = \(key) AND owner = \(owner)") { _ in () }
    }

    public func renewFillLeases(_ digests: [Digest], owner: String, ttl: Duration) async throws(IndexError) {
        guard !digests.isEmpty else { return }
        let milliseconds = Self.milliseconds(ttl)
        _ = try await rows("lease renew", """
            UPDATE fill_leases SET expires_at = now() + (\(milliseconds) * interval '1 millisecond')
            WHERE owner = \(owner) AND digest = ANY(\(digests.map(\.description)))
            """) { _ in () }
    }

    public func releaseFillLease(_ digest: Digest, owner: String) async throws(IndexError) {
        try await release(digest.description, owner: owner)
    }

    public func liveFillLeases() async throws(IndexError) -> [(digest: Digest, holder: FillLeaseHolder)] {
        let rows = try await rows("live leases", """
            SELECT digest, owner, peer_url, repository FROM fill_leases WHERE expires_at >= now() ORDER BY digest
            """) { row in try row.decode((String, String, String, String).self) }
        // Work leases (`FleetWorkKey`) share the table; their keys are no digests.
        return rows.compactMap { digest, owner, peer, repository in
            guard let parsed = try? Digest(parsing: digest) else { return nil }
            return (parsed, FillLeaseHolder(owner: owner, peerURL: peer, repository: repository))
        }
    }

    public func publishReads(_ digests: [Digest], owner: String, ttl: Duration) async throws(IndexError) {
        let keys = digests.map(\.description).sorted()
        let milliseconds = Self.milliseconds(ttl)
        try await transaction("publish reads") { [logger] tx in
            try await tx.run("DELETE FROM blob_readers WHERE owner = \(owner) AND NOT (digest = ANY(\(keys)))", logger: logger)
            guard !keys.isEmpty else { return }
            try await tx.run("""
                INSERT INTO blob_readers(owner, digest, expires_at)
                SELECT \(owner), d, now() + (\(milliseconds) * interval '1 millisecond') FROM unnest(\(keys)::text[]) AS d
                ON CONFLICT (owner, digest) DO UPDATE SET expires_at = EXCLUDED.expires_at
                """, logger: logger)
        }
    }

    public func stillWanted(_ digests: [Digest]) async throws(IndexError) -> Set<Digest> {
        guard !digests.isEmpty else { return [] }
        let keys = digests.map(\.description)
        let wanted = try await rows("still wanted", """
            SELECT digest FROM blob_readers WHERE digest = ANY(\(keys)) AND expires_at >= now()
            UNION SELECT digest FROM fill_leases WHERE digest = ANY(\(keys)) AND expires_at >= now()
            UNION SELECT digest FROM blobs WHERE digest = ANY(\(keys))
            """) { try $0.decode(String.self) }
        return Set(wanted.compactMap { try? Digest(parsing: $0) })
    }

    public func heartbeat(replica: String, owner: String, peerURL: String) async throws(IndexError) {
        _ = try await rows("replica heartbeat", """
            INSERT INTO fleet_replicas(owner, replica, peer_url, seen_at) VALUES (\(owner), \(replica), \(peerURL), now())
            ON CONFLICT (owner) DO UPDATE SET seen_at = now(), peer_url = EXCLUDED.peer_url
            """) { _ in () }
        // Rows of processes gone for a day go with the next heartbeat of anyone.
        _ = try await rows("replica cleanup", "DELETE FROM fleet_replicas WHERE seen_at < now() - interval '1 day'") { _ in () }
    }

    public func replicas(within: Duration) async throws(IndexError) -> [(replica: String, owner: String, peerURL: String)] {
        let milliseconds = Self.milliseconds(within)
        let rows = try await rows("replicas", """
            SELECT replica, owner, peer_url FROM fleet_replicas
            WHERE seen_at >= now() - (\(milliseconds) * interval '1 millisecond') ORDER BY replica, owner
            """) { row in try row.decode((String, String, String).self) }
        return rows.map { (replica: $0.0, owner: $0.1, peerURL: $0.2) }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
