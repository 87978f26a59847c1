/// Which instances of a multi-platform index to copy: containers/image's copy modes.
///
/// Whatever is chosen, the index itself is kept byte-exact; instances not chosen are simply
/// absent, and an offline mirror answers 404 for them.
public enum PlatformSelection: Sendable, Equatable, CustomStringConvertible {
    /// The platform of the machine this runs on (`CopySystemImage`).
    case system
    /// Every instance, attestations included (`CopyAllImages`).
    case all
    /// The listed platforms (`CopySpecificImages`).
    case specific([Platform])

    /// The children of an index to copy, in the index's order.
    public func select(_ children: [Descriptor]) -> [Descriptor] {
        switch self {
        case .all:
            return children
        case .system:
            // Like containerd: the first entry that matches wins.
            return children.first { $0.platform.map(Platform.current.matches) ?? false }.map { [$0] } ?? []
        case .specific(let wanted):
            return children.filter { child in
                guard let platform = child.platform else { return false }
                return wanted.contains { $0.matches(platform) }
            }
        }
    }

    public var description: String {
        switch self {
        case .system: return "this machine's platform (\(Platform.current))"
        case .all: return "all platforms"
        case .specific(let list): return list.map(\.description).joined(separator: ", ")
        }
    }
}
