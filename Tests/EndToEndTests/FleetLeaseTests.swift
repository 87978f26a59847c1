import Foundation
import OCI
import PostgresTestServer
import Testing

/// One upstream download per blob for the whole fleet (issue 12): three replicas with the
/// fleet keys, on one bucket and one PostgreSQL, pulled from at once by skopeo.
@Suite("a fleet downloads each blob once", .serialized)
struct FleetLeaseTests {
    static let secret = "e2e-fleet-secret-0123456789abcdef"

    /// The fleet keys for every replica: its own peer port, advertised on loopback.
    static func fleetEnvironment(peerPorts: [Int], leaseTTL: String = "3s") -> @Sendable (Int, [String]) -> [String: String] {
        { index, _ in
            [
                "REGISTRY_MIRROR_FLEET_SECRET": secret,
                "REGISTRY_MIRROR_FLEET_REPLICA_ID": "replica-\(index)",
                "REGISTRY_MIRROR_FLEET_LISTEN": "127.0.0.1:\(peerPorts[index])",
                "REGISTRY_MIRROR_FLEET_ADVERTISE": "http://127.0.0.1:\(peerPorts[index])",
                "REGISTRY_MIRROR_FLEET_LEASE_TTL": leaseTTL,
                "REGISTRY_MIRROR_FLEET_PEER_WAIT": "30s",
            ]
        }
    }

    static func peerPorts(_ count: Int) throws -> [Int] {
        var ports: [Int] = []
        while ports.count < count {
            let port = try LoopbackPort.free()
            if !ports.contains(port) { ports.append(port) }
        }
        return ports
    }

