import ContentStore
import Logging
import MetadataIndex
import OCI

/// Serves what the cache holds, and nothing else: the offline mirror, and the "hit" half
/// of the pull-through one.
public struct LocalRegistry: RegistryContent {
    public let store: any BlobStore
    public let index: any MetadataStore
    let manifests: ManifestCache

    public init(store: any BlobStore, index: any MetadataStore, manifestCacheBytes: Int = 64 << 20) {
        self.store = store
        self.index = index
        self.manifests = ManifestCache(capacity: manifestCacheBytes)
    }

    public func manifest(_ repository: RepositoryKey, _ reference: ManifestReference) async throws(MirrorError) -> ManifestContent {
        let digest: Digest, mediaType: String
        switch reference {
        case .tag(let tag):
            guard let tagged = try await wrap({ () async throws(IndexError) in try await index.tag(repository, tag) }) else {
                throw MirrorError(.manifestUnknown, "\(repository):\(tag) is not in the cache")
            }
            (digest, mediaType) = (tagged.digest, tagged.mediaType)
        case .digest(let requested):
            // The warm path: bytes in memory and a fresh "held here" from the index.
            if let hit = manifests.linked(requested, in: repository) {
                return ManifestContent(digest: requested, mediaType: hit.mediaType, bytes: hit.bytes)
            }
            guard let (stored, linked) = try await wrap({ () async throws(IndexError) in try await index.manifest(requested, in: repository) }), linked
            else {
                throw MirrorError(.manifestUnknown, "\(repository)@\(requested) is not in the cache")
            }
            let content = try await manifestContent(stored.digest, mediaType: stored.mediaType)
            manifests.noteLinked(stored.digest, in: repository, mediaType: stored.mediaType)
            return content
        }
        return try await manifestContent(digest, mediaType: mediaType)
    }

    /// Forgets evicted manifests held in memory (`CacheMaintenance` calls it after a pass).
    public func forget(_ digests: [Digest]) { manifests.forget(digests) }

    /// True when a manifest's bytes are in the memory cache.
    public func holdsInMemory(_ digest: Digest) -> Bool { manifests[digest] != nil }

    /// Bytes of a stored manifest, from memory when recently used.
    public func manifestContent(_ digest: Digest, mediaType: String) async throws(MirrorError) -> ManifestContent {
        if let bytes = manifests[digest] {
            return ManifestContent(digest: digest, mediaType: mediaType, bytes: bytes)
        }
        let bytes: [UInt8]
        do {
            bytes = try await store.read(digest, limit: ManifestDocument.maxSize)
        } catch {
            if error.code == .notFound { throw MirrorError(.manifestUnknown, "\(digest) is indexed but its file is missing") }
            throw MirrorError(.internal, "reading manifest \(digest): \(error.message)", cause: error)
        }
        manifests[digest] = bytes
        return ManifestContent(digest: digest, mediaType: mediaType, bytes: bytes)
    }

