import ContentStore
import Logging
import MetadataIndex
@testable import Mirror
import OCI
import Testing

extension PolicyFixture {
    /// Another replica: its own `PullThroughRegistry` and index handle on the same files,
    /// upstream and clock, as fleet replicas share one store and one index.
    func replica() throws -> PullThroughRegistry {
        let local = LocalRegistry(store: try FileSystemStore(root: dir.path), index: try SQLiteMetadataStore(path: dir.path + "/index.sqlite"))
        return PullThroughRegistry(local: local, upstreams: [upstream], policies: [upstream.name: policy], clock: clock,
                                   logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
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
}
