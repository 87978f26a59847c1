import Foundation
import Mirror
import RegistryMirror
import Testing
@testable import Upstream

/// The down/probe state machine, driven with explicit instants: no I/O, no sleeps.
@Suite struct UpstreamAvailabilityTests {
    let t0 = ContinuousClock.now

    func at(_ seconds: Double) -> ContinuousClock.Instant { t0 + .milliseconds(Int64(seconds * 1000)) }

    @Test func failuresInARowMarkItDownAndAnAnswerResetsTheCount() {
        var a = UpstreamAvailability(downAfter: 3)
        #expect(a.admit(now: at(0)) == .go)
        #expect(a.record(.failed("refused"), probe: false, now: at(0)) == nil)
        #expect(a.record(.failed("refused"), probe: false, now: at(0.1)) == nil)
        // An answer (any status) in between: the count starts again.
        #expect(a.record(.answered, probe: false, now: at(0.2)) == nil)
        #expect(a.record(.failed("refused"), probe: false, now: at(0.3)) == nil)
        #expect(a.record(.failed("refused"), probe: false, now: at(0.4)) == nil)
        #expect(!a.isDown)
        #expect(a.record(.failed("timed out"), probe: false, now: at(0.5)) == .markedDown(failures: 3, nextCheck: .seconds(1)))
        #expect(a.isDown)
        #expect(a.lastFailure == "timed out")
        #expect(a.admit(now: at(0.6)) == .refused(nextCheck: .milliseconds(900)))
    }

    @Test func oneProbeAtATimeAndTheWaitDoublesUpToTheCap() {
        var a = UpstreamAvailability(downAfter: 1, maxInterval: .seconds(5))
        #expect(a.record(.failed("refused"), probe: false, now: at(0)) == .markedDown(failures: 1, nextCheck: .seconds(1)))
        #expect(a.admit(now: at(0.99)) == .refused(nextCheck: .milliseconds(10)))
        // After 1 s: exactly one probe; everyone else is still refused while it runs.
        #expect(a.admit(now: at(1)) == .probe)
        #expect(a.admit(now: at(1.1)) == .refused(nextCheck: .zero))
        #expect(a.admit(now: at(30)) == .refused(nextCheck: .zero))
        #expect(a.record(.failed("refused"), probe: true, now: at(1.2)) == .stillDown(nextCheck: .seconds(2)))
        #expect(a.admit(now: at(3.1)) == .refused(nextCheck: .milliseconds(100)))
        #expect(a.admit(now: at(3.2)) == .probe)
        #expect(a.record(.failed("refused"), probe: true, now: at(3.2)) == .stillDown(nextCheck: .seconds(4)))
        #expect(a.admit(now: at(7.2)) == .probe)
        // 8 s would pass the 5 s cap.
        #expect(a.record(.failed("refused"), probe: true, now: at(7.2)) == .stillDown(nextCheck: .seconds(5)))
        #expect(a.admit(now: at(12.2)) == .probe)
        #expect(a.record(.failed("refused"), probe: true, now: at(12.2)) == .stillDown(nextCheck: .seconds(5)))
        // The probe that gets an answer brings it back; the next failure counts from zero.
        #expect(a.admit(now: at(17.2)) == .probe)
        #expect(a.record(.answered, probe: true, now: at(17.3)) == .back)
        #expect(!a.isDown)
        #expect(a.admit(now: at(17.4)) == .go)
        #expect(a.record(.failed("refused"), probe: false, now: at(18)) == .markedDown(failures: 1, nextCheck: .seconds(1)))
    }

    @Test func aCancelledProbeLetsTheNextRequestProbe() {
        var a = UpstreamAvailability(downAfter: 1)
        _ = a.record(.failed("refused"), probe: false, now: at(0))
        #expect(a.admit(now: at(1)) == .probe)
        #expect(a.record(.abandoned, probe: true, now: at(1.5)) == nil)
        #expect(a.admit(now: at(1.5)) == .probe)
    }

    @Test func failuresOfRequestsSentBeforeTheMarkChangeNothing() {
        var a = UpstreamAvailability(downAfter: 2)
        _ = a.record(.failed("refused"), probe: false, now: at(0))
        #expect(a.record(.failed("refused"), probe: false, now: at(0)) == .markedDown(failures: 2, nextCheck: .seconds(1)))
        // Stragglers let through before it was marked down.
        #expect(a.record(.failed("refused"), probe: false, now: at(0.5)) == nil)
        #expect(a.admit(now: at(0.9)) == .refused(nextCheck: .milliseconds(100)))
        #expect(a.admit(now: at(1)) == .probe)
        // A straggler's failure is not the probe's verdict.
        #expect(a.record(.failed("refused"), probe: false, now: at(1.1)) == nil)
        #expect(a.admit(now: at(1.2)) == .refused(nextCheck: .zero))
        // But any answer is proof of life.
        #expect(a.record(.answered, probe: false, now: at(1.3)) == .back)
    }

    @Test func zeroNeverMarksItDown() {
        var a = UpstreamAvailability(downAfter: 0)
        for i in 0..<100 { #expect(a.record(.failed("refused"), probe: false, now: at(Double(i))) == nil) }
        #expect(a.admit(now: at(100)) == .go)
    }

    @Test(arguments: [("76;w=21600", 76), ("0;w=21600", 0), (" 12 ", 12), ("100", 100), ("many", nil)] as [(String, Int?)])
    func rateLimitRemaining(_ value: String, _ expected: Int?) {
        let head = ResponseHead(status: 200, headers: [("ratelimit-limit", "100;w=21600"), ("ratelimit-remaining", value)])
        #expect(head.rateLimitRemaining == expected)
        #expect(ResponseHead(status: 200, headers: []).rateLimitRemaining == nil)
    }

    @Test func configurationKeysReachTheUpstreamAndPolicy() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("availability-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("mirror.yaml")
        try Data("""
            upstreams:
              - url: https://registry-1.docker.io
                down_after: 5
                down_max: 2m
                rate_limit_reserve: 25
              - url: https://ghcr.io

            """.utf8).write(to: file)
        let settings = try MirrorConfiguration.load(file: file.path, environment: [:]).serveSettings
        #expect(settings.upstreams[0].downAfter == 5)
        #expect(settings.upstreams[0].downMax == .seconds(120))
        #expect(settings.policies["docker.io"]?.rateLimitReserve == 25)
        #expect(settings.upstreams[1].downAfter == 3)
        #expect(settings.upstreams[1].downMax == .seconds(60))
        #expect(settings.policies["ghcr.io"]?.rateLimitReserve == 10)

        try Data("upstreams:\n  - url: https://ghcr.io\n    down_after: -1\n    down_max: 0s\n    rate_limit_reserve: x\n".utf8).write(to: file)
        #expect {
            _ = try MirrorConfiguration.load(file: file.path, environment: [:])
        } throws: { error in
            let problems = (error as? ConfigurationError)?.problems ?? []
            return ["down_after", "down_max", "rate_limit_reserve"].allSatisfy { key in problems.contains { $0.hasPrefix("upstreams[0].\(key):") } }
        }
    }
}