    public func blob(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> BlobContent {
        guard try await wrap({ () async throws(IndexError) in try await index.isLinked(repository, digest) }),
              let reader = try await openIntact(digest)
        else {
            throw MirrorError(.blobUnknown, "\(digest) is not in the cache for \(repository)")
        }
        return BlobContent(reader: reader, cacheResult: .hit)
    }

    /// Opens a stored blob whose size is the size the index recorded. A blob of another
    /// size (truncated on disk, say) is removed and reported absent, so it is never served
    /// and a pull-through mirror fetches it again.
    ///
    /// The blob is open before anything is decided from it: a blob evicted after this
    /// stays readable to this caller, and one evicted before it is simply absent.
    public func openIntact(_ digest: Digest) async throws(MirrorError) -> (any BlobReader)? {
        let reader: (any BlobReader)?
        do {
            reader = try await store.openBlob(digest)
        } catch {
            throw MirrorError(.storeFailed, "the local store cannot open \(digest): \(error.message)", cause: error)
        }
        guard let reader else { return nil }
        let size = try await Self.size(of: reader, digest)
        guard let recorded = try await wrap({ () async throws(IndexError) in try await index.blobSize(digest) }), recorded != size else {
            return reader
        }
        Logger(label: "registry-mirror").warning("a cached blob has the wrong size; removed, it will be fetched again",
            metadata: ["oci.digest": "\(digest)", "bytes": "\(size.map(String.init) ?? "unknown")", "expected": "\(recorded)"])
        try? await store.delete(digest)
        return nil
    }

    /// The size of a stored blob's open reader (a stored blob always knows it).
    static func size(of reader: any BlobReader, _ digest: Digest) async throws(MirrorError) -> Int64? {
        do {
            return try await reader.size()
        } catch {
            throw MirrorError(.storeFailed, "the local store cannot tell the size of \(digest): \(error)", cause: error)
        }
    }

    public func blobSize(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> Int64 {
        try await Self.size(of: try await blob(repository, digest).reader, digest) ?? 0
    }

    public func tags(_ repository: RepositoryKey) async throws(MirrorError) -> [String] {
        guard try await wrap({ () async throws(IndexError) in try await index.repositoryExists(repository) }) else {
            throw MirrorError(.nameUnknown, "\(repository) is not in the cache")
        }
        return try await wrap { () async throws(IndexError) in try await index.tags(repository) }
    }

    /// Cached manifests of `repository` whose subject is `digest`, then what a cached
    /// referrers-tag-scheme index lists of what is cached here too: an offline mirror lists
    /// nothing a client could not then fetch.
    public func referrers(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> [Descriptor] {
        var recorded: [Descriptor] = []
        for record in try await wrap({ () async throws(IndexError) in try await index.referrers(repository, subject: digest) }) {
            var descriptor = Descriptor(mediaType: record.mediaType, digest: record.digest, size: record.size,
                                        annotations: record.annotations, artifactType: record.artifactType)
            // Rows recorded before the spec's rule (config media type when no artifactType) lack it.
            if descriptor.artifactType == nil, let document = try? await parsedManifest(record.digest, mediaType: record.mediaType) {
                descriptor.artifactType = document.referrerArtifactType
            }
            recorded.append(descriptor)
        }
        var listed: [Descriptor] = []
        for descriptor in try await schemeIndexReferrers(repository, digest)
        where (try? await index.manifest(descriptor.digest, in: repository))?.linked == true {
            listed.append(descriptor)
        }
        return Referrers.merge(recorded, listed)
    }

    /// What the cached referrers-tag-scheme index (`sha256-<hex>`) of `digest` lists, or
    /// nothing when that tag is not cached or is not an index.
    public func schemeIndexReferrers(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> [Descriptor] {
        guard let tagged = try await wrap({ () async throws(IndexError) in try await index.tag(repository, Referrers.schemeTag(for: digest)) }),
              MediaType.isIndex(tagged.mediaType),
              let document = try? await parsedManifest(tagged.digest, mediaType: tagged.mediaType) else { return [] }
        return document.manifests
    }

    /// A stored manifest, parsed.
    func parsedManifest(_ digest: Digest, mediaType: String) async throws -> ManifestDocument {
        let content = try await manifestContent(digest, mediaType: mediaType)
        return try ManifestDocument(bytes: content.bytes, contentType: content.mediaType)
    }

    func wrap<T>(_ body: () async throws(IndexError) -> T) async throws(MirrorError) -> T {
        try await Self.wrapIndex(body)
    }

    /// An index failure, as the mirror core reports it.
    public static func wrapIndex<T>(_ body: () async throws(IndexError) -> T) async throws(MirrorError) -> T {
        do {
            return try await body()
        } catch {
            // The database's address stays in the log (the cause), out of the client's envelope.
            if error.code == .unavailable { throw MirrorError(.indexUnavailable, "the cache's index is unavailable; try again", cause: error) }
            throw MirrorError(.internal, error.description, cause: error)
        }
    }
}
