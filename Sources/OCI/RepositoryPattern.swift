/// A repository glob, as `upstreams[].allow` and `upstreams[].deny` list them, matched against
/// a repository's name as its upstream knows it (Docker Hub's `nginx` is `library/nginx`).
///
/// - `*` matches any run of characters within one path segment: `library/*` matches
///   `library/nginx` but not `library/a/b`; `team/app-*` matches `team/app-web`.
/// - `**`, a whole segment, matches any number of segments: `a/**/b` matches `a/b` and
///   `a/x/y/b`. At the end it matches one or more, so `myorg/**` matches everything below
///   `myorg` but not `myorg` itself, and `**` alone matches every name.
/// - Anything else matches itself: `library/nginx`.
///
/// Names are lowercase (the spec's grammar), so a pattern with an uppercase letter could never
/// match and is refused, as are empty segments, a leading or trailing `/`, characters no name
/// can hold, and a literal segment no name can have (`app-`): a typo in a deny list must fail
/// at load, not silently let everything through.
public struct RepositoryPattern: Hashable, Sendable, CustomStringConvertible {
    /// The pattern as written.
    public let text: String
    private let segments: [Segment]

    private enum Segment: Hashable, Sendable {
        /// `**`: zero or more whole segments.
        case anyDepth
        /// One segment; `*` in it matches any run of characters.
        case glob([UInt8])
    }

    public init(parsing text: some StringProtocol) throws(OCIError) {
        let bytes = Array(text.utf8)
        let shown = String(decoding: bytes.prefix(200), as: UTF8.self)
        func refuse(_ why: String) -> OCIError { OCIError(.invalidPattern, "\"\(shown)\": \(why)") }
        guard !bytes.isEmpty else { throw OCIError(.invalidPattern, "a repository pattern is empty") }
        guard bytes.count <= RepositoryName.maxLength else {
            throw refuse("longer than \(RepositoryName.maxLength) characters, the longest a repository name may be")
        }
        guard bytes.first != UInt8(ascii: "/") else { throw refuse("must not start with /") }
        guard bytes.last != UInt8(ascii: "/") else {
            let stem = shown.dropLast()
            throw refuse("ends with /; write \(stem)/* for the repositories right below it, or \(stem)/** for any depth")
        }
        if let upper = bytes.first(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) {
            throw refuse("has '\(Character(Unicode.Scalar(upper)))'; repository names are lowercase, so write \"\(shown.lowercased())\"")
        }
        if let bad = bytes.first(where: { !(RepositoryName.isAlnum($0) || Self.punctuation.contains($0)) }) {
            let character = bad < 0x80 ? "'\(Character(Unicode.Scalar(bad)))'" : "a non-ASCII character"
            throw refuse("has \(character); a pattern holds only a-z, 0-9, '.', '_', '-', '/' and the wildcards * and **")
        }
        var segments: [Segment] = []
        for part in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            guard !part.isEmpty else { throw refuse("has an empty path segment (//)") }
            if part.elementsEqual("**".utf8) {
                segments.append(.anyDepth)
                continue
            }
            let star = UInt8(ascii: "*")
            guard !zip(part, part.dropFirst()).contains(where: { $0 == star && $1 == star }) else {
                throw refuse("** must be a whole path segment, as in myorg/**")
            }
            if !part.contains(star), !RepositoryName.isValidComponent(part) {
                throw refuse("no repository name has the segment \"\(String(decoding: part, as: UTF8.self))\"")
            }
            segments.append(.glob(Array(part)))
        }
        // A trailing `**` matches one or more segments: one segment, then zero or more.
        if segments.last == .anyDepth {
            segments.insert(.glob([UInt8(ascii: "*")]), at: segments.count - 1)
        }
        self.text = String(text)
        self.segments = segments
    }

    private static let punctuation: Set<UInt8> = Set("._-/*".utf8)

    public var description: String { text }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.text == rhs.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }

    /// Whether `name` matches. Linear in pattern segments times name components (no
    /// backtracking blow-up, however many `**` a pattern holds).
    public func matches(_ name: RepositoryName) -> Bool {
        let components = name.value.utf8.split(separator: UInt8(ascii: "/"))
        let n = components.count
        // matched[j]: the segments from i on match the components from j on (filled backwards).
        var matched = [Bool](repeating: false, count: n + 1)
        matched[n] = true
        for segment in segments.reversed() {
            var next = [Bool](repeating: false, count: n + 1)
            switch segment {
            case .anyDepth:
                for j in stride(from: n, through: 0, by: -1) {
                    next[j] = matched[j] || (j < n && next[j + 1])
                }
            case .glob(let glob):
                for j in 0..<n where matched[j + 1] {
                    next[j] = Self.glob(glob, matches: components[j])
                }
            }
            matched = next
        }
        return matched[0]
    }

    /// One segment: `*` matches any run of bytes, everything else itself. Greedy with one
    /// backtrack point, so linear in practice.
    static func glob(_ pattern: [UInt8], matches segment: some Collection<UInt8>) -> Bool {
        let text = Array(segment)
        let star = UInt8(ascii: "*")
        var p = 0, t = 0
        var starAt = -1, resumeAt = 0
        while t < text.count {
            if p < pattern.count, pattern[p] == star {
                starAt = p
                resumeAt = t
                p += 1
            } else if p < pattern.count, pattern[p] == text[t] {
                p += 1
                t += 1
            } else if starAt >= 0 {
                p = starAt + 1
                resumeAt += 1
                t = resumeAt
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == star { p += 1 }
        return p == pattern.count
    }
}
