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
            // On the UTF-8 bytes: walking Characters (grapheme breaking) cost about 8 % of the
            // CPU of a warm manifest request, and media types are ASCII.
            var item: [UInt8] = []
            var inParameters = false
            func finish() {
                while let last = item.last, last == 0x20 || last == 0x09 { item.removeLast() }
                if !item.isEmpty { types.insert(String(decoding: item, as: UTF8.self)) }
                item.removeAll(keepingCapacity: true)
                inParameters = false
            }
            for byte in value.utf8 {
                switch byte {
                case UInt8(ascii: ","): finish()
                case UInt8(ascii: ";"): inParameters = true
                case 0x20, 0x09 where item.isEmpty: continue
                default:
                    guard !inParameters else { continue }
                    item.append(byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte)
                }
            }
            finish()
        }
        self.types = types
    }

    public func accepts(_ mediaType: String) -> Bool {
        types.isEmpty || types.contains("*/*") || types.contains(mediaType.lowercased())
            || types.contains(String(mediaType.lowercased().prefix { $0 != "/" }) + "/*")
    }
}
