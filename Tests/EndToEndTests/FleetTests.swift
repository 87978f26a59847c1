import Foundation
import OCI
import Synchronization
import Testing

/// Three replicas on one bucket and one PostgreSQL (issue 12), started by `FleetHarness`, one
/// fleet for every step: what one replica cached the others serve without the upstream; a tag
/// moved upstream is revalidated once for the fleet and every replica answers from one row;
/// PostgreSQL restarted under the replicas costs at most a clear 503, and they recover.
@Suite("a fleet of replicas on one S3 bucket and one PostgreSQL", .serialized)
struct FleetTests {
    // Long enough that the concurrent round and the checks after it fit in one TTL on a busy machine.
    static let tagTTL = 5

    @Test("filled once, served by all; one tag revalidation per TTL for the fleet; a PostgreSQL restart survived")
    func fleet() async throws {
        try await FleetHarness.run(replicas: 3, arguments: ["--tag-ttl", "\(Self.tagTTL)s"]) { fleet in
            try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/shared", tag: "v1")
            let shared = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/shared", tag: "v1")
            Progress.step("fleet: a blob filled through replica 0, served by 1 and 2")
            try await Self.expectServedFromTheFleet(fleet, shared, reference: "test/shared:v1")
            try await Self.expectReplicaControls(fleet, shared)
            Progress.step("fleet: a tag moved upstream")
            try await Self.expectOneRevalidationForTheFleet(fleet)
            Progress.step("fleet: PostgreSQL restarted under the replicas")
            try await Self.expectPostgresRestartSurvived(fleet, shared)
        }
    }

    @Test("with the fleet keys: a tag no replica cached is fetched once for the fleet; a watch list on every replica checks once per interval")
    func fleetWideFirstFetchAndWatch() async throws {
        let peers = try FleetLeaseTests.peerPorts(3)
        try await FleetHarness.run(replicas: 3, replicaEnvironment: FleetLeaseTests.fleetEnvironment(peerPorts: peers), startReplicas: false) { fleet in
            try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/watched", tag: "v1")
            let watched = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/watched", tag: "v1").rootDigest
            let config = fleet.scope.unique("watch").appendingPathExtension("yaml")
            try "watch:\n  interval: \(Self.watchInterval)s\n  images:\n    - {ref: test/watched:v1, platforms: all}\n"
                .write(to: config, atomically: true, encoding: .utf8)
            for replica in fleet.replicas { try await fleet.start(replica.index, extraArguments: ["--config", config.path]) }
            Progress.step("fleet: a tag no replica has cached, asked on every replica at once")
            try await Self.expectOneFirstFetchForTheFleet(fleet)
            Progress.step("fleet: the same watch list on every replica")
            try await Self.expectOneWatchCheckPerInterval(fleet, path: "/v2/test/watched/manifests/v1", digest: watched)
        }
    }

    static let watchInterval = 2

