/// Whether a client's `Accept` headers admit a stored manifest's media type.
///
/// Several `Accept` lines are merged and split on commas; parameters (`;q=0.5`) are ignored.
/// No `Accept` at all, or `*/*`, admits anything. A client that cannot read the stored type
/// gets 404 `MANIFEST_UNKNOWN` rather than a document it cannot parse: manifests are never
/// converted.
public struct AcceptNegotiation: Sendable {
    public let types: Set<String>

    public init(headerValues: some Sequence<some StringProtocol>) {
        var types = Set<String>()
        for value in headerValues {
            for item in value.split(separator: ",") {
                let base = item.split(separator: ";", maxSplits: 1).first?.trimmingWhitespace().lowercased() ?? ""
                if !base.isEmpty { types.insert(base) }
            }
        }
        self.types = types
    }

    public func accepts(_ mediaType: String) -> Bool {
        types.isEmpty || types.contains("*/*") || types.contains(mediaType.lowercased())
            || types.contains(String(mediaType.lowercased().prefix { $0 != "/" }) + "/*")
    }
}
