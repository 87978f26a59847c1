import ContentStore
import Logging
import MetadataIndex
@testable import Mirror
import OCI
import PostgresIndex
import Testing

extension PolicyFixture {
    /// Another replica: its own `PullThroughRegistry` and index handle on the same files,
    /// upstream and clock, as fleet replicas share one store and one index; with `fleet`, a
    /// replica that knows it is one (its leases in `fleet.leases`).
    func replica(fleet: FleetMember? = nil) throws -> PullThroughRegistry {
        let local = LocalRegistry(store: try FileSystemStore(root: dir.path), index: try SQLiteMetadataStore(path: dir.path + "/index.sqlite"))
        return PullThroughRegistry(local: local, upstreams: [upstream], policies: [upstream.name: policy], clock: clock, fleet: fleet,
                                   logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
    }

    /// A fleet member whose leases are in `leases`; it streams nothing from peers here.
    static func member(_ replica: String, _ leases: any FillLeaseStore) -> FleetMember {
        FleetMember(replica: replica, peerURL: "http://127.0.0.1:1", secret: Array("a fleet secret of some length".utf8), leases: leases,
                    peerWait: .seconds(30)) { digest throws(StoreError) in throw StoreError(.io, "no spool for \(digest) in this test") }
    }
}

/// Tags in a fleet (issue 12 item 5), in process: two replicas on one index, one fake upstream.
@Suite("Fleet-wide tag revalidation")
struct TagClaimTests {
    @Test("an expired tag is revalidated by one replica; the other serves the row meanwhile, then the moved digest")
    func oneReplicaRevalidates() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let other = try f.replica()
        let old = f.putImage(in: "lib/app", tag: "1", layer: "a").manifest
        _ = try await f.tag("lib/app", "1")
        let moved = f.putImage(in: "lib/app", tag: "1", layer: "b").manifest
        f.clock.advance(by: .seconds(300))

        f.upstream.hold(.manifestHead)
        async let first = f.tag("lib/app", "1")
        #expect(await f.upstream.calls.wait("manifestHead", reaches: 2))
        // Replica 0 holds the claim, its HEAD in flight: the other answers from the row at once.
        // (Were it to ask the upstream too, its HEAD would wait for the hold: released after 5 s.)
        let meanwhile = try await withThrowingTaskGroup(of: ManifestContent?.self) { group in
            group.addTask { try await other.manifest(try f.key("lib/app"), .tag(try Tag(parsing: "1"))) }
            group.addTask {
                try? await Task.sleep(for: .seconds(5))
                f.upstream.release(.manifestHead)
                return nil
            }
            defer { group.cancelAll() }
            while let next = try await group.next() { if let content = next { return content } }
            throw CancellationError()
        }
        #expect(meanwhile.digest == old && meanwhile.cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 2, "the other replica asked the upstream too")
        f.upstream.release(.manifestHead)
        #expect(try await first.digest == moved)

        let after = try await other.manifest(try f.key("lib/app"), .tag(try Tag(parsing: "1")))
        #expect(after.digest == moved && after.cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 2 && f.upstream.calls["manifestGet"] == 2, "one HEAD and one GET for the move, for both")
    }

    @Test("a claimer whose upstream fails gives the claim back: the next request, on any replica, asks again")
    func failedClaimIsReleased() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let other = try f.replica()
        let image = f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.upstream.fail(.manifestHead, with: .unavailable)
        f.clock.advance(by: .seconds(300))
        #expect(try await f.tag("lib/app", "1").cacheResult == .stale)
        let again = try await other.manifest(try f.key("lib/app"), .tag(try Tag(parsing: "1")))
        #expect(again.digest == image.manifest && again.cacheResult == .stale && again.warning?.hasPrefix("110") == true)
        #expect(f.upstream.calls["manifestHead"] == 3)

