import Foundation

/// `fleet.*`: this mirror is one replica of a fleet that shares one S3-compatible store
/// (`storage.backend: s3`) and one PostgreSQL index (`index.backend: postgres`); one replica
/// downloads each blob for all of them (docs/scale-out.md).
public struct FleetSettings: Sendable, Equatable {
    /// `fleet.replica_id`: how logs, the status page and the lease table name this replica.
    public var replicaID: String
    /// `fleet.listen`: the peer endpoint's own address (never the clients' listener).
    public var host = "0.0.0.0"
    public var port = 5001
    /// `fleet.advertise`: the base URL the other replicas reach the peer endpoint at.
    public var advertise: String
    /// The shared secret, from `fleet.secret_file` or the variable `fleet.secret_env` names.
    public var secret: [UInt8]
    /// `fleet.lease_ttl`: a download's lease runs out this long after its last renewal.
    public var leaseTTL: Duration = .seconds(15)
    /// `fleet.peer_wait`: how long to wait for a blob to be published when its downloading
    /// peer cannot stream it.
    public var peerWait: Duration = .seconds(60)

    /// The variable that holds the secret unless `fleet.secret_env` names another.
    public static let defaultSecretVariable = "REGISTRY_MIRROR_FLEET_SECRET"
    /// Shorter secrets are refused: the peer tokens are only as strong as the key.
    public static let minimumSecretLength = 16

    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "replica" }
        let name = String(cString: buffer)
        return name.isEmpty ? "replica" : name
    }
}

extension MirrorConfiguration {
    static let fleetKeys: [(path: String, environment: String)] = [
        ("fleet.replica_id", "REGISTRY_MIRROR_FLEET_REPLICA_ID"),
        ("fleet.listen", "REGISTRY_MIRROR_FLEET_LISTEN"),
        ("fleet.advertise", "REGISTRY_MIRROR_FLEET_ADVERTISE"),
        ("fleet.secret_env", "REGISTRY_MIRROR_FLEET_SECRET_ENV"),
        ("fleet.secret_file", "REGISTRY_MIRROR_FLEET_SECRET_FILE"),
        ("fleet.lease_ttl", "REGISTRY_MIRROR_FLEET_LEASE_TTL"),
        ("fleet.peer_wait", "REGISTRY_MIRROR_FLEET_PEER_WAIT"),
    ]

    /// Reads `fleet.*`. Any key makes this a fleet replica; a fleet needs the shared store and
    /// index, and a secret.
    mutating func applyFleet(_ values: [String: String], environment: [String: String], problems: inout [String]) {
        let given = Self.fleetKeys.map(\.path).filter { values[$0] != nil }
        guard !given.isEmpty else {
            fleet = nil
            return
        }
        if s3Storage == nil || index.backend != .postgres {
            problems.append("fleet: a fleet needs storage.backend: s3 and index.backend: postgres, which every replica shares (\(given.joined(separator: ", ")) set)")
        }
        var secret: [UInt8]?
        if let file = values["fleet.secret_file"] {
            if let data = FileManager.default.contents(atPath: file) {
                secret = Array(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
            } else {
                problems.append("fleet.secret_file: \(file) cannot be read")
            }
        } else {
            let variable = values["fleet.secret_env"] ?? FleetSettings.defaultSecretVariable
            if let value = environment[variable] { secret = Array(value.utf8) } else {
                problems.append("fleet: no secret; set \(variable) (or fleet.secret_env, fleet.secret_file) to the key every replica shares")
            }
        }
        if let s = secret, s.count < FleetSettings.minimumSecretLength {
            problems.append("fleet: the secret must be at least \(FleetSettings.minimumSecretLength) bytes (openssl rand -hex 32 makes one)")
        }
        let replica = values["fleet.replica_id"] ?? FleetSettings.hostName()
        if replica.isEmpty || replica.contains("/") || replica.count > 200 {
            problems.append("fleet.replica_id: must be a non-empty name without \"/\"; got \"\(replica)\"")
        }
        var host = "0.0.0.0", port = 5001
        if let v = values["fleet.listen"] {
            if let parsed = Self.parseListen(v) { (host, port) = parsed } else { problems.append("fleet.listen: must be HOST:PORT, got \"\(v)\"") }
            if v == listen { problems.append("fleet.listen: \(v) is the main listen address; the peer endpoint needs an address of its own") }
        }
        let advertise = values["fleet.advertise"] ?? "http://\(FleetSettings.hostName()):\(port)"
        if let url = URL(string: advertise), url.scheme == "http" || url.scheme == "https", url.host != nil, url.query == nil {} else {
            problems.append("fleet.advertise: must be an http or https URL (http://10.0.0.7:5001); got \"\(advertise)\"")
        }
        var settings = FleetSettings(replicaID: replica, advertise: advertise, secret: secret ?? [])
        settings.host = host
        settings.port = port
        for (key, keyPath) in [("fleet.lease_ttl", \FleetSettings.leaseTTL), ("fleet.peer_wait", \FleetSettings.peerWait)] {
            guard let v = values[key] else { continue }
            if let d = UpstreamSpec.duration(v), d >= .seconds(1) { settings[keyPath: keyPath] = d } else {
                problems.append("\(key): must be a duration of at least 1s, like 15s; got \"\(v)\"")
            }
        }
        fleet = settings
    }
}
