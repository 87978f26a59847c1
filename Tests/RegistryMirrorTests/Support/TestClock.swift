import CoreMetrics
import Foundation
import Mirror
import Synchronization

/// A clock that moves only when told: TTLs are crossed by `advance`, never by waiting.
final class TestClock: MirrorClock {
    private let current = Mutex(Date(timeIntervalSince1970: 1_800_000_000))

    func now() -> Date { current.withLock { $0 } }

    func advance(by duration: Duration) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }
}

/// Named counts that a test can await: each `add` wakes the waiters whose target it reaches.
/// A wait suspends on a continuation; the deadline only ends a test whose rule is broken.
final class EventCounts: Sendable {
    private struct Waiter {
        let key: String
        let target: Int
        let continuation: CheckedContinuation<Void, Never>
    }
    private struct State {
        var counts: [String: Int] = [:]
        var waiters: [UUID: Waiter] = [:]
    }
    private let state = Mutex(State())

    subscript(key: String) -> Int { state.withLock { $0.counts[key, default: 0] } }

    func add(_ key: String) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.counts[key, default: 0] += 1
            let count = s.counts[key]!
            let due = s.waiters.filter { $0.value.key == key && count >= $0.value.target }
            for id in due.keys { s.waiters[id] = nil }
            return due.values.map(\.continuation)
        }
        for continuation in ready { continuation.resume() }
    }

    /// True once `key` has reached `target`; false if `deadline` passes first.
    func wait(_ key: String, reaches target: Int, deadline: Duration = .seconds(10)) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.park(key, target); return true }
            group.addTask { try? await Task.sleep(for: deadline); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first && self[key] >= target
        }
    }

    private func park(_ key: String, _ target: Int) async {
        let id = UUID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // The check and the store under one lock, so an `add` or a cancel cannot slip between.
                let parked = state.withLock { s -> Bool in
                    guard s.counts[key, default: 0] < target, !Task.isCancelled else { return false }
                    s.waiters[id] = Waiter(key: key, target: target, continuation: continuation)
                    return true
                }
                if !parked { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.continuation.resume()
        }
    }
}

/// Metrics whose counters feed `EventCounts` as `label kind=value`, so a test can await
/// what `MirrorStats` counts (single-flight joins, prefetches).
struct CountingMetrics: MetricsFactory {
    let events: EventCounts

    final class Counting: CounterHandler {
        let key: String
        let events: EventCounts
        init(key: String, events: EventCounts) {
            self.key = key
            self.events = events
        }
        func increment(by amount: Int64) { for _ in 0..<amount { events.add(key) } }
        func reset() {}
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        Counting(key: ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: " "), events: events)
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { NOOPMetricsHandler.instance }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { NOOPMetricsHandler.instance }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
