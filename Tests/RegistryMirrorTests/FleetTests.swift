import Foundation
import MetadataIndex
import Mirror
import OCI
import PostgresIndex
import PostgresTestServer
import RegistryMirror
import Testing

/// The fleet's parts that need no replicas running: peer tokens, `fleet.*` keys, and the lease
/// table on a real PostgreSQL.
@Suite struct FleetTokenTests {
    let secret = Array("a fleet secret of some length".utf8)
    let path = "/fleet/v1/blobs/sha256:" + String(repeating: "ab", count: 32)

    @Test func aTokenOpensItsPathForItsLifetimeOnly() {
        let header = FleetToken.header(secret: secret, method: "GET", path: path, now: 1000)
        #expect(FleetToken.verify(header, secret: secret, method: "GET", path: path, now: 1000))
        #expect(FleetToken.verify(header, secret: secret, method: "GET", path: path, now: 1060))
        #expect(!FleetToken.verify(header, secret: secret, method: "GET", path: path, now: 1061), "expired")
        #expect(!FleetToken.verify(header, secret: secret, method: "GET", path: path + "0", now: 1000), "another path")
        #expect(!FleetToken.verify(header, secret: secret, method: "HEAD", path: path, now: 1000), "another method")
        #expect(!FleetToken.verify(header, secret: Array("another secret of some length".utf8), method: "GET", path: path, now: 1000))
        #expect(!FleetToken.verify(header, secret: [], method: "GET", path: path, now: 1000), "no secret opens nothing")
    }

    @Test func malformedTokensAreRefused() {
        let good = FleetToken.header(secret: secret, method: "GET", path: path, now: 1000)
        let mac = String(good.split(separator: ".")[1])
        for bad in [nil, "", "Fleet", "Fleet ", "Bearer \(good.dropFirst(6))", "Fleet 1060", "Fleet 1060.", "Fleet x.\(mac)",
                    "Fleet 1060.\(mac.uppercased())", "Fleet 1060.\(mac.dropLast())", "Fleet 99999999999999.\(mac)",
                    "Fleet 1060.\(String(repeating: "g", count: 64))", "fleet \(good.dropFirst(6))"] {
            #expect(!FleetToken.verify(bad, secret: secret, method: "GET", path: path, now: 1000), "\(bad ?? "nil")")
        }
        // An expiry moved forward (a replayed token stretched) no longer matches its MAC.
        #expect(!FleetToken.verify("Fleet 1100.\(mac)", secret: secret, method: "GET", path: path, now: 1000))
        // A far-future expiry is refused even with a valid MAC for it.
        let far = FleetToken.header(secret: secret, method: "GET", path: path, now: 1000, lifetime: 3600)
        #expect(!FleetToken.verify(far, secret: secret, method: "GET", path: path, now: 1000))
    }
}

@Suite struct FleetConfigurationTests {
    func load(_ yaml: String, environment: [String: String]) throws -> MirrorConfiguration {
        try RepositoryAccessConfigurationTests.load(yaml, environment: environment)
    }

    func problems(_ yaml: String, _ environment: [String: String]) -> [String] {
        RepositoryAccessConfigurationTests.problems(yaml, environment: environment)
    }

    static let shared = """
        storage:
          backend: s3
          s3: {endpoint: "http://127.0.0.1:9000", bucket: mirror, path_style: true}
        index:
          backend: postgres
          postgres: {dsn: "postgres://mirror@127.0.0.1/mirror"}

        """
    static let keys = ["AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"]

    @Test func aFleetReplicaReadsItsKeys() throws {
        let config = try load(Self.shared + """
            fleet:
              replica_id: mirror-a
              listen: 0.0.0.0:7001
              advertise: http://10.0.0.7:7001
              secret_env: MY_FLEET_KEY
              lease_ttl: 9s
              peer_wait: 20s
            """, environment: Self.keys.merging(["MY_FLEET_KEY": "0123456789abcdef0123"]) { a, _ in a })
        let fleet = try #require(config.serveSettings.fleet)
        #expect(fleet.replicaID == "mirror-a" && fleet.port == 7001 && fleet.advertise == "http://10.0.0.7:7001")
        #expect(fleet.secret == Array("0123456789abcdef0123".utf8))
        #expect(fleet.leaseTTL == .seconds(9) && fleet.peerWait == .seconds(20))
        #expect(try load(Self.shared, environment: Self.keys).fleet == nil, "no fleet key: one node")
    }

