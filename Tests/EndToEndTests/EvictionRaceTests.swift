import Foundation
import OCI
import Synchronization
import Testing

/// Eviction racing warm requests (issue 10, item 2): a blob stat'ed, then evicted, then
/// opened after its head went out was answered 200 and cut. Now a blob is open (and leased)
/// before its head is sent, and one that vanished first is a miss, fetched again.
///
/// Each test runs the race for `REGISTRY_MIRROR_RACE_SECONDS` (30 by default): raw GETs of
/// every blob and skopeo pulls, against a real docker-registry upstream, while eviction
/// empties the cache as fast as it can.
@Suite("eviction racing requests", .serialized)
struct EvictionRaceTests {
    static var seconds: Int { ProcessInfo.processInfo.environment["REGISTRY_MIRROR_RACE_SECONDS"].flatMap(Int.init) ?? 30 }
    static let repository = "race/app"

    @Test("in-process eviction (max_size 1KiB every 100 ms) cuts no body and fails no pull")
    func inProcessEviction() async throws {
        try await PullThroughScope.run("eviction race in process") { scope in
            let (registry, image) = try await Self.upstream(scope)
            let config = try CacheImages.config(in: scope, maxSize: "1KiB", interval: "100ms")
            let mirror = try await scope.mirror(["--upstream", "http://\(registry.host)", "--config", config.path])
            let result = try await Self.race(scope, mirror: mirror, image: image)
            Self.expectClean(result, mirror: mirror)
        }
    }

    @Test("gc --max-size 1 looping in another process cuts no body and fails no pull")
    func outOfProcessEviction() async throws {
        try await PullThroughScope.run("eviction race out of process") { scope in
            let (registry, image) = try await Self.upstream(scope)
            let data = scope.unique("mirror").appendingPathComponent("data")
            let mirror = try await scope.mirrorOn(data, ["--upstream", "http://\(registry.host)"])
            let stop = Flag()
            let collector = Task {
                var runs = 0
                var failures: [String] = []
                while !stop.isSet {
                    let gc = try await MirrorCLI.run(["gc", "--max-size", "1", "--data-dir", data.path])
                    runs += 1
                    if !gc.succeeded { failures.append(gc.summary) }
                }
                return (runs, failures)
            }
            let result = try await Self.race(scope, mirror: mirror, image: image)
            stop.set()
            let (runs, failures) = try await collector.value
            #expect(runs > 3, "gc ran only \(runs) times during the race")
            #expect(failures.isEmpty, "gc failed: \(failures.prefix(3))")
            Self.expectClean(result, mirror: mirror)
        }
    }

    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        var isSet: Bool { value.load(ordering: .relaxed) }
        func set() { value.store(true, ordering: .relaxed) }
    }

    struct Outcome: Sendable {
        var gets = 0
        var cut: [String] = []
        var pulls = 0
        var failedPulls: [String] = []
    }

    /// The upstream with the image pushed, and its blobs as the upstream holds them (skopeo
    /// may rewrite what it pushes).
    static func upstream(_ scope: PullThroughScope) async throws -> (DistributionRegistry, RaceImage) {
        let registry = try await scope.registry()
        let image = try scope.bigImage(seed: 4242, layerSizes: [2 << 20, 256 << 10, 40 << 10])
        try await scope.push(image, to: registry.host, repository)
        let pushed = try PullThroughHTTP.upstreamImage(port: registry.port, repository, tag: image.tag)
        var blobs: [(digest: Digest, size: Int)] = []
        for digest in pushed.blobs {
            let blob = try RawHTTP.get(port: registry.port, path: "/v2/\(repository)/blobs/\(digest)")
            guard blob.status == 200 else { throw E2EError("upstream blob \(digest): \(blob)") }
            blobs.append((digest, blob.body.count))
        }
        return (registry, RaceImage(tag: image.tag, blobs: blobs))
    }

    struct RaceImage: Sendable {
        let tag: String
        let blobs: [(digest: Digest, size: Int)]
    }

    /// Four clients GET every blob in turn, and one pulls the image with skopeo, until time is up.
    static func race(_ scope: PullThroughScope, mirror: MirrorProcess, image: RaceImage) async throws -> Outcome {
        let blobs = image.blobs
        let deadline = ContinuousClock.now + .seconds(seconds)
        let outcome = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for client in 0..<4 {
                group.addTask {
                    var i = client
                    while ContinuousClock.now < deadline {
                        let blob = blobs[i % blobs.count]
                        i += 1
                        let path = "/v2/\(repository)/blobs/\(blob.digest)"
                        let response = try await FaultRequest.start(port: mirror.port, path: path, timeout: 30).result(timeout: .seconds(60))
                        let good = response.isCompleteOK && response.body.count == blob.size && response.body.sha256 == blob.digest
                        outcome.withLock {
                            $0.gets += 1
                            if !good { $0.cut.append("\(path): \(response)") }
                        }
                    }
                }
            }
            group.addTask {
                while ContinuousClock.now < deadline {
                    let (result, _) = try await scope.pull("\(mirror.host)/\(repository):\(image.tag)", all: false, timeout: .seconds(60))
                    outcome.withLock {
                        $0.pulls += 1
                        if !result.succeeded { $0.failedPulls.append(result.summary) }
                    }
                }
            }
            try await group.waitForAll()
        }
        return outcome.withLock { $0 }
    }

    final class Tally: Sendable {
        private let state = Mutex(Outcome())
        func withLock<T: Sendable>(_ body: (inout Outcome) -> T) -> T { state.withLock { body(&$0) } }
    }

    static func expectClean(_ outcome: Outcome, mirror: MirrorProcess, sourceLocation: SourceLocation = #_sourceLocation) {
        Progress.step("eviction race: \(outcome.gets) GETs, \(outcome.pulls) pulls, \(outcome.cut.count) bad bodies, \(outcome.failedPulls.count) failed pulls")
        #expect(outcome.gets > 50, "only \(outcome.gets) GETs ran", sourceLocation: sourceLocation)
        #expect(outcome.pulls > 2, "only \(outcome.pulls) pulls ran", sourceLocation: sourceLocation)
        #expect(outcome.cut.isEmpty, "\(outcome.cut.count) of \(outcome.gets) GETs were not a complete, correct 200: \(outcome.cut.prefix(3))\n\(mirror.stderr.suffix(2000))",
                sourceLocation: sourceLocation)
        #expect(outcome.failedPulls.isEmpty, "\(outcome.failedPulls.count) of \(outcome.pulls) pulls failed: \(outcome.failedPulls.prefix(2))",
                sourceLocation: sourceLocation)
    }
}
