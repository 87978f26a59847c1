import Mirror

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
        if trimmed.contains(",") { return .full }
        guard let request = RangeRequest(header: header), let bounds = request.specs[0].resolved(size: size) else {
            return .unsatisfiable
        }
        return .partial(start: bounds.start, end: bounds.end)
    }
}
