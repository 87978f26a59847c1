import Foundation
@testable import RegistryAPI
import Testing

@Suite struct HtpasswdTests {
    /// `hunter2`, bcrypt cost 5, as `htpasswd -B -C 5` writes it.
    static let entry = "alice:$2b$05$wwADLSfXpTgRcUBJ176FlOYGHx7yrOtd2LZ5hOcY.NShe2uaZotsG"

    @Test func bcryptEntriesVerify() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "# users\n\(Self.entry)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let file = try Htpasswd(path: path)
        #expect(await file.verify(user: "alice", password: "hunter2") == .accepted)
        #expect(await file.verify(user: "alice", password: "hunter2") == .accepted, "the remembered answer agrees")
        #expect(await file.verify(user: "alice", password: "hunter3") == .refused)
        #expect(await file.verify(user: "bob", password: "hunter2") == .refused)
        #expect(await file.verify(user: "alice", password: "") == .refused)
    }

    @Test func changesToTheFileAreSeen() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "\(Self.entry)\n".write(toFile: path, atomically: true, encoding: .utf8)
        let file = try Htpasswd(path: path)
        #expect(await file.verify(user: "alice", password: "hunter2") == .accepted)
        // alice removed; the change is picked up within the 2 s check interval.
        try "carol:\(Self.entry.split(separator: ":", maxSplits: 1)[1])\n".write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(5)], ofItemAtPath: path)
        try await Task.sleep(for: .milliseconds(2200))
        #expect(await file.verify(user: "alice", password: "hunter2") == .refused, "a removed user is still let in")
        #expect(await file.verify(user: "carol", password: "hunter2") == .accepted)
    }

    @Test(arguments: ["alice:hunter2", "alice:$apr1$abc$def", "no-colon-here"])
    func unsupportedEntriesAreRefusedAtLoad(_ line: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/htpasswd"
        try "\(line)\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: MirrorSetupFailure.self) { _ = try Htpasswd(path: path) }
    }
}

/// Issue 10, item 4: what a wrong guess can learn, and what it costs the server.
@Suite struct HtpasswdHardeningTests {
    /// `hunter2`, bcrypt cost 8 (about 15 ms here): slow enough to time against noise.
    static let hash = "$2b$08$fa5Mmnxx25V/HJYnD437duoehADqbiLyFJYKZZItNXTe6KQeK7f6e"

    static func file(_ lines: [String], in dir: TemporaryDirectory) throws -> Htpasswd {
        let path = dir.path + "/htpasswd"
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return try Htpasswd(path: path)
    }

