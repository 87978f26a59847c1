import Foundation
import OCI
import Testing

/// Three replicas on one bucket and one PostgreSQL (issue 12), started by `FleetHarness`:
/// what one replica cached, the others serve without the upstream.
@Suite("a fleet of replicas on one S3 bucket and one PostgreSQL", .serialized)
struct FleetTests {
    @Test("a blob filled through replica 0 is served by replicas 1 and 2 with no upstream request")
    func filledOnceServedByAll() async throws {
        try await FleetHarness.run(replicas: 3) { fleet in
            try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/shared", tag: "v1")
            let image = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/shared", tag: "v1")
            try await Self.expectServedFromTheFleet(fleet, image, reference: "test/shared:v1")

            // The harness's replica controls: a crash and a graceful restart keep port and data.
            await fleet.kill(2)
            #expect(throws: (any Error).self) { try RawHTTP.get(port: fleet.replicas[2].port, path: "/healthz") }
            try await fleet.start(2)
            try await fleet.restart(1)
            let mark = await fleet.mark()
            for replica in fleet.replicas {
                let response = try PullThroughHTTP.manifest(port: replica.port, "/v2/test/shared/manifests/\(image.rootDigest)")
                #expect(response.status == 200, "replica \(replica.index) after the restarts: \(response.status)")
            }
            #expect(await fleet.upstreamRequests(since: mark).isEmpty)
        }
    }

    /// A cold pull through replica 0 fills the bucket; then pulls through every other replica
    /// go nowhere upstream and get the same bytes.
    static func expectServedFromTheFleet(_ fleet: FleetHarness, _ image: PullThroughUpstreamImage, reference: String) async throws {
        let (cold, coldLayout) = try await fleet.pull(reference, through: 0)
        try #require(cold.succeeded, "\(cold.summary)\n\(fleet.logTails())")
        try PullThroughTests.expectLayout(coldLayout, holds: image, "cold pull through replica 0")
        // The client has the last byte once the blob is verified; the upload completes just after.
        let deadline = ContinuousClock.now + .seconds(20)
        while !Set(try await fleet.bucket.allDigests()).isSuperset(of: image.allDigests), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(Set(try await fleet.bucket.allDigests()).isSuperset(of: image.allDigests), "the bucket lacks some of the image")

        let mark = await fleet.mark()
        for replica in fleet.replicas.dropFirst() {
            let (warm, layout) = try await fleet.pull("\(image.repository)@\(image.rootDigest)", through: replica.index)
            try #require(warm.succeeded, "\(warm.summary)\n\(fleet.logTails())")
            try PullThroughTests.expectLayout(layout, holds: image, "pull through replica \(replica.index)")
        }
        let upstream = await fleet.upstreamRequests(since: mark)
        #expect(upstream.isEmpty, "replicas 1… went upstream for what replica 0 cached:\n\(PullThroughLog.describe(upstream))")
    }
}
