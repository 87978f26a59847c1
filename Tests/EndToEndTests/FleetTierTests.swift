import Foundation
import OCI
import PostgresTestServer
import Testing

/// The local disk tier of fleet replicas (`storage.local_cache.max_size`): what a replica
/// downloaded, streamed from a peer or read from the bucket stays on its disk and is served
/// from there, the bucket not needed.
@Suite("fleet replicas keep hot blobs on local disk", .serialized)
struct FleetTierTests {
    @Test("after a pull through two replicas, both serve the image with the bucket stopped")
    func tierServesWithoutTheBucket() async throws {
        let peers = try FleetLeaseTests.peerPorts(2)
        try await FleetHarness.run(replicas: 2, extraEnvironment: ["REGISTRY_MIRROR_STORAGE_LOCAL_CACHE_MAX_SIZE": "1GiB"],
                                   replicaEnvironment: FleetLeaseTests.fleetEnvironment(peerPorts: peers)) { fleet in
            let image = try fleet.scope.bigImage(seed: PullThroughTests.seed(), layerSizes: [24 << 20, 3000])
            try await fleet.push(image, "test/tier", tag: "v1")
            let expected = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/tier", tag: "v1")
            let reference = "test/tier@\(expected.rootDigest)"
            async let first = fleet.pull(reference, through: 0)
            async let second = fleet.pull(reference, through: 1)
            for (index, outcome) in [try await first, try await second].enumerated() {
                try #require(outcome.result.succeeded, "replica \(index): \(outcome.result.summary)\n\(fleet.logTails())")
                try PullThroughTests.expectLayout(outcome.layout, holds: expected, "cold pull through replica \(index)")
            }
            // Each replica's tier fills: from its own download, a peer's stream, or a copy of
            // what it read from the bucket.
            let wanted = Set(expected.allDigests.map(\.shardedPath))
            let deadline = ContinuousClock.now + .seconds(30)
            func tier(_ replica: FleetReplica) -> Set<String> {
                Set(Files.regularFiles(under: replica.dataDirectory.appendingPathComponent("local-cache/blobs")))
            }
            while fleet.replicas.contains(where: { !tier($0).isSuperset(of: wanted) }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            for replica in fleet.replicas {
                #expect(tier(replica).isSuperset(of: wanted), "replica \(replica.index)'s tier lacks \(wanted.subtracting(tier(replica)))")
            }

            // The bucket goes away: both replicas still serve the image, from their disks.
            await fleet.moto.process.stop()
            for replica in fleet.replicas {
                let (warm, layout) = try await fleet.pull(reference, through: replica.index)
                try #require(warm.succeeded, "replica \(replica.index) with the bucket stopped: \(warm.summary)\n\(fleet.logTails())")
                try PullThroughTests.expectLayout(layout, holds: expected, "warm pull through replica \(replica.index), bucket stopped")
            }
        }
    }
}