    /// Unknown users used to be refused in microseconds and known ones after a bcrypt, which
    /// told user names apart. Now both hash, at the same cost.
    @Test func unknownUsersCostWhatAWrongPasswordDoes() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try Self.file(["alice:\(Self.hash)"], in: dir)
        func time(_ user: String) async -> Duration {
            let start = ContinuousClock.now
            #expect(await file.verify(user: user, password: "wrong-\(UUID())") == .refused)
            return ContinuousClock.now - start
        }
        var known: [Duration] = [], unknown: [Duration] = []
        for _ in 0..<15 {  // interleaved, so a busy moment on the machine hits both
            known.append(await time("alice"))
            unknown.append(await time("mallory"))
        }
        let medians = (known: known.sorted()[7], unknown: unknown.sorted()[7])
        let ratio = max(medians.known, medians.unknown) / min(medians.known, medians.unknown)
        #expect(ratio < 2, "median known user \(medians.known), unknown user \(medians.unknown): \(ratio)×")
    }

    /// crypt(3) reads a C string: "hunter2\0anything" would be checked as "hunter2".
    @Test func aPasswordWithANULIsRefused() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try Self.file(["alice:\(Self.hash)"], in: dir)
        #expect(await file.verify(user: "alice", password: "hunter2\u{0}anything") == .refused)
        #expect(await file.verify(user: "alice", password: "hunter2\u{0}") == .refused)
        #expect(await file.verify(user: "alice", password: "hunter2") == .accepted)
        #expect(await file.verify(user: "alice", password: "hunter2\u{0}anything") == .refused, "after the right one is remembered")
    }

    /// `u` + U+0308 is canonically equivalent to `ü`, so Swift's `==` and dictionary lookups
    /// call them equal; a user name is bytes, and another spelling is another user.
    @Test func userNamesCompareByteForByte() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let composed = "\u{FC}n\u{EF}"            // ünï, precomposed, as the file has it
        let decomposed = "u\u{308}ni\u{308}"       // the same on screen
        #expect(composed == decomposed, "Swift's equality is the trap")
        let file = try Self.file(["\(composed):\(Self.hash)"], in: dir)
        #expect(await file.verify(user: decomposed, password: "hunter2") == .refused)
        #expect(await file.verify(user: composed, password: "hunter2") == .accepted)
        #expect(await file.verify(user: decomposed, password: "hunter2") == .refused, "after the composed name is remembered")
    }

    /// The split is at the first colon byte, whatever combining mark follows it.
    @Test func basicCredentialsSplitAtTheFirstColonByte() throws {
        let header = "Basic " + Data("alice:\u{308}pass:word".utf8).base64EncodedString()
        let parsed = try #require(BasicAuthMiddleware<RegistryRequestContext>.basic(header))
        #expect(Array(parsed.0.utf8) == Array("alice".utf8) && Array(parsed.1.utf8) == Array("\u{308}pass:word".utf8))
    }

    @Test func cryptThreadsTurnAwayWorkBeyondTheirLine() async throws {
        let threads = CryptThreads(threads: 1, maxWaiting: 0)
        let release = DispatchSemaphore(value: 0)
        let (started, running) = AsyncStream<Void>.makeStream()
        async let first = threads.run { running.yield(); release.wait(); return 1 }
        for await _ in started { break }
        #expect(await threads.run { 2 } == nil, "the one thread is busy and nobody may wait")
        release.signal()
        #expect(await first == 1)
        #expect(await threads.run { 3 } == 3)
    }
}

/// The failed-login allowance, on a clock the test moves.
@Suite struct LoginAttemptsTests {
    let start = ContinuousClock.now

    @Test func anAddressIsRefusedPastItsLimitUntilItRefills() throws {
        var attempts = LoginAttempts(limit: 3, window: .seconds(30))
        for _ in 0..<3 { #expect(attempts.admit("10.0.0.1", now: start) == nil) }
        let refused = attempts.admit("10.0.0.1", now: start)
        let wait = try #require(refused)
        #expect(abs(wait / .seconds(1) - 10) < 0.01, "one attempt back every window / limit, not \(wait)")
        #expect(attempts.admit("10.0.0.2", now: start) == nil, "other addresses are not affected")
        #expect(attempts.retryAfter("10.0.0.1", now: start + .seconds(9)) != nil)
        let later = start + .seconds(10) + .milliseconds(1)
        #expect(attempts.admit("10.0.0.1", now: later) == nil)
        #expect(attempts.admit("10.0.0.1", now: later) != nil)
    }

    @Test func aRightPasswordGivesItsAttemptBack() {
        var attempts = LoginAttempts(limit: 2, window: .seconds(60))
        for _ in 0..<10 {
            #expect(attempts.admit("10.0.0.1", now: start) == nil)
            attempts.refund("10.0.0.1", now: start)
        }
        #expect(attempts.count == 0, "a full allowance is not stored")
    }

    @Test func limitZeroTurnsItOff() {
        var attempts = LoginAttempts(limit: 0, window: .seconds(60))
        for _ in 0..<100 { #expect(attempts.admit("10.0.0.1", now: start) == nil) }
        #expect(attempts.count == 0)
    }

    @Test func theTableStaysBounded() {
        var attempts = LoginAttempts(limit: 5, window: .seconds(60), maxAddresses: 100)
        for i in 0..<10_000 { _ = attempts.admit("10.0.\(i / 256).\(i % 256)", now: start + .milliseconds(i)) }
        #expect(attempts.count <= 100)
    }
}
