/// A `Range` request header resolved against a blob's size (RFC 9110 §14).
///
/// - No header, or a unit other than `bytes`: the whole blob.
/// - Several ranges: the whole blob (allowed by RFC 9110, and what clients of registries expect).
/// - One satisfiable range: that range, clamped to the blob.
/// - A range starting past the end, an inverted range, or garbage: unsatisfiable (416).
public enum ByteRange: Equatable, Sendable {
    case full
    case partial(start: Int64, end: Int64)  // inclusive
    case unsatisfiable

    public static func resolve(_ header: String?, size: Int64) -> ByteRange {
        guard let header else { return .full }
        let trimmed = header.trimmingWhitespace()
        guard trimmed.lowercased().hasPrefix("bytes=") else {
            return trimmed.contains("=") && !trimmed.isEmpty ? .full : .unsatisfiable
        }
        let spec = trimmed.dropFirst(6)
        if spec.contains(",") { return .full }
        let text = spec.trimmingWhitespace()
        guard let dash = text.firstIndex(of: "-") else { return .unsatisfiable }
        let first = text[..<dash], last = text[text.index(after: dash)...]
        guard first.allSatisfy(\.isASCIIDigit), last.allSatisfy(\.isASCIIDigit), first.count <= 19, last.count <= 19 else {
            return .unsatisfiable
        }
        if first.isEmpty {
            // suffix: the last N bytes
            guard let n = Int64(last), n > 0, size > 0 else { return .unsatisfiable }
            return .partial(start: max(0, size - n), end: size - 1)
        }
        guard let start = Int64(first), start < size else { return .unsatisfiable }
        if last.isEmpty { return .partial(start: start, end: size - 1) }
        guard let end = Int64(last), end >= start else { return .unsatisfiable }
        return .partial(start: start, end: min(end, size - 1))
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension StringProtocol {
    func trimmingWhitespace() -> Substring {
        let s = self[...]
        let start = s.firstIndex { !$0.isWhitespace } ?? s.endIndex
        let end = s.lastIndex { !$0.isWhitespace }.map { s.index(after: $0) } ?? start
        return Substring(s[start..<Swift.max(start, end)])
    }
}
