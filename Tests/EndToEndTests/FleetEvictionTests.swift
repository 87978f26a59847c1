import Foundation
import OCI
import PostgresTestServer
import Testing

/// Eviction under a cap on a fleet's shared bucket (issue 12): objects go from the bucket,
/// never one another replica is streaming, and a layer other images share survives.
@Suite("a fleet evicts from the shared bucket", .serialized)
struct FleetEvictionTests {
    /// Images that share `base` and each have a layer of their own.
    static func image(_ scope: PullThroughScope, base: [UInt8], own: [UInt8], name: String) throws -> SyntheticImage {
        let writer = try OCILayoutWriter(root: scope.unique(name), seed: 1)
        let layers = [try writer.writeBlob(Ustar.archive([("base.bin", base)]), mediaType: OCILayoutWriter.layerType),
                      try writer.writeBlob(Ustar.archive([("\(name).bin", own)]), mediaType: OCILayoutWriter.layerType)]
        let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
        let configText = #"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{"Labels":{"n":"\#(name)"}}}"#
        let config = try writer.writeBlob(Array(configText.utf8), mediaType: OCILayoutWriter.configType)
        let manifestText = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":\#(config.descriptorJSON),"layers":[\#(layers.map(\.descriptorJSON).joined(separator: ","))]}"#
        let manifest = try writer.writeBlob(Array(manifestText.utf8), mediaType: MediaType.ociManifest)
        try writer.writeLayoutIndex(root: manifest, tag: "v1")
        let platform = SyntheticPlatform(os: "linux", architecture: "amd64", variant: nil, manifest: manifest, config: config, layers: layers)
        return SyntheticImage(layout: writer.root, tag: "v1", root: manifest, platforms: [platform])
    }

    static func evictionLines(_ fleet: FleetHarness) -> String {
        fleet.replicas.map { replica in
            "--- replica \(replica.index)\n" + replica.log.split(separator: "\n")
                .filter { $0.contains("evict") || $0.contains("reads") || $0.contains("heartbeat") }.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    @Test("over the cap, the least recently used image leaves the bucket; a layer another replica streams and a shared layer stay")
    func evictionSparesWhatTheFleetReads() async throws {
        let peers = try FleetLeaseTests.peerPorts(2)
        let fleetKeys = FleetLeaseTests.fleetEnvironment(peerPorts: peers)
        try await FleetHarness.run(replicas: 2, extraEnvironment: [
            "REGISTRY_MIRROR_STORAGE_MAX_SIZE": "60MiB",
            // Passes only when a fill asks for one, so the test decides which replica evicts.
            "REGISTRY_MIRROR_STORAGE_EVICTION_INTERVAL": "10m",
        ], replicaEnvironment: fleetKeys) { fleet in
            var rng = SeededGenerator(seed: PullThroughTests.seed())
            let base = rng.bytes(4 << 20)
            var expected: [String: PullThroughUpstreamImage] = [:]
            for name in ["a", "b", "c"] {
                try await fleet.push(try Self.image(fleet.scope, base: base, own: rng.bytes(24 << 20), name: name), "test/\(name)", tag: "v1")
                expected[name] = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/\(name)", tag: "v1")
            }
            let a = try #require(expected["a"]), b = try #require(expected["b"]), c = try #require(expected["c"])
            let shared = a.layers[0], ownA = a.layers[1]
            #expect(b.layers[0] == shared && c.layers[0] == shared)

            // A through replica 0, then B through replica 1: 52 MiB, under the 60 MiB cap.
            for (image, replica) in [(a, 0), (b, 1)] {
                let (pull, _) = try await fleet.pull("\(image.repository):v1", through: replica)
                try #require(pull.succeeded, "\(pull.summary)\n\(fleet.logTails())")
                try await Task.sleep(for: .milliseconds(1100))
            }
            // Replica 1 streams A's own layer slowly (24 MiB at 768 KiB/s: with a few MiB in
            // socket buffers, the server is still sending for about 24 s). Its touch stays in
            // its memory, so for replica 0's pass image A is still the least recently used.
            let streamed = fleet.scope.unique("streamed")
            let url = "http://\(fleet.replicas[1].host)/v2/\(a.repository)/blobs/\(ownA)"
            async let slow = Command.run("curl", ["-sS", "--fail", "--limit-rate", "768K", "-o", streamed.path, url], timeout: .seconds(120))
            // Replica 1 publishes what it streams every 2 s.
            let published = ContinuousClock.now + .seconds(15)
            var readers = ""
            while !readers.contains(ownA.description), ContinuousClock.now < published {
                try await Task.sleep(for: .milliseconds(200))
                readers = try await fleet.sql("SELECT owner, digest FROM blob_readers WHERE expires_at > now()")
            }
            try #require(readers.contains("replica-1/"), "replica 1 did not publish its read of \(ownA): \(readers)\n\(fleet.logTails())")

            // C through replica 0: 76 MiB, over the cap; replica 0 evicts A.
            let (pullC, _) = try await fleet.pull("\(c.repository):v1", through: 0)
            try #require(pullC.succeeded, "\(pullC.summary)\n\(fleet.logTails())")
            // The objects go in one batch after the pass (a few seconds' wait for late reads).
            let configA = try #require(a.blobs.first { !a.layers.contains($0) })
            let deadline = ContinuousClock.now + .seconds(30)
            var objects = Set(try await fleet.bucket.allDigests())
            while objects.contains(a.rootDigest) || objects.contains(configA), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(300))
                objects = Set(try await fleet.bucket.allDigests())
            }
            #expect(!objects.contains(a.rootDigest), "image A's manifest is still in the bucket\n\(fleet.logTails())")
            #expect(!objects.contains(configA), "image A's config is still in the bucket")
            #expect(objects.contains(ownA), "the layer replica 1 is streaming was deleted from the bucket\n\(Self.evictionLines(fleet))")
            #expect(objects.contains(shared), "the layer B and C share was deleted")
            #expect(objects.isSuperset(of: b.allDigests.union(c.allDigests)), "B or C lost an object")
            #expect(try await fleet.sql("SELECT count(*) FROM manifests WHERE digest = '\(a.rootDigest)'")
                .trimmingCharacters(in: .whitespacesAndNewlines) == "0", "image A is still in the index")

            // The streaming read completes with A's layer, intact.
            let read = try await slow
            #expect(read.succeeded, "the read of a layer being evicted failed: \(read.summary)")
            let bytes = try Files.read(streamed)
            #expect(DigestHasher.digest(of: bytes) == ownA, "the streamed layer is not intact (\(bytes.count) bytes)")
            #expect(Set(try await fleet.bucket.allDigests()).contains(ownA))
        }
    }
}