    @Test func aFleetNeedsTheSharedStoreAndIndexAndASecret() throws {
        let secret = ["REGISTRY_MIRROR_FLEET_SECRET": "0123456789abcdef0123"]
        #expect(problems("fleet: {replica_id: a}\n", secret).contains { $0.contains("storage.backend: s3 and index.backend: postgres") })
        #expect(problems(Self.shared + "fleet: {replica_id: a}\n", Self.keys).contains { $0.contains("no secret") })
        #expect(problems(Self.shared + "fleet: {replica_id: a}\n", Self.keys.merging(["REGISTRY_MIRROR_FLEET_SECRET": "short"]) { a, _ in a })
            .contains { $0.contains("at least 16 bytes") })
        let env = Self.keys.merging(secret) { a, _ in a }
        #expect(problems(Self.shared + "fleet: {advertise: \"10.0.0.7:5001\"}\n", env).contains { $0.hasPrefix("fleet.advertise") })
        #expect(problems(Self.shared + "fleet: {replica_id: \"a/b\"}\n", env).contains { $0.hasPrefix("fleet.replica_id") })
        #expect(problems(Self.shared + "fleet: {lease_ttl: 0s}\n", env).contains { $0.hasPrefix("fleet.lease_ttl") })
        #expect(problems(Self.shared + "fleet: {listen: 0.0.0.0:5000}\n", env).contains { $0.hasPrefix("fleet.listen") })
        #expect(problems(Self.shared + "fleet: {replica_id: a}\n", env).isEmpty)
    }
}

@Suite(.serialized) struct FillLeaseStoreTests {
    @Test("one replica of many wins a lease; it renews, releases, and an expired lease is taken over")
    func leasesOnPostgreSQL() async throws {
        try await withPostgres { server in
            try await server.createDatabase("leases")
            let settings = try PostgresIndexSettings(dsn: server.dsn(database: "leases"))
            let replicas = (0..<5).map { _ in PostgresMetadataStore(settings) }
            let digest = DigestHasher.digest(of: Array("a layer".utf8))
            func holder(_ i: Int) -> FillLeaseHolder { FillLeaseHolder(owner: "r\(i)/n", peerURL: "http://10.0.0.\(i):5001", repository: "docker.io/library/x") }

            // Five replicas miss the same blob at once: exactly one downloads it.
            let claims = try await withThrowingTaskGroup(of: (Int, FillLeaseClaim).self) { group in
                for (i, store) in replicas.enumerated() {
                    group.addTask { (i, try await store.acquireFillLease(digest, holder: holder(i), ttl: .seconds(30))) }
                }
                return try await group.reduce(into: [(Int, FillLeaseClaim)]()) { $0.append($1) }
            }
            let winners = claims.filter { $0.1 == .acquired }.map(\.0)
            try #require(winners.count == 1, "\(claims)")
            let owner = winners[0]
            for (i, claim) in claims where i != owner { #expect(claim == .heldBy(holder(owner)), "replica \(i) sees the holder") }
            #expect(try await replicas[0].fillLeaseHolder(digest) == holder(owner))
            #expect(try await replicas[0].liveFillLeases().map(\.digest) == [digest])

            // Releasing needs the owner: another replica's release leaves it.
            let other = (owner + 1) % replicas.count
            try await replicas[other].releaseFillLease(digest, owner: holder(other).owner)
            #expect(try await replicas[other].acquireFillLease(digest, holder: holder(other), ttl: .seconds(30)) == .heldBy(holder(owner)))
            try await replicas[owner].releaseFillLease(digest, owner: holder(owner).owner)
            #expect(try await replicas[other].acquireFillLease(digest, holder: holder(other), ttl: .seconds(1)) == .acquired)

            // A lease not renewed runs out on the database's clock and is taken over; a renewed one is not.
            let renewed = DigestHasher.digest(of: Array("another layer".utf8))
            #expect(try await replicas[owner].acquireFillLease(renewed, holder: holder(owner), ttl: .seconds(1)) == .acquired)
            try await Task.sleep(for: .milliseconds(600))
            try await replicas[owner].renewFillLeases([renewed], owner: holder(owner).owner, ttl: .seconds(30))
            try await Task.sleep(for: .milliseconds(700))
            #expect(try await replicas[other].acquireFillLease(digest, holder: holder(owner), ttl: .seconds(30)) == .acquired,
                    "the first lease ran out and is taken over")
            #expect(try await replicas[other].acquireFillLease(renewed, holder: holder(other), ttl: .seconds(30)) == .heldBy(holder(owner)))

            // Heartbeats list the live replicas.
            for (i, store) in replicas.enumerated() { try await store.heartbeat(replica: "r\(i)", owner: holder(i).owner, peerURL: holder(i).peerURL) }
            #expect(try await replicas[0].replicas(within: .seconds(30)).map(\.replica) == ["r0", "r1", "r2", "r3", "r4"])
            for store in replicas { await store.close() }
        }
    }

