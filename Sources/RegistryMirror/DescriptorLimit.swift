#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's open-file limit (`RLIMIT_NOFILE`), and the connection cap it allows.
///
/// Every connection, blob file being served, download, index handle and upstream socket takes
/// a descriptor; many distributions still start services with a soft limit of 1024.
public struct DescriptorLimit: Sendable, Equatable {
    /// The soft limit the process started with.
    public let initialSoft: Int
    public let hard: Int
    /// The soft limit now.
    public let soft: Int

    /// Raises the soft limit to the hard one (which only privilege could raise further).
    public static func raiseToHard() -> DescriptorLimit {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else { return DescriptorLimit(initialSoft: 1024, hard: 1024, soft: 1024) }
        let initial = limit.rlim_cur
        // An unlimited hard limit (macOS) cannot be set as the soft one; keep what we have.
        if limit.rlim_max != Self.infinity, limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Self.resource, &raised) == 0 { limit = raised }
        }
        return DescriptorLimit(initialSoft: Self.count(initial), hard: Self.count(limit.rlim_max), soft: Self.count(limit.rlim_cur))
    }

    /// The cap on client connections when `http.max_connections` is not set: a quarter of the
    /// descriptors, and at least 128, stay for blob files being served, downloads, the index
    /// and upstream connections.
    public var defaultMaxConnections: Int { max(16, soft - max(128, soft / 4)) }

    private static func count(_ value: rlim_t) -> Int { value >= rlim_t(Int32.max) ? Int(Int32.max) : Int(value) }

    #if canImport(Glibc)
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    private static let infinity = rlim_t.max  // RLIM_INFINITY, which Swift imports as -1
    #else
    private static let resource = RLIMIT_NOFILE
    private static let infinity = RLIM_INFINITY
    #endif
}
