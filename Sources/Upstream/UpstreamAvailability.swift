/// Whether an upstream is worth asking, learned from how its recent requests ended: a
/// circuit breaker, as a value type with the time passed in, so it is tested without I/O.
///
/// - **Up**: requests go out. A request that ends in a transport failure (no answer:
///   refused, unreachable, timed out before a head, reset before a head), after its own
///   retries, counts one; `downAfter` of them in a row mark the upstream down. Any HTTP
///   answer, whatever its status, is proof of life and resets the count: a 5xx is retried
///   and served stale as before, but does not mark the upstream down, because registries
///   answer 5xx for single repositories or manifests while serving the rest.
/// - **Down** for an interval: every request is refused at once (a cached tag is served
///   stale, anything else fails with 503). The first interval is `firstInterval`; each failed
///   probe doubles it, up to `maxInterval`.
/// - **Probing**: once the interval has passed, exactly one request goes out, with a single
///   attempt; the others are still refused. Its answer marks the upstream up; its failure
///   marks it down for the next, longer interval. A probe that ends without a verdict
///   (cancelled) lets the next request probe.
public struct UpstreamAvailability: Sendable, Equatable {
    public typealias Instant = ContinuousClock.Instant

    /// Consecutive failed requests that mark the upstream down; 0: never.
    public let downAfter: Int
    public let firstInterval: Duration
    public let maxInterval: Duration

    public enum State: Sendable, Equatable {
        case up(failures: Int)
        case down(until: Instant, interval: Duration)
        case probing(interval: Duration)
    }

    /// What a request may do now.
    public enum Admission: Sendable, Equatable {
        case go
        /// The one request that checks whether the upstream is back: send it once, no retries.
        case probe
        /// Refused: the upstream is down; the next check is due in this long (zero while a probe runs).
        case refused(nextCheck: Duration)
    }

    /// How a request that was let through ended.
    public enum Outcome: Sendable, Equatable {
        /// An HTTP answer came (any status).
        case answered
        /// No answer: refused, unreachable, timed out or reset before a head.
        case failed(String)
        /// Neither: cancelled before a verdict.
        case abandoned
    }

    /// A change worth logging and showing.
    public enum Transition: Sendable, Equatable {
        case markedDown(failures: Int, nextCheck: Duration)
        case stillDown(nextCheck: Duration)
        case back
    }

    public private(set) var state: State = .up(failures: 0)
    /// Failed requests in a row, as the last transition counted them.
    public private(set) var failures = 0
    /// Why the last request failed, for the refusal's message.
    public private(set) var lastFailure: String?

    public init(downAfter: Int = 3, firstInterval: Duration = .seconds(1), maxInterval: Duration = .seconds(60)) {
        self.downAfter = max(0, downAfter)
        self.firstInterval = min(firstInterval, maxInterval)
        self.maxInterval = maxInterval
    }

    public var isDown: Bool {
        if case .up = state { return false }
        return true
    }

    public mutating func admit(now: Instant) -> Admission {
        switch state {
        case .up:
            return .go
        case .down(let until, let interval):
            guard now >= until else { return .refused(nextCheck: until - now) }
            state = .probing(interval: interval)
            return .probe
        case .probing:
            return .refused(nextCheck: .zero)
        }
    }

    /// Records how a request ended; `probe` says whether it was the one `admit` chose to probe.
    public mutating func record(_ outcome: Outcome, probe: Bool, now: Instant) -> Transition? {
        switch outcome {
        case .answered:
            failures = 0
            let wasDown = isDown
            state = .up(failures: 0)
            return wasDown ? .back : nil
        case .abandoned:
            // A probe without a verdict: the next request probes instead.
            if probe, case .probing(let interval) = state { state = .down(until: now, interval: interval) }
            return nil
        case .failed(let reason):
            lastFailure = reason
            switch state {
            case .up(let count):
                failures = count + 1
                guard downAfter > 0, failures >= downAfter else {
                    state = .up(failures: failures)
                    return nil
                }
                state = .down(until: now + firstInterval, interval: firstInterval)
                return .markedDown(failures: failures, nextCheck: firstInterval)
            case .probing(let interval) where probe:
                failures += 1
                let next = min(interval * 2, maxInterval)
                state = .down(until: now + next, interval: next)
                return .stillDown(nextCheck: next)
            case .probing, .down:
                // A request let through before the upstream was marked down: already known.
                return nil
            }
        }
    }
}

extension ResponseHead {
    /// Docker Hub's `ratelimit-remaining: 76;w=21600` (the pulls left in the window), or nil.
    public var rateLimitRemaining: Int? {
        guard let value = header("ratelimit-remaining") else { return nil }
        let count = value.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return Int(count)
    }
}