        f.upstream.fail(.manifestHead, with: nil)
        #expect(try await other.manifest(try f.key("lib/app"), .tag(try Tag(parsing: "1"))).cacheResult == .revalidated)
        #expect(try await f.tag("lib/app", "1").cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 4)
    }

    @Test("a claimer that never finishes holds the tag for 30 s at most; the watch list does not wait for it")
    func abandonedClaimExpires() async throws {
        let f = try PolicyFixture()
        defer { f.dir.remove() }
        let image = f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.clock.advance(by: .seconds(300))
        let key = try f.key("lib/app"), tag = try Tag(parsing: "1")
        // A replica claims, then dies before it asks.
        func abandonClaim() async throws {
            let row = try #require(try await f.registry.index.tag(key, tag))
            #expect(try await f.registry.index.claimTagRevalidation(key, tag, observedCheckedAt: row.checkedAt, checkedAt: f.clock.unixSeconds - 300 + 30))
        }
        try await abandonClaim()
        f.clock.advance(by: .seconds(29))
        #expect(try await f.tag("lib/app", "1").cacheResult == .hit)
        #expect(f.upstream.calls["manifestHead"] == 1)
        f.clock.advance(by: .seconds(1))
        #expect(try await f.tag("lib/app", "1").cacheResult == .revalidated)
        #expect(f.upstream.calls["manifestHead"] == 2)

        f.clock.advance(by: .seconds(300))
        try await abandonClaim()
        #expect(try await f.registry.revalidate(key, tag).digest == image.manifest, "the watch list asks regardless")
        #expect(f.upstream.calls["manifestHead"] == 3)
    }

    @Test("the claim's hold: the TTL when shorter than 30 s")
    func holdIsBoundedByTheTTL() async throws {
        var policy = UpstreamPolicy()
        policy.tagTTL = .seconds(5)
        let f = try PolicyFixture(policy: policy)
        defer { f.dir.remove() }
        f.putImage(in: "lib/app", tag: "1", layer: "a")
        _ = try await f.tag("lib/app", "1")
        f.clock.advance(by: .seconds(5))
        let key = try f.key("lib/app"), tag = try Tag(parsing: "1")
        let row = try #require(try await f.registry.index.tag(key, tag))
        let claim = try await f.registry.claimRevalidation(key, tag, row, ttl: policy.tagTTL)
        guard case .won(let observed, let claimed) = claim else { Issue.record("no claim: \(claim)"); return }
        #expect(observed == row.checkedAt && claimed == f.clock.unixSeconds, "a 5 s TTL holds the claim 5 s")
        let lost = try await f.replica().claimRevalidation(key, tag, row, ttl: policy.tagTTL)
        guard case .lost = lost else { Issue.record("a second claim on the same row: \(lost)"); return }
    }

    @Test("a tag no replica has cached: one replica of a fleet fetches it, the other serves its row; a failed fetch lets the other ask at once")
    func firstFetchIsShared() async throws {
        try await withPostgres { server in
            try await server.createDatabase("tags")
            let leases = PostgresMetadataStore(try PostgresIndexSettings(dsn: server.dsn(database: "tags")))
            let f = try PolicyFixture()
            defer { f.dir.remove() }
            let a = try f.replica(fleet: PolicyFixture.member("a", leases)), b = try f.replica(fleet: PolicyFixture.member("b", leases))
            let image = f.putImage(in: "lib/app", tag: "1", layer: "a")
            let key = try f.key("lib/app"), tag = try Tag(parsing: "1")

            // Replica a's HEAD is held: b, asked meanwhile, waits for a's row instead of asking.
            f.upstream.hold(.manifestHead)
            let first = Task { try await a.manifest(key, .tag(tag)) }
            #expect(await f.upstream.calls.wait("manifestHead", reaches: 1))
            let second = Task { try await b.manifest(key, .tag(tag)) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(f.upstream.calls["manifestHead"] == 1, "the other replica asked the upstream too")
            f.upstream.release(.manifestHead)
            let winner = try await first.value, waiter = try await second.value
            #expect(winner.digest == image.manifest && winner.cacheResult == .miss)
            #expect(waiter.digest == image.manifest && waiter.cacheResult == .join)
            #expect(f.upstream.calls["manifestHead"] == 1 && f.upstream.calls["manifestGet"] == 1)
            #expect(try await leases.leaseHolder(.tagFetch(key, tag)) == nil, "the lease is let go")

            // A first fetch that fails writes no row: the waiting replica asks itself, at once
            // (when the lease is let go, not when it would run out 15 s later).
            let absent = try Tag(parsing: "absent")
            f.upstream.hold(.manifestHead)
            let failing = Task { try await a.manifest(key, .tag(absent)) }
            #expect(await f.upstream.calls.wait("manifestHead", reaches: 2))
            let waiting = Task { try await b.manifest(key, .tag(absent)) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(f.upstream.calls["manifestHead"] == 2)
            let released = ContinuousClock.now
            f.upstream.release(.manifestHead)
            for task in [failing, waiting] {
                guard case .failure(let error as MirrorError) = await task.result else { Issue.record("a request for an absent tag did not fail"); continue }
                #expect(error.code == .manifestUnknown, "\(error)")
            }
            #expect(ContinuousClock.now - released < .seconds(5))
            #expect(f.upstream.calls["manifestHead"] == 3, "the waiting replica asked for itself once the fetch failed")
            await leases.close()
        }
    }
}
