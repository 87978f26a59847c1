import Foundation
import Testing

/// Issue 10, item 4: wrong passwords against a mirror with client auth. A guesser is
/// throttled per address, and bcrypt never runs where it could stall other requests.
@Suite("Client auth under wrong passwords", .serialized)
struct ClientAuthTests {
    static let user = "ci"
    static let password = "s3cret-pull"
    static let connections = 32
    static let floodSeconds = 4

    static func basic(_ user: String, _ password: String) -> [(String, String)] {
        [("Authorization", "Basic " + Data("\(user):\(password)".utf8).base64EncodedString())]
    }

    /// An offline mirror whose htpasswd entry has bcrypt cost 10, as `htpasswd -B` writes
    /// it (tens of milliseconds a check); `environment` adds `REGISTRY_MIRROR_*` settings.
    static func withMirror(environment: [String: String] = [:], _ body: (MirrorProcess, TemporaryDirectory) async throws -> Void) async throws {
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-auth")
        defer { work.remove() }
        let hash = try #require(PullThroughBcrypt.libcrypt(password, cost: 10), "libcrypt.so.1 cannot make a bcrypt hash")
        let htpasswd = work.url.appendingPathComponent("htpasswd")
        try "\(user):\(hash)\n".write(to: htpasswd, atomically: true, encoding: .utf8)
        // Info level: a debug line per request would make the flood a test of the log file.
        let mirror = try await MirrorProcess.start(
            dataDirectory: work.url.appendingPathComponent("data"), logDirectory: work.url.appendingPathComponent("logs"),
            extraArguments: ["--offline", "--log-level", "info"],
            environment: environment.merging(["REGISTRY_MIRROR_AUTH_HTPASSWD_PATH": htpasswd.path]) { $1 })
        do {
            try await body(mirror, work)
            await mirror.stop()
        } catch {
            await mirror.stop()
            throw error
        }
    }

    /// What a flood did: /healthz latencies measured during it, and wrk's status counts.
    struct Flood {
        let healthz: [Duration]
        let statuses: [String: Int]
        /// The nearest-rank 99th percentile: with fewer than 100 probes, the slowest.
        var p99: Duration { healthz.sorted()[Int((Double(healthz.count) * 0.99).rounded(.up)) - 1] }
        var median: Duration { healthz.sorted()[healthz.count / 2] }
    }

    /// `connections` keep-alive connections sending a wrong password to `GET /v2/` for
    /// `floodSeconds`, while one client times `/healthz` back to back on its own connections.
    static func flood(_ mirror: MirrorProcess, work: TemporaryDirectory) async throws -> Flood {
        _ = try TestPaths.executable("wrk")
        let wrong = basic(user, "wrong")[0].1
        let script = work.url.appendingPathComponent("flood.lua")
        try """
            wrk.headers["Authorization"] = "\(wrong)"
            local threads = {}
            setup = function(thread) table.insert(threads, thread) end
            init = function() s401 = 0; s429 = 0; other = 0 end
            response = function(status)
              if status == 401 then s401 = s401 + 1 elseif status == 429 then s429 = s429 + 1 else other = other + 1 end
            end
            done = function()
              local a, b, c = 0, 0, 0
              for _, t in ipairs(threads) do a = a + t:get("s401"); b = b + t:get("s429"); c = c + t:get("other") end
              io.write(string.format("RESULT s401=%d s429=%d other=%d\\n", a, b, c))
            end

            """.write(to: script, atomically: true, encoding: .utf8)
        async let wrk = Command.run("wrk", ["-t", "2", "-c", String(connections), "-d", "\(floodSeconds)s", "--timeout", "30s",
                                            "-s", script.path, "http://\(mirror.host)/v2/"],
                                    timeout: .seconds(floodSeconds + 60))
        // Probes on a thread of their own: the blocking socket calls must not hold the
        // test's cooperative threads. They stop a little before wrk does.
        let port = mirror.port
        let healthz = await withCheckedContinuation { (done: CheckedContinuation<[Duration], Never>) in
            Thread {
                let clock = ContinuousClock()
                let end = clock.now + .seconds(floodSeconds) - .milliseconds(500)
                var samples: [Duration] = []
                while clock.now < end {
                    let start = clock.now
                    let ok = (try? RawHTTP.get(port: port, path: "/healthz"))?.status == 200
                    samples.append(ok ? clock.now - start : .seconds(15))
                }
                done.resume(returning: samples)
            }.start()
        }
        let result = try await wrk
        #expect(result.succeeded, "\(result.summary)")
        let statuses = try #require(LoadTests.wrkResult(result.stdout), "no RESULT line from wrk: \(result.summary)")
        let flood = Flood(healthz: healthz, statuses: statuses)
        Progress.step("auth flood: \(statuses); /healthz \(healthz.count) probes, median \(flood.median), p99 \(flood.p99), slowest \(healthz.max() ?? .zero)")
        return flood
    }

