/// A full image reference, `[host[:port]/]name[:tag][@digest]`, normalized the way Docker does it.
///
/// - No host, or `docker.io` / `index.docker.io` / `registry-1.docker.io`: the host is
///   `docker.io`, and a one-component name gets `library/` (`alpine` → `docker.io/library/alpine`).
/// - The first component is a host when it has a `.` or a `:`, or is `localhost`.
/// - With neither tag nor digest, the tag is `latest`.
public struct ImageReference: Hashable, Sendable, CustomStringConvertible {
    public static let dockerHub = "docker.io"

    /// Registry host, possibly with a port; `docker.io` for Docker Hub.
    public let host: String
    public let repository: RepositoryName
    public let tag: Tag?
    public let digest: Digest?

    public init(host: String, repository: RepositoryName, tag: Tag?, digest: Digest?) {
        self.host = host
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    public init(parsing text: String) throws(OCIError) {
        guard !text.isEmpty, text.utf8.count <= 1024 else {
            throw OCIError(.invalidReference, "reference is empty or too long")
        }
        var rest = Substring(text)
        var digest: Digest?
        if let at = rest.firstIndex(of: "@") {
            digest = try Digest(parsing: rest[rest.index(after: at)...])
            rest = rest[..<at]
        }
        var host = Self.dockerHub
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            if first.contains(".") || first.contains(":") || first == "localhost" {
                host = Self.normalizeHost(String(first))
                rest = rest[rest.index(after: slash)...]
            }
        }
        var tag: Tag?
        if let colon = rest.lastIndex(of: ":") {
            tag = try Tag(parsing: rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        var name = String(rest)
        if host == Self.dockerHub, !name.contains("/") {
            name = "library/" + name
        }
        let repository: RepositoryName
        do {
            repository = try RepositoryName(parsing: name)
        } catch {
            throw OCIError(.invalidReference, "invalid repository in reference \(text.prefix(200)): \(error.message)")
        }
        guard host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) else {
            throw OCIError(.invalidReference, "invalid registry host in reference \(text.prefix(200))")
        }
        self.host = host
        self.repository = repository
        self.tag = (tag == nil && digest == nil) ? try Tag(parsing: "latest") : tag
        self.digest = digest
    }

    /// Docker Hub's several names collapse into one.
    public static func normalizeHost(_ host: String) -> String {
        switch host.lowercased() {
        case "docker.io", "index.docker.io", "registry-1.docker.io": return dockerHub
        default: return host.lowercased()
        }
    }

    /// The manifest reference to fetch: the digest when present, else the tag.
    public var manifestReference: ManifestReference {
        if let digest { return .digest(digest) }
        return .tag(tag!)
    }

    public var description: String {
        var s = "\(host)/\(repository.value)"
        if let tag { s += ":\(tag.value)" }
        if let digest { s += "@\(digest)" }
        return s
    }
}
