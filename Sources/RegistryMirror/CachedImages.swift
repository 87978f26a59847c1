import MetadataIndex
import Mirror
import OCI

extension ServeSettings {
    /// The root digest a reference typed on the command line names in the cache, resolved as
    /// `seed` and `serve` resolve it (`resolve(_:anyHost:)`), so `seed --upstream URL lab/app:1`
    /// and `export --upstream URL lab/app:1` mean the same image.
    ///
    /// When it is not cached, the error lists what is cached under the same name for other
    /// upstreams: the usual cause is a command run without the `--upstream` (or `--config`)
    /// that the seed had.
    public func cachedRoot(_ text: String, in index: any MetadataStore) async throws(MirrorError) -> (repository: RepositoryKey, digest: Digest, name: String) {
        let (repository, reference, name) = try resolve(text, anyHost: true)
        let found: Digest? = try await LocalRegistry.wrapIndex { () async throws(IndexError) -> Digest? in
            switch reference {
            case .digest(let digest): return try await index.manifest(digest) == nil ? nil : digest
            case .tag(let tag): return try await index.tag(repository, tag)?.digest
            }
        }
        if let found { return (repository, found, name) }
        let elsewhere = try await cachedElsewhere(repository, reference, in: index)
        guard !elsewhere.isEmpty else {
            throw MirrorError(.manifestUnknown, "\(text) is not in the cache (as \(name)); fetch it first with `registry-mirror seed \(name)`")
        }
        throw MirrorError(.manifestUnknown, """
            \(text) is not in the cache (as \(name)); under that name it is cached for other upstreams as: \
            \(elsewhere.joined(separator: ", ")). Give the full name, or the --upstream (or --config) it was seeded with
            """)
    }

    /// Cached references with the same repository name (and tag or digest) on other
    /// upstreams. Docker Hub's `library/` is ignored, so `alpine` finds `127.0.0.1:5000/alpine`.
    func cachedElsewhere(_ repository: RepositoryKey, _ reference: ManifestReference, in index: any MetadataStore) async throws(MirrorError) -> [String] {
        var names = [repository.name]
        let bare = repository.name.value.hasPrefix("library/") ? String(repository.name.value.dropFirst("library/".count)) : "library/" + repository.name.value
        if let alternative = try? RepositoryName(parsing: bare) { names.append(alternative) }
        let rows = try await LocalRegistry.wrapIndex { () async throws(IndexError) in try await index.taggedRepositories(named: names) }
        return rows.filter { row in
            guard row.repository != repository else { return false }
            switch reference {
            case .digest(let digest): return row.digest == digest
            case .tag(let tag): return row.tag == tag.value
            }
        }.map { row in
            switch reference {
            case .digest(let digest): return "\(row.repository)@\(digest)"
            case .tag: return "\(row.repository):\(row.tag)"
            }
        }
    }
}
