/// The byte ranges a `Range` header asks for, parsed at the edge but not resolved against a
/// blob's size, which the mirror does not know yet for a blob it has not fetched (RFC 9110
/// §14.1.2). The mirror core decides from it whether a range can come from a running fill or
/// must be asked of the upstream; `ByteRange` resolves it once the size is known.
public struct RangeRequest: Sendable, Equatable, CustomStringConvertible {
    public enum Spec: Sendable, Equatable {
        /// `first-last`, or `first-` (to the end) when `last` is nil.
        case from(Int64, last: Int64?)
        /// `-n`: the final n bytes.
        case suffix(Int64)
    }

    /// At least one; each is well formed (`last >= first`, a suffix longer than 0).
    public let specs: [Spec]

    /// Nil for anything but a well-formed `bytes=` list: another unit, garbage, an inverted
    /// range, an empty suffix, or a number past 19 digits.
    public init?(header: String) {
        let trimmed = header.trimmingWhitespace()
        guard trimmed.lowercased().hasPrefix("bytes=") else { return nil }
        var specs: [Spec] = []
        for item in trimmed.dropFirst(6).split(separator: ",", omittingEmptySubsequences: false) {
            guard let spec = Spec(item.trimmingWhitespace()) else { return nil }
            specs.append(spec)
        }
        guard !specs.isEmpty else { return nil }
        self.specs = specs
    }

    public var isMultiple: Bool { specs.count > 1 }

    /// The header value, as sent to the upstream.
    public var description: String {
        "bytes=" + specs.map { spec in
            switch spec {
            case .from(let first, let last): "\(first)-\(last.map(String.init) ?? "")"
            case .suffix(let n): "-\(n)"
            }
        }.joined(separator: ",")
    }
}

extension RangeRequest.Spec {
    init?(_ text: Substring) {
        guard let dash = text.firstIndex(of: "-") else { return nil }
        let first = text[..<dash], last = text[text.index(after: dash)...]
        guard first.allSatisfy(\.isASCIIDigit), last.allSatisfy(\.isASCIIDigit), first.count <= 19, last.count <= 19 else { return nil }
        if first.isEmpty {
            guard let n = Int64(last), n > 0 else { return nil }
            self = .suffix(n)
            return
        }
        guard let start = Int64(first) else { return nil }
        if last.isEmpty {
            self = .from(start, last: nil)
            return
        }
        guard let end = Int64(last), end >= start else { return nil }
        self = .from(start, last: end)
    }

    /// The first byte this range asks for, in a blob of `size` (needed only for a suffix).
    public func start(size: Int64?) -> Int64? {
        switch self {
        case .from(let first, _): first
        case .suffix(let n): size.map { max(0, $0 - n) }
        }
    }

    /// Inclusive bounds within a blob of `size`, clamped to it; nil when unsatisfiable.
    public func resolved(size: Int64) -> (start: Int64, end: Int64)? {
        guard size > 0, let start = start(size: size), start < size else { return nil }
        switch self {
        case .from(_, let last): return (start, min(last ?? size - 1, size - 1))
        case .suffix: return (start, size - 1)
        }
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension StringProtocol {
    /// The text without leading and trailing whitespace.
    public func trimmingWhitespace() -> Substring {
        let s = self[...]
        let start = s.firstIndex { !$0.isWhitespace } ?? s.endIndex
        let end = s.lastIndex { !$0.isWhitespace }.map { s.index(after: $0) } ?? start
        return Substring(s[start..<Swift.max(start, end)])
    }
}
