/// A repository name, `path-component(/path-component)*`, as the distribution spec defines it.
///
/// Components match `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. The whole name is capped at
/// 255 characters (distribution's limit). A parsed name has no `..`, no empty
/// component and no uppercase, so it is safe to use as a key anywhere.
public struct RepositoryName: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maxLength = 255
    public let value: String

    public init(parsing text: some StringProtocol) throws(OCIError) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { throw OCIError(.invalidName, "repository name is empty") }
        guard bytes.count <= Self.maxLength else {
            throw OCIError(.invalidName, "repository name is longer than \(Self.maxLength) characters")
        }
        var start = 0
        for i in 0...bytes.count where i == bytes.count || bytes[i] == UInt8(ascii: "/") {
            guard Self.isValidComponent(bytes[start..<i]) else {
                throw OCIError(.invalidName, "invalid repository name: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
            }
            start = i + 1
        }
        self.value = String(text)
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
    static func isValidComponent(_ c: ArraySlice<UInt8>) -> Bool {
        guard let first = c.first, let last = c.last, isAlnum(first), isAlnum(last) else { return false }
        var i = c.startIndex
        while i < c.endIndex {
            let b = c[i]
            if isAlnum(b) { i += 1; continue }
            // a separator run: ".", "_", "__", or "-+"
            if b == UInt8(ascii: ".") {
                i += 1
            } else if b == UInt8(ascii: "_") {
                i += 1
                if i < c.endIndex, c[i] == UInt8(ascii: "_") { i += 1 }
            } else if b == UInt8(ascii: "-") {
                while i < c.endIndex, c[i] == UInt8(ascii: "-") { i += 1 }
            } else {
                return false
            }
            guard i < c.endIndex, isAlnum(c[i]) else { return false }
        }
        return true
    }

    @inline(__always)
    static func isAlnum(_ b: UInt8) -> Bool {
        (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39)
    }

    /// Path components.
    public var components: [Substring] { value.split(separator: "/") }

    public var description: String { value }

    public static func < (lhs: RepositoryName, rhs: RepositoryName) -> Bool { lhs.value < rhs.value }
}

/// A tag, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
public struct Tag: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maxLength = 128
    public let value: String

    public init(parsing text: some StringProtocol) throws(OCIError) {
        let bytes = Array(text.utf8)
        guard let first = bytes.first, bytes.count <= Self.maxLength,
            Self.isWord(first),
            bytes.dropFirst().allSatisfy({ Self.isWord($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") })
        else {
            throw OCIError(.invalidTag, "invalid tag: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        self.value = String(text)
    }

    @inline(__always)
    static func isWord(_ b: UInt8) -> Bool {
        (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "_")
    }

    public var description: String { value }

    public static func < (lhs: Tag, rhs: Tag) -> Bool { lhs.value < rhs.value }
}

/// What a manifest request names: a mutable tag or an immutable digest.
public enum ManifestReference: Hashable, Sendable, CustomStringConvertible {
    case tag(Tag)
    case digest(Digest)

    /// A reference with a `:` can only be a digest; otherwise it must be a tag.
    public init(parsing text: some StringProtocol) throws(OCIError) {
        if text.contains(":") {
            self = .digest(try Digest(parsing: text))
        } else {
            self = .tag(try Tag(parsing: text))
        }
    }

    public var description: String {
        switch self {
        case .tag(let t): return t.value
        case .digest(let d): return d.description
        }
    }
}
