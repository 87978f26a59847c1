import OCI

public struct TagRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    /// Unix seconds of the last time the upstream confirmed (or import set) this tag.
    public let checkedAt: Int64

    public init(digest: Digest, mediaType: String, checkedAt: Int64) {
        self.digest = digest
        self.mediaType = mediaType
        self.checkedAt = checkedAt
    }
}

public struct ManifestRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64

    public init(digest: Digest, mediaType: String, size: Int64) {
        self.digest = digest
        self.mediaType = mediaType
        self.size = size
    }
}

public struct ChildRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64
    public let platform: Platform?

    public init(digest: Digest, mediaType: String, size: Int64, platform: Platform?) {
        self.digest = digest
        self.mediaType = mediaType
        self.size = size
        self.platform = platform
    }
}

public struct ReferrerRecord: Sendable, Equatable {
    public let digest: Digest
    public let mediaType: String
    public let size: Int64
    public let artifactType: String?
    public let annotations: [String: String]?

    public init(digest: Digest, mediaType: String, size: Int64, artifactType: String?, annotations: [String: String]?) {
        self.digest = digest
        self.mediaType = mediaType
        self.size = size
        self.artifactType = artifactType
        self.annotations = annotations
    }
}

public struct ListingRow: Sendable {
    public let repository: RepositoryKey
    public let tag: String
    public let digest: Digest
    public let mediaType: String
    public let checkedAt: Int64
    public var size: Int64

    public init(repository: RepositoryKey, tag: String, digest: Digest, mediaType: String, checkedAt: Int64, size: Int64) {
        self.repository = repository
        self.tag = tag
        self.digest = digest
        self.mediaType = mediaType
        self.checkedAt = checkedAt
        self.size = size
    }
}

/// Everything one verified fill or import adds, written in one transaction.
public struct ContentBatch: Sendable {
    public struct Blob: Sendable { public let digest: Digest; public let size: Int64 }
    public struct Manifest: Sendable {
        public let digest: Digest
        public let mediaType: String
        public let size: Int64
        public let subject: Digest?
        public let artifactType: String?
        public let annotations: [String: String]?
        /// Config and layers.
        public let references: [Digest]
        /// Index entries, in order.
        public let children: [Descriptor]

        /// The same entry, recorded under the media type the upstream served it as.
        public init(copying other: Manifest, mediaType: String) {
            self.digest = other.digest
            self.mediaType = mediaType
            self.size = other.size
            self.subject = other.subject
            self.artifactType = other.artifactType
            self.annotations = other.annotations
            self.references = other.references
            self.children = other.children
        }

        public init(digest: Digest, size: Int64, document: ManifestDocument) {
            self.digest = digest
            self.mediaType = document.mediaType
            self.size = size
            self.subject = document.subject?.digest
            // What a referrers index lists it as (its own, else its config's media type).
            self.artifactType = document.referrerArtifactType
            self.annotations = document.annotations
            self.references = document.blobs.map(\.digest)
            self.children = document.manifests
        }
    }
    public struct Link: Sendable { public let repository: RepositoryKey; public let digest: Digest }
    public struct TagEntry: Sendable {
        public let repository: RepositoryKey
        public let tag: Tag
        public let digest: Digest
        public let mediaType: String
        public let checkedAt: Int64?
    }

    public var blobs: [Blob] = []
    public var manifests: [Manifest] = []
    public var links: [Link] = []
    public var tags: [TagEntry] = []
    /// Images (root manifests) to pin. Eviction never removes a pinned image, nor the
    /// children, configs and layers it references; pinning the root alone keeps `unpin` exact.
    public var pinned: Set<Digest> = []

    public init() {}

    public mutating func addBlob(_ digest: Digest, size: Int64) { blobs.append(Blob(digest: digest, size: size)) }
    public mutating func link(_ repository: RepositoryKey, _ digest: Digest) { links.append(Link(repository: repository, digest: digest)) }
    public mutating func tag(_ repository: RepositoryKey, _ tag: Tag, _ digest: Digest, mediaType: String, checkedAt: Int64? = nil) {
        tags.append(TagEntry(repository: repository, tag: tag, digest: digest, mediaType: mediaType, checkedAt: checkedAt))
    }
}

/// What an eviction pass removed (or, in a dry run, would remove).
public struct EvictionPlan: Sendable {
    public struct Image: Sendable {
        public let digest: Digest
        public let tags: [String]
        public init(digest: Digest, tags: [String]) {
            self.digest = digest
            self.tags = tags
        }
    }
    public struct Blob: Sendable {
        public let digest: Digest
        public let size: Int64
        public init(digest: Digest, size: Int64) {
            self.digest = digest
            self.size = size
        }
    }
    public var images: [Image] = []
    /// Blobs (manifests included) whose files are to be deleted.
    public var blobs: [Blob] = []
    /// Unreferenced blobs kept because a response is streaming them.
    public var skippedInUse: [Digest] = []
    public var bytesBefore: Int64 = 0
    /// What remains once in-use blobs are released too.
    public var bytesAfter: Int64 = 0
    public var bytesFreed: Int64 { blobs.reduce(0) { $0 + $1.size } }

    public init() {}
}
