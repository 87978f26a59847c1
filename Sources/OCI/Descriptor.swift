/// A content descriptor: the typed, sized pointer that manifests and indexes are made of.
public struct Descriptor: Hashable, Sendable, Codable {
    public var mediaType: String
    public var digest: Digest
    public var size: Int64
    public var platform: Platform?
    public var annotations: [String: String]?
    public var artifactType: String?
    public var urls: [String]?

    public init(mediaType: String, digest: Digest, size: Int64, platform: Platform? = nil,
                annotations: [String: String]? = nil, artifactType: String? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.platform = platform
        self.annotations = annotations
        self.artifactType = artifactType
    }

    /// The annotation OCI layouts use for the reference an entry was saved as.
    public static let refNameAnnotation = "org.opencontainers.image.ref.name"
}