    @Test("past 10 wrong passwords an address gets 429 with Retry-After, the right password too")
    func wrongPasswordsAreThrottled() async throws {
        try await Self.withMirror { mirror, _ in
            for attempt in 1...10 {
                let wrong = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, "wrong-\(attempt)"))
                #expect(wrong.status == 401 && wrong.errorCodes == ["UNAUTHORIZED"], "attempt \(attempt): \(wrong)")
            }
            let unknown = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic("mallory", "guess"))
            #expect(unknown.status == 429 && unknown.errorCodes == ["TOOMANYREQUESTS"], "\(unknown)")
            let retryAfter = try #require(unknown.header("Retry-After").flatMap(Int.init), "\(unknown)")
            #expect((1...60).contains(retryAfter), "Retry-After: \(retryAfter)")
            // Else the guessing would go on, free, for any pair the mirror remembers.
            let right = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, Self.password))
            #expect(right.status == 429, "a throttled address got \(right)")
            #expect(try RawHTTP.get(port: mirror.port, path: "/healthz").status == 200)
            let anonymous = try RawHTTP.get(port: mirror.port, path: "/v2/")
            #expect(anonymous.status == 401, "the challenge still comes: \(anonymous)")
        }
    }

    @Test("a wrong-password flood from one address: 429s after the limit, /healthz p99 under 100 ms")
    func floodIsThrottled() async throws {
        try await Self.withMirror { mirror, work in
            let flood = try await Self.flood(mirror, work: work)
            #expect(flood.statuses["s429", default: 0] > 0, "no 429 in \(flood.statuses)")
            // 10 attempts, and one more earned back every 6 s; concurrent attempts cannot overdraw.
            #expect(flood.statuses["s401", default: 0] <= 11, "\(flood.statuses)")
            #expect(flood.healthz.count >= 20 && flood.p99 < .milliseconds(100), "/healthz p99 \(flood.p99) over \(flood.healthz.count) probes")
            let right = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, Self.password))
            #expect(right.status == 429, "\(right)")
        }
    }

    /// Not only wrong passwords: a header that is not Basic credentials at all is a failed login
    /// too, so no 401 to a credential is free. Only the bare challenge (no header) is not counted.
    @Test("unreadable Authorization headers count as failed logins: past 10, 429; a request without one still gets the challenge")
    func unreadableCredentialsAreThrottled() async throws {
        try await Self.withMirror { mirror, _ in
            let unreadable = ["Bearer some-token", "Basic !!!not-base64!!!", "Basic " + Data("no-colon".utf8).base64EncodedString(), "Digest x"]
            for attempt in 0..<10 {
                let header = unreadable[attempt % unreadable.count]
                let response = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: [("Authorization", header)])
                #expect(response.status == 401 && response.errorCodes == ["UNAUTHORIZED"], "attempt \(attempt) (\(header)): \(response)")
            }
            let next = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: [("Authorization", "Bearer another")])
            #expect(next.status == 429 && next.errorCodes == ["TOOMANYREQUESTS"], "\(next)")
            let right = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, Self.password))
            #expect(right.status == 429, "a throttled address got \(right)")
            for _ in 0..<20 {
                let anonymous = try RawHTTP.get(port: mirror.port, path: "/v2/")
                #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate") != nil, "the challenge still comes: \(anonymous)")
            }
        }
    }

    /// `metrics.listen`: Prometheus scrapes without a password on its own address, while the
    /// main listener's /metrics, status page and API still want credentials.
    @Test("metrics.listen serves /metrics without credentials; the main listener's /metrics and status page stay behind auth")
    func metricsListenerIsOpenAndTheRestIsNot() async throws {
        let metricsPort = try Ports.free()
        try await Self.withMirror(environment: ["REGISTRY_MIRROR_METRICS_LISTEN": "127.0.0.1:\(metricsPort)"]) { mirror, _ in
            try await waitUntil("the metrics listener to answer") {
                (try? RawHTTP.get(port: metricsPort, path: "/metrics"))?.status == 200
            }
            // A request on the main listener first, so the scrape has something to show.
            _ = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, Self.password))
            let scrape = try RawHTTP.get(port: metricsPort, path: "/metrics")
            #expect(scrape.status == 200 && scrape.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true, "\(scrape)")
            #expect(scrape.bodyText.contains("# TYPE "), "not Prometheus text: \(scrape.bodyText.prefix(300))")
            for path in ["/", "/v2/", "/v2/test/app/manifests/v1", "/healthz"] {
                let other = try RawHTTP.get(port: metricsPort, path: path)
                #expect(other.status == 404, "the metrics listener serves only /metrics, not \(path): \(other)")
            }
            for path in ["/metrics", "/"] {
                let anonymous = try RawHTTP.get(port: mirror.port, path: path)
                #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate") != nil, "main listener \(path) without credentials: \(anonymous)")
                let wrong = try RawHTTP.get(port: mirror.port, path: path, headers: Self.basic(Self.user, "wrong"))
                #expect(wrong.status == 401, "main listener \(path) with a wrong password: \(wrong)")
                let right = try RawHTTP.get(port: mirror.port, path: path, headers: Self.basic(Self.user, Self.password))
                #expect(right.status == 200, "main listener \(path) with credentials: \(right)")
            }
        }
    }

    /// Without the limit (a flood from many addresses looks like this to the server), every
    /// wrong password costs a bcrypt; they run on their own thread, so /healthz is not stalled.
    @Test("a wrong-password flood with the limit off: bcrypt off the request path, /healthz p99 under 100 ms")
    func floodWithoutLimitLeavesHealthzFast() async throws {
        try await Self.withMirror(environment: ["REGISTRY_MIRROR_AUTH_FAILURES_LIMIT": "0"]) { mirror, work in
            let flood = try await Self.flood(mirror, work: work)
            #expect(flood.statuses["s401", default: 0] >= Self.floodSeconds, "the flood was not checked: \(flood.statuses)")
            #expect(flood.healthz.count >= 20 && flood.p99 < .milliseconds(100), "/healthz p99 \(flood.p99) over \(flood.healthz.count) probes")
            let right = try RawHTTP.get(port: mirror.port, path: "/v2/", headers: Self.basic(Self.user, Self.password))
            #expect(right.status == 200, "the right password after the flood: \(right)")
        }
    }
}
