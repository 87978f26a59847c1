import Foundation

/// The wall-clock time the mirror core reads: a tag's `checked_at` and its TTL, access
/// times for eviction, the status page's times. Injected, so tests move time instead of
/// sleeping through it. `SystemMirrorClock` is the default everywhere.
public protocol MirrorClock: Sendable {
    func now() -> Date
}

extension MirrorClock {
    /// Unix seconds, as the index stores `checked_at`.
    public var unixSeconds: Int64 { Int64(now().timeIntervalSince1970.rounded(.down)) }
    /// Unix milliseconds, as the index stores access times.
    public var unixMilliseconds: Int64 { Int64((now().timeIntervalSince1970 * 1000).rounded(.down)) }
}

/// The operating system's clock: the one place the mirror core reads `Date()`.
public struct SystemMirrorClock: MirrorClock {
    public init() {}
    public func now() -> Date { Date() }
}

extension MirrorClock where Self == SystemMirrorClock {
    public static var system: SystemMirrorClock { SystemMirrorClock() }
}