    @Test("8 pulls of a 256 MiB-layer image over 3 replicas at once: each blob crosses from the upstream once")
    func eightPullsOneDownload() async throws {
        let peers = try Self.peerPorts(3)
        try await FleetHarness.run(replicas: 3, replicaEnvironment: Self.fleetEnvironment(peerPorts: peers)) { fleet in
            let image = try fleet.scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [256 << 20, 5000])
            try await fleet.push(image, "test/big", tag: "v1")
            let expected = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/big", tag: "v1")
            let mark = await fleet.mark()
            let bytesBefore = FleetUpstreamLog.blobBytes(fleet.upstream)

            let results = try await withThrowingTaskGroup(of: (Int, CommandResult, URL).self) { group in
                for client in 0..<8 {
                    group.addTask {
                        let (result, layout) = try await fleet.pull("test/big@\(expected.rootDigest)", through: client % 3)
                        return (client, result, layout)
                    }
                }
                return try await group.reduce(into: [(Int, CommandResult, URL)]()) { $0.append($1) }
            }
            for (client, result, layout) in results.sorted(by: { $0.0 < $1.0 }) {
                try #require(result.succeeded, "client \(client) through replica \(client % 3): \(result.summary)\n\(fleet.logTails())")
                try PullThroughTests.expectLayout(layout, holds: expected, "client \(client)")
            }

            // The upstream's access log: one GET per blob, and the bytes of the image once.
            let gets = await fleet.upstreamBlobGets(since: mark)
            for blob in expected.blobs {
                let count = gets.filter { $0.path.hasSuffix("/blobs/\(blob)") }.count
                #expect(count == 1, "\(blob) was fetched \(count) times:\n\(PullThroughLog.describe(gets))")
                if count > 1 {
                    for replica in fleet.replicas {
                        print("--- replica \(replica.index)")
                        for line in replica.log.split(separator: "\n") where line.contains("big") || line.contains("fleet") { print(line.prefix(600)) }
                    }
                }
            }
            let imageBytes = try expected.blobs.reduce(Int64(0)) { $0 + Int64(try PullThroughLayout.blob(results[0].2, $1).count) }
            let upstreamBytes = FleetUpstreamLog.blobBytes(fleet.upstream) - bytesBefore
            let ratio = Double(upstreamBytes) / Double(imageBytes)
            Progress.step("fleet: upstream blob bytes ÷ image = \(String(format: "%.3f", ratio)) (\(upstreamBytes) / \(imageBytes))")
            #expect(ratio == 1.0, "upstream bytes ÷ image = \(ratio)")

            // The other replicas streamed from the downloading one, not from the upstream.
            var fromPeers: Int64 = 0
            for replica in fleet.replicas {
                let metrics = try RawHTTP.get(port: replica.port, path: "/metrics")
                fromPeers += FleetUpstreamLog.gauge("registry_mirror_fleet_bytes_from_peers", in: String(decoding: metrics.body, as: UTF8.self))
                #expect(String(decoding: metrics.body, as: UTF8.self).contains("registry_mirror_fleet_replica_info{replica=\"replica-\(replica.index)\"}"))
            }
            #expect(fromPeers >= 256 << 20, "no replica streamed the big layer from a peer (\(fromPeers) bytes)")

            // The bucket: the image, each object once, no upload left open; no lease left behind.
            let deadline = ContinuousClock.now + .seconds(20)
            while Set(try await fleet.bucket.allDigests()) != expected.allDigests, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(Set(try await fleet.bucket.allDigests()) == expected.allDigests)
            #expect(try await fleet.bucket.pendingUploads().isEmpty)
            #expect(try await fleet.sql("SELECT count(*) FROM fill_leases").trimmingCharacters(in: .whitespacesAndNewlines) == "0")

            // The peer endpoint opens nothing without the fleet secret.
            let path = "/fleet/v1/blobs/\(expected.layers[0])"
            #expect(try RawHTTP.get(port: peers[0], path: path).status == 401)
            let expiry = Int64(Date().timeIntervalSince1970) + 30
            let forged = "Fleet \(expiry)." + HMACSHA256.hex(HMACSHA256.mac(key: Array("not-the-fleet-secret-at-all".utf8), message: Array(path.utf8)))
            let refused = try RawHTTP.get(port: peers[0], path: path, headers: [("Authorization", forged)])
            #expect(refused.status == 401 && String(decoding: refused.body, as: UTF8.self).contains("UNAUTHORIZED"))
            #expect(try RawHTTP.get(port: fleet.replicas[0].port, path: path).status == 404, "the clients' listener has no peer endpoint")
        }
    }

    @Test("kill -9 of the replica downloading a 256 MiB blob: the others fail cleanly or finish, the next pull finishes, the bucket holds nothing unverified")
    func ownerKilledMidFill() async throws {
        let peers = try Self.peerPorts(3)
        // 32 MiB/s: the layer takes 8 s to cross, long enough to kill its downloader halfway.
        try await FleetHarness.run(replicas: 3, replicaEnvironment: Self.fleetEnvironment(peerPorts: peers), throttle: 32 << 20) { fleet in
            let image = try fleet.scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [256 << 20])
            try await fleet.push(image, "test/crash", tag: "v1")
            let expected = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/crash", tag: "v1")
            let layer = expected.layers[0]
            let mark = await fleet.mark()

            // Replica 0 downloads (it asked first and holds the lease); 1 and 2 stream from it.
            async let first = fleet.pull("test/crash@\(expected.rootDigest)", through: 0)
            let leaseDeadline = ContinuousClock.now + .seconds(30)
            var holder = ""
            while holder.isEmpty, ContinuousClock.now < leaseDeadline {
                holder = try await fleet.sql("SELECT owner FROM fill_leases WHERE digest = '\(layer)'").trimmingCharacters(in: .whitespacesAndNewlines)
                if holder.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
            }
            try #require(holder.hasPrefix("replica-0/"), "replica 0 should hold the lease, not \"\(holder)\"\n\(fleet.logTails())")
            async let second = fleet.pull("test/crash@\(expected.rootDigest)", through: 1)
            async let third = fleet.pull("test/crash@\(expected.rootDigest)", through: 2)
            try await Task.sleep(for: .seconds(3))
            await fleet.kill(0)
            Progress.step("fleet: replica 0 killed in the middle of its download")

            // The waiting clients fail cleanly or complete with the right bytes; none hangs.
            for (name, outcome) in [("replica 0", try await first), ("replica 1", try await second), ("replica 2", try await third)] {
                Progress.step("fleet: the pull through \(name) \(outcome.result.succeeded ? "completed" : "failed: \(outcome.result.stderr.suffix(200))")")
                if outcome.result.succeeded {
                    try PullThroughTests.expectLayout(outcome.layout, holds: expected, "the pull through \(name) that completed")
                }
            }

            // The next pull completes, with at most one more download of the layer.
            let (again, layout) = try await fleet.pull("test/crash@\(expected.rootDigest)", through: 1)
            try #require(again.succeeded, "\(again.summary)\n\(fleet.logTails())")
            try PullThroughTests.expectLayout(layout, holds: expected, "the pull after the crash")
            let downloads = await fleet.upstreamBlobGets(since: mark).filter { $0.path.hasSuffix("/blobs/\(layer)") }
            #expect(downloads.count <= 2, "the layer was downloaded \(downloads.count) times:\n\(PullThroughLog.describe(downloads))")

            // Nothing unverified in the bucket: every object's bytes hash to its key.
            let deadline = ContinuousClock.now + .seconds(20)
            while await fleet.bucket.size(of: layer) == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            for digest in try await fleet.bucket.allDigests() {
                let bytes = try await fleet.bucket.read(digest, limit: 512 << 20)
                #expect(DigestHasher.digest(of: bytes) == digest, "the object under \(digest) holds other bytes")
            }
            #expect(try await fleet.bucket.allDigests().contains(layer))
            // The killed replica's multipart upload stays open until a sweep aborts it.
            #expect(try await !fleet.bucket.pendingUploads().isEmpty, "the killed download left no upload open: was it killed mid-fill?")
            _ = try await fleet.bucket.sweepUploads(olderThan: .zero)
            #expect(try await fleet.bucket.pendingUploads().isEmpty)
        }
    }
}

/// Reads the upstream registry's access log (combined format) for what the counts need.
enum FleetUpstreamLog {
    /// Bytes of every blob GET the upstream answered so far.
    static func blobBytes(_ registry: DistributionRegistry) -> Int64 {
        registry.accessLog.split(separator: "\n").reduce(Int64(0)) { total, line in
            guard let open = line.firstIndex(of: "\""), let close = line[line.index(after: open)...].firstIndex(of: "\"") else { return total }
            let request = line[line.index(after: open)..<close].split(separator: " ")
            let after = line[line.index(after: close)...].split(separator: " ")
            guard request.count >= 2, request[0] == Substring("GET"), request[1].contains("/blobs/"), after.count >= 2, let bytes = Int64(after[1]) else { return total }
            return total + bytes
        }
    }

    /// The value of an unlabelled gauge in Prometheus text.
    static func gauge(_ name: String, in text: String) -> Int64 {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            if let value = Double(line.split(separator: " ").last ?? "") { return Int64(value) }
        }
        return 0
    }
}
