import Synchronization

/// Failed logins per client address, as token buckets: an address may fail `limit` times
/// in a row, and earns one attempt back every `window / limit`. An address with no attempt
/// left is refused without running bcrypt, so guessing costs the server nothing.
///
/// A value-type state machine; `LoginThrottle` shares it between requests.
public struct LoginAttempts: Sendable {
    public typealias Instant = ContinuousClock.Instant

    /// Failures allowed per window before an address is refused; 0 turns the limit off.
    public let limit: Int
    public let window: Duration
    /// Addresses remembered at most: the table's memory stays bounded under a flood from
    /// many addresses (the oldest are forgotten first).
    public let maxAddresses: Int

    private struct Bucket {
        var tokens: Double
        var updated: Instant
    }
    private var buckets: [String: Bucket] = [:]

    public init(limit: Int, window: Duration, maxAddresses: Int = 10_000) {
        self.limit = limit
        self.window = window
        self.maxAddresses = max(1, maxAddresses)
    }

    /// Attempts regained per second.
    private var rate: Double { Double(limit) / max(window / .seconds(1), 1e-9) }

    private func refilled(_ bucket: Bucket, at now: Instant) -> Double {
        min(Double(limit), bucket.tokens + (now - bucket.updated) / .seconds(1) * rate)
    }

    /// How long `address` must wait before its next attempt; nil if it may try now.
    public func retryAfter(_ address: String, now: Instant) -> Duration? {
        guard limit > 0, let bucket = buckets[address] else { return nil }
        let tokens = refilled(bucket, at: now)
        return tokens >= 1 ? nil : .seconds((1 - tokens) / rate)
    }

    /// Takes one attempt from `address`'s allowance: nil if granted (give it back with
    /// `refund` when the password was right), else how long to wait.
    public mutating func admit(_ address: String, now: Instant) -> Duration? {
        guard limit > 0 else { return nil }
        if let wait = retryAfter(address, now: now) { return wait }
        let tokens = buckets[address].map { refilled($0, at: now) } ?? Double(limit)
        if buckets[address] == nil, buckets.count >= maxAddresses { forgetOldest(now: now) }
        buckets[address] = Bucket(tokens: tokens - 1, updated: now)
        return nil
    }

    /// Gives back the attempt `admit` took: the login succeeded, or was never tried.
    public mutating func refund(_ address: String, now: Instant) {
        guard let bucket = buckets[address] else { return }
        let tokens = refilled(bucket, at: now) + 1
        if tokens >= Double(limit) { buckets[address] = nil } else { buckets[address] = Bucket(tokens: tokens, updated: now) }
    }

    /// Addresses currently remembered.
    public var count: Int { buckets.count }

    /// Drops the buckets that have refilled (they say nothing), then, if more than half the
    /// table is left, all but the newest half: so this O(n) pass runs at most once per
    /// `maxAddresses / 2` new addresses.
    private mutating func forgetOldest(now: Instant) {
        buckets = buckets.filter { refilled($0.value, at: now) < Double(limit) }
        guard buckets.count > maxAddresses / 2 else { return }
        let keep = buckets.sorted { $0.value.updated > $1.value.updated }.prefix(maxAddresses / 2)
        buckets = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
    }
}

/// `LoginAttempts` shared by every request of a server.
public final class LoginThrottle: Sendable {
    private let attempts: Mutex<LoginAttempts>
    /// How long a throttled address waits for its 429 (at most until it may try again).
    public let pause: Duration

    public init(limit: Int, window: Duration, maxAddresses: Int = 10_000, pause: Duration = .seconds(1)) {
        attempts = Mutex(LoginAttempts(limit: limit, window: window, maxAddresses: maxAddresses))
        self.pause = pause
    }

    public func retryAfter(_ address: String) -> Duration? {
        let now = ContinuousClock.now
        return attempts.withLock { $0.retryAfter(address, now: now) }
    }

    public func admit(_ address: String) -> Duration? {
        let now = ContinuousClock.now
        return attempts.withLock { $0.admit(address, now: now) }
    }

    public func refund(_ address: String) {
        let now = ContinuousClock.now
        attempts.withLock { $0.refund(address, now: now) }
    }
}