    /// Issue 12 item 5, a tag's first fetch: 12 simultaneous GETs of a tag the fleet has never
    /// cached, over 3 replicas, cost the upstream one manifest GET (after one HEAD), and every
    /// replica answers the same digest.
    static func expectOneFirstFetchForTheFleet(_ fleet: FleetHarness) async throws {
        let path = "/v2/test/cold/manifests/v1"
        try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/cold", tag: "v1")
        let digest = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/cold", tag: "v1").rootDigest
        let mark = await fleet.mark()
        for answer in await askAtOnce(fleet, path) {
            #expect(answer.status == 200 && answer.digest == digest.description,
                    "replica \(answer.replica) answered \(answer.status) \(answer.digest ?? "-"), not \(digest)")
        }
        let requests = await fleet.upstreamRequests(since: mark).filter { $0.path.hasPrefix("/v2/test/cold/manifests/") }
        let heads = requests.filter { $0.method == "HEAD" }, gets = requests.filter { $0.method == "GET" }
        #expect(gets.count == 1 && heads.count <= 1,
                "\(gets.count) manifest GETs and \(heads.count) HEADs upstream for the fleet, not 1 and at most 1:\n\(PullThroughLog.describe(requests))\n\(fleet.logTails(1500))")
    }

    /// GETs of a manifest, all at once: four on each replica, each on a thread of its own.
    static func askAtOnce(_ fleet: FleetHarness, _ path: String) async -> [(replica: Int, status: Int, digest: String?)] {
        let perReplica = 4
        let answers = Mutex<[(replica: Int, status: Int, digest: String?)]>([])
        await BadInputServer.onThreads(fleet.replicas.count * perReplica) { i in
            let replica = fleet.replicas[i % fleet.replicas.count]
            let response = try? PullThroughHTTP.manifest(port: replica.port, path)
            answers.withLock { $0.append((replica.index, response?.status ?? -1, response?.header("Docker-Content-Digest"))) }
        }
        return answers.withLock { $0 }
    }

    /// Issue 12 item 5, the watch list: three replicas watching one image with a 2 s interval
    /// send the upstream about one HEAD of its tag per interval, not three; every replica's
    /// status page shows the digest, those that skipped naming the replica that checked.
    static func expectOneWatchCheckPerInterval(_ fleet: FleetHarness, path: String, digest: Digest) async throws {
        func watchRow(_ replica: FleetReplica) throws -> String {
            let page = String(decoding: try RawHTTP.get(port: replica.port, path: "/").body, as: UTF8.self)
            guard let section = page.range(of: "<section id=\"watch\">") else { return "" }
            return String(page[section.lowerBound...].prefix { $0 != "\n" })
        }
        let shown = String(digest.description.prefix(19))
        try await waitUntil("every replica's watch list to show \(digest)", timeout: .seconds(20)) {
            try fleet.replicas.allSatisfy { try watchRow($0).contains(shown) }
        }
        let mark = await fleet.mark()
        let started = ContinuousClock.now
        let intervals = 5
        try await Task.sleep(for: .seconds(intervals * watchInterval))
        let heads = await fleet.upstreamManifestRequests(since: mark, method: "HEAD").filter { $0.path == path }
        let took = ContinuousClock.now - started
        Progress.step("fleet: \(heads.count) upstream HEADs of \(path) in \(took) with a \(watchInterval) s watch interval on 3 replicas")
        // At most one per interval, and one more for a check on the window's edge (15 without
        // the lease); at least some, though a loaded machine stretches the replicas' periods.
        #expect(heads.count >= intervals / 2 && heads.count <= intervals + 1,
                "\(heads.count) HEADs of the watched tag in \(intervals) intervals, not about \(intervals):\n\(PullThroughLog.describe(heads))")
        let rows = try fleet.replicas.map(watchRow)
        for (index, row) in rows.enumerated() { #expect(row.contains(shown), "replica \(index)'s watch list: \(row)") }
        #expect(rows.contains { $0.contains("(by replica-") }, "no replica says another checked for it:\n\(rows.joined(separator: "\n"))")
    }

    /// A cold pull through replica 0 fills the bucket; then pulls through every other replica
    /// go nowhere upstream and get the same bytes.
    static func expectServedFromTheFleet(_ fleet: FleetHarness, _ image: PullThroughUpstreamImage, reference: String) async throws {
        let (cold, coldLayout) = try await fleet.pull(reference, through: 0)
        try #require(cold.succeeded, "\(cold.summary)\n\(fleet.logTails())")
        try PullThroughTests.expectLayout(coldLayout, holds: image, "cold pull through replica 0")
        #expect(try await fleet.waitUntilPublished(image.allDigests), "the bucket lacks some of the image")
        #expect(try await fleet.bucket.pendingUploads().isEmpty, "an upload was left open")

        let mark = await fleet.mark()
        for replica in fleet.replicas.dropFirst() {
            let (warm, layout) = try await fleet.pull("\(image.repository)@\(image.rootDigest)", through: replica.index)
            try #require(warm.succeeded, "\(warm.summary)\n\(fleet.logTails())")
            try PullThroughTests.expectLayout(layout, holds: image, "pull through replica \(replica.index)")
        }
        let upstream = await fleet.upstreamRequests(since: mark)
        #expect(upstream.isEmpty, "replicas 1 and 2 went upstream for what replica 0 cached:\n\(PullThroughLog.describe(upstream))")
    }

    /// The harness's replica controls: a crash and a graceful restart keep port and data.
    static func expectReplicaControls(_ fleet: FleetHarness, _ image: PullThroughUpstreamImage) async throws {
        await fleet.kill(2)
        #expect(throws: (any Error).self) { try RawHTTP.get(port: fleet.replicas[2].port, path: "/healthz") }
        try await fleet.start(2)
        try await fleet.restart(1)
        let mark = await fleet.mark()
        for replica in fleet.replicas {
            let response = try PullThroughHTTP.manifest(port: replica.port, "/v2/\(image.repository)/manifests/\(image.rootDigest)")
            #expect(response.status == 200, "replica \(replica.index) after the restarts: \(response.status)")
        }
        #expect(await fleet.upstreamRequests(since: mark).isEmpty)
    }

    /// Issue 12 item 5: a tag moved upstream is seen by every replica after one TTL, with one
    /// upstream HEAD for the fleet however many replicas are asked at once.
    static func expectOneRevalidationForTheFleet(_ fleet: FleetHarness) async throws {
        let path = "/v2/test/tags/manifests/v1"
        try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/tags", tag: "v1")
        let old = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/tags", tag: "v1").rootDigest
        // Replica 0 fetches the tag; 1 and 2 find it in the shared row.
        var learned = ContinuousClock.now
        for replica in fleet.replicas {
            let response = try PullThroughHTTP.manifest(port: replica.port, path)
            #expect(response.status == 200 && response.header("Docker-Content-Digest") == old.description, "replica \(replica.index): \(response)")
            if replica.index == 0 { learned = ContinuousClock.now }
        }

        try await fleet.push(try fleet.scope.singleImage(seed: PullThroughTests.seed()), "test/tags", tag: "v1")
        let moved = try PullThroughHTTP.upstreamImage(port: fleet.upstream.port, "test/tags", tag: "v1").rootDigest
        #expect(moved != old)
        // checked_at is in whole seconds: one TTL and a second after the first fetch, it has expired.
        let expired = learned + .seconds(Self.tagTTL + 1)
        if ContinuousClock.now < expired { try await Task.sleep(until: expired) }

        let mark = await fleet.mark()
        for answer in await Self.askAtOnce(fleet, path) {
            #expect(answer.status == 200 && [old.description, moved.description].contains(answer.digest ?? ""),
                    "replica \(answer.replica) answered \(answer.status) \(answer.digest ?? "-") during the revalidation")
        }
        let heads = await fleet.upstreamManifestRequests(since: mark, method: "HEAD").filter { $0.path == path }
        #expect(heads.count == 1, "\(heads.count) upstream HEADs of \(path) for the fleet, not 1:\n\(PullThroughLog.describe(heads))\n\(fleet.logTails(1500))")
        let gets = await fleet.upstreamManifestRequests(since: mark, method: "GET")
        #expect(gets.map(\.path) == ["/v2/test/tags/manifests/\(moved)"], "the new manifest is fetched once:\n\(PullThroughLog.describe(gets))")

        // Now every replica answers the new digest, from the row, asking nobody.
        let after = await fleet.mark()
        for replica in fleet.replicas {
            let response = try PullThroughHTTP.manifest(port: replica.port, path)
            #expect(response.status == 200 && response.header("Docker-Content-Digest") == moved.description,
                    "replica \(replica.index) answers \(response.header("Docker-Content-Digest") ?? "\(response.status)"), not the moved tag's \(moved)")
        }
        let more = await fleet.upstreamRequests(since: after)
        #expect(more.isEmpty, "after the revalidation:\n\(PullThroughLog.describe(more))")
    }

    /// PostgreSQL stopped and started on its port under running replicas: cached content is
    /// served or refused with a clear 503 (never a 500 or a dropped connection), and every
    /// replica serves again, fills included, without a restart.
    static func expectPostgresRestartSurvived(_ fleet: FleetHarness, _ image: PullThroughUpstreamImage) async throws {
        let manifest = "/v2/\(image.repository)/manifests/\(image.rootDigest)"
        let blob = "/v2/\(image.repository)/blobs/\(try #require(image.layers.first))"
        try await fleet.postgres.halt()
        // Each waits out the index's 1 s connect timeout: all at once, a thread each.
        let paths = [manifest, blob, "/v2/test/tags/manifests/v1"]
        let down = Mutex<[String]>([])
        await BadInputServer.onThreads(fleet.replicas.count * paths.count) { i in
            let replica = fleet.replicas[i / paths.count], path = paths[i % paths.count]
            let response = try? RawHTTP.request("GET", port: replica.port, path: path, headers: [("Accept", PullThroughHTTP.manifestAccept)])
            let fine = response.map { $0.status == 200 || ($0.status == 503 && $0.bodyText.contains(#""code":"UNAVAILABLE""#)) } ?? false
            down.withLock { $0.append(fine ? "\(response!.status)" : "replica \(replica.index) GET \(path): \(response.map { "\($0.status) \($0.bodyText.prefix(300))" } ?? "no answer")") }
        }
        let answers = down.withLock { $0 }
        #expect(answers.allSatisfy { $0 == "200" || $0 == "503" }, "with PostgreSQL down, neither served nor a clear 503:\n\(answers.joined(separator: "\n"))")
        Progress.step("fleet: with PostgreSQL down, manifest, blob and tag GETs on each replica answered \(answers.sorted())")
        try await fleet.postgres.restart()
        let restarted = ContinuousClock.now
        for replica in fleet.replicas {
            var statuses: [Int] = []
            let deadline = ContinuousClock.now + .seconds(15)
            repeat {
                statuses = try [manifest, blob].map { try RawHTTP.request("GET", port: replica.port, path: $0, headers: [("Accept", PullThroughHTTP.manifestAccept)]).status }
                if statuses == [200, 200] { break }
                try await Task.sleep(for: .milliseconds(250))
            } while ContinuousClock.now < deadline
            #expect(statuses == [200, 200], "replica \(replica.index) did not recover from the PostgreSQL restart: \(statuses)\n\(replica.log.suffix(2000))")
        }
        Progress.step("fleet: every replica served again \(ContinuousClock.now - restarted) after PostgreSQL was back")
        // A fill after the restart writes to PostgreSQL again: the moved tag's blobs, cold.
        let (pulled, _) = try await fleet.pull("test/tags:v1", through: 2)
        #expect(pulled.succeeded, "a cold pull after the PostgreSQL restart: \(pulled.summary)\n\(fleet.replicas[2].log.suffix(2000))")
    }
}
