import ContentStore
import Foundation
import MetadataIndex
import OCI
import Synchronization
import Upstream

/// This replica's place in a fleet of mirrors that share one S3 store and one PostgreSQL
/// index: who it is, where its peer endpoint answers, the shared secret peers sign with, and
/// the lease table that makes one replica download a blob while the others stream it from
/// that replica (docs/scale-out.md).
public struct FleetMember: Sendable {
    /// `fleet.replica_id`: a name for people (the host name by default).
    public let replica: String
    /// The lease owner: the replica id and a nonce of this process, so a replica restarted
    /// under the same name never takes its dead process's leases for its own.
    public let owner: String
    /// `fleet.advertise`: the base URL other replicas reach this one's peer endpoint at.
    public let peerURL: String
    let secret: [UInt8]
    let leases: any FillLeaseStore
    /// `fleet.lease_ttl`: a lease not renewed for this long is taken over by another replica.
    public let leaseTTL: Duration
    /// `fleet.peer_wait`: how long a replica whose peer cannot stream a blob waits for the
    /// blob to be published before its clients get an error.
    public let peerWait: Duration
    /// A writer into a local spool only (`SpoolingStore.makeSpool`): a peer's bytes are
    /// published by the replica that downloads them, never twice.
    let makeSpool: @Sendable (Digest) throws(StoreError) -> any BlobWriter
    let transport: CurlTransport
    let counters = FleetCounters()

    public init(replica: String, peerURL: String, secret: [UInt8], leases: any FillLeaseStore, leaseTTL: Duration = .seconds(15),
                peerWait: Duration = .seconds(60), transport: CurlTransport = CurlTransport(),
                makeSpool: @escaping @Sendable (Digest) throws(StoreError) -> any BlobWriter) {
        self.replica = replica
        var nonce = SystemRandomNumberGenerator()
        self.owner = "\(replica)/\(String(nonce.next() as UInt64, radix: 36))"
        self.peerURL = peerURL.hasSuffix("/") ? String(peerURL.dropLast()) : peerURL
        self.secret = secret
        self.leases = leases
        self.leaseTTL = leaseTTL
        self.peerWait = peerWait
        self.transport = transport
        self.makeSpool = makeSpool
    }

    /// The peer endpoint's path for a blob.
    public static func peerPath(_ digest: Digest) -> String { "/fleet/v1/blobs/\(digest)" }

    /// What the status page and `/metrics` show of this replica's part in the fleet.
    public var activity: FleetActivity { counters.snapshot }
}

/// Counts of a replica's fleet traffic.
public struct FleetActivity: Sendable {
    /// Leases this replica holds now (downloads it makes for the fleet).
    public var leasesHeld: Int
    /// Bytes streamed from other replicas' downloads, and from the shared store after a peer
    /// could not stream them.
    public var bytesFromPeers: Int64
    public var bytesFromStore: Int64
    /// Bytes this replica's peer endpoint sent to other replicas.
    public var bytesToPeers: Int64
}

final class FleetCounters: Sendable {
    let leasesHeld = Atomic<Int>(0)
    let fromPeers = Atomic<Int64>(0)
    let fromStore = Atomic<Int64>(0)
    let toPeers = Atomic<Int64>(0)

    var snapshot: FleetActivity {
        FleetActivity(leasesHeld: leasesHeld.load(ordering: .relaxed), bytesFromPeers: fromPeers.load(ordering: .relaxed),
                      bytesFromStore: fromStore.load(ordering: .relaxed), bytesToPeers: toPeers.load(ordering: .relaxed))
    }
}

/// The token a replica sends its peers: `Fleet <expiry>.<hex HMAC-SHA256>` over the method,
/// the path and the expiry (Unix seconds), keyed with the fleet secret. It names one blob and
/// lives a minute, so a token seen on the wire opens nothing else and not for long; the
/// secret itself never travels.
public enum FleetToken {
    static let scheme = "Fleet "
    /// How far ahead of the verifier's clock an expiry may be (clock skew plus lifetime).
    static let maxLifetime: Int64 = 300

    public static func header(secret: [UInt8], method: String, path: String, now: Int64, lifetime: Int64 = 60) -> String {
        let expiry = now + lifetime
        return scheme + "\(expiry)." + HMACSHA256.hex(mac(secret: secret, method: method, path: path, expiry: expiry))
    }

    /// Whether `header` is a live token for this request.
    public static func verify(_ header: String?, secret: [UInt8], method: String, path: String, now: Int64) -> Bool {
        guard !secret.isEmpty, let header, header.hasPrefix(scheme) else { return false }
        let parts = header.dropFirst(scheme.count).split(separator: ".", maxSplits: 1)
        guard parts.count == 2, parts[0].count <= 12, let expiry = Int64(parts[0]), expiry >= now, expiry <= now + maxLifetime,
              let given = unhex(parts[1]) else { return false }
        return HMACSHA256.equal(given, mac(secret: secret, method: method, path: path, expiry: expiry))
    }

    static func mac(secret: [UInt8], method: String, path: String, expiry: Int64) -> [UInt8] {
        HMACSHA256.mac(key: secret, message: Array("registry-mirror fleet v1\n\(method)\n\(path)\n\(expiry)".utf8))
    }

    static func unhex(_ text: Substring) -> [UInt8]? {
        guard text.utf8.count == 64 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(32)
        var high: UInt8?
        for c in text.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            default: return nil
            }
            if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
        }
        return out
    }
}

extension FleetMember {
    /// Records in the index that this replica is alive, at its peer URL.
    public func heartbeat() async throws(IndexError) {
        try await leases.heartbeat(replica: replica, owner: owner, peerURL: peerURL)
    }

    /// Replicas that said they were alive within the last 30 s, this one included.
    public func peers() async throws(IndexError) -> [(replica: String, owner: String, peerURL: String)] {
        try await leases.replicas(within: .seconds(30))
    }
}