    @Test("a work lease (a tag's first fetch, a watched image) is won once, and never meets a blob's lease")
    func workLeasesOnPostgreSQL() async throws {
        try await withPostgres { server in
            try await server.createDatabase("work")
            let settings = try PostgresIndexSettings(dsn: server.dsn(database: "work"))
            let replicas = (0..<5).map { _ in PostgresMetadataStore(settings) }
            func holder(_ i: Int) -> FillLeaseHolder { FillLeaseHolder(owner: "r\(i)/n", peerURL: "http://10.0.0.\(i):5001", repository: "docker.io/library/x") }
            let repository = RepositoryKey(upstream: "docker.io", name: try RepositoryName(parsing: "library/x"))
            let key = FleetWorkKey.tagFetch(repository, try Tag(parsing: "latest"))
            let claims = try await withThrowingTaskGroup(of: (Int, FillLeaseClaim).self) { group in
                for (i, store) in replicas.enumerated() {
                    group.addTask { (i, try await store.acquireLease(key, holder: holder(i), ttl: .seconds(30))) }
                }
                return try await group.reduce(into: [(Int, FillLeaseClaim)]()) { $0.append($1) }
            }
            let winners = claims.filter { $0.1 == .acquired }.map(\.0)
            try #require(winners.count == 1, "\(claims)")
            let owner = winners[0], other = (winners[0] + 1) % replicas.count
            for (i, claim) in claims where i != owner { #expect(claim == .heldBy(holder(owner)), "replica \(i) sees the holder") }
            #expect(try await replicas[other].leaseHolder(key) == holder(owner))
            // Not a blob's lease: the blob leases' list and a digest's claim do not see it.
            #expect(try await replicas[0].liveFillLeases().isEmpty)
            let digest = DigestHasher.digest(of: Array("a layer".utf8))
            #expect(try await replicas[other].acquireFillLease(digest, holder: holder(other), ttl: .seconds(30)) == .acquired)
            #expect(try await replicas[0].liveFillLeases().map(\.digest) == [digest])
            #expect(key.description.contains(" ") && FleetWorkKey.watch("x:1 all").description != key.description)

            // Let go by its owner only; then another wins it. Its own claim again renews it.
            try await replicas[other].releaseLease(key, owner: holder(other).owner)
            #expect(try await replicas[other].leaseHolder(key) == holder(owner))
            try await replicas[owner].releaseLease(key, owner: holder(owner).owner)
            #expect(try await replicas[other].leaseHolder(key) == nil)
            #expect(try await replicas[other].acquireLease(key, holder: holder(other), ttl: .seconds(1)) == .acquired)
            #expect(try await replicas[other].acquireLease(key, holder: holder(other), ttl: .seconds(1)) == .acquired)
            #expect(try await replicas[owner].acquireLease(key, holder: holder(owner), ttl: .seconds(1)) == .heldBy(holder(other)))
            // Its time runs out on the database's clock: taken over.
            try await Task.sleep(for: .milliseconds(1300))
            #expect(try await replicas[owner].leaseHolder(key) == nil)
            #expect(try await replicas[owner].acquireLease(key, holder: holder(owner), ttl: .seconds(30)) == .acquired)
            #expect(try await replicas[other].fillLeaseHolder(digest) == holder(other), "the blob's lease is untouched")
            for store in replicas { await store.close() }
        }
    }
}
