import Foundation

/// A manifest or index decoded only to read its descriptors.
///
/// The mirror never re-encodes a manifest: the bytes that were verified against the
/// digest are the bytes that are stored and served. This type is a read-only view.
public struct ManifestDocument: Sendable {
    /// Manifests larger than this are refused, as distribution and containerd do.
    public static let maxSize = 4 * 1024 * 1024

    public let mediaType: String
    public let config: Descriptor?
    public let layers: [Descriptor]
    public let manifests: [Descriptor]
    public let subject: Descriptor?
    public let artifactType: String?
    public let annotations: [String: String]?

    public var isIndex: Bool { MediaType.isIndex(mediaType) }

    /// Blobs this manifest needs (config and layers), without foreign layers served from elsewhere.
    public var blobs: [Descriptor] {
        ([config].compactMap { $0 } + layers).filter { $0.urls?.isEmpty ?? true }
    }

    private struct Wire: Decodable {
        var schemaVersion: Int?
        var mediaType: String?
        var config: Descriptor?
        var layers: [Descriptor]?
        var manifests: [Descriptor]?
        var subject: Descriptor?
        var artifactType: String?
        var annotations: [String: String]?
        var fsLayers: [FSLayer]?
        struct FSLayer: Decodable {}
    }

    /// Decodes `bytes`. `contentType` is used when the document carries no `mediaType`.
    public init(bytes: some Collection<UInt8>, contentType: String? = nil) throws(OCIError) {
        guard bytes.count <= Self.maxSize else {
            throw OCIError(.invalidManifest, "manifest is larger than \(Self.maxSize) bytes")
        }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(bytes))
        } catch {
            throw OCIError(.invalidManifest, "manifest is not valid JSON: \(error)")
        }
        let declared = wire.mediaType ?? contentType.map(Self.stripParameters)
        let inferred: String
        if let declared, MediaType.isManifest(declared) {
            inferred = declared
        } else if wire.manifests != nil {
            inferred = MediaType.ociIndex
        } else if wire.config != nil {
            inferred = MediaType.ociManifest
        } else if wire.fsLayers != nil {
            inferred = MediaType.dockerSchema1
        } else if let declared {
            inferred = declared
        } else {
            throw OCIError(.invalidManifest, "document is neither a manifest nor an index")
        }
        if MediaType.isIndex(inferred), wire.manifests == nil {
            throw OCIError(.invalidManifest, "index has no manifests field")
        }
        if MediaType.isImageManifest(inferred), wire.config == nil {
            throw OCIError(.invalidManifest, "manifest has no config")
        }
        self.mediaType = inferred
        self.config = wire.config
        self.layers = wire.layers ?? []
        self.manifests = wire.manifests ?? []
        self.subject = wire.subject
        self.artifactType = wire.artifactType
        self.annotations = wire.annotations
    }

    /// `application/json; charset=utf-8` → `application/json`
    public static func stripParameters(_ type: String) -> String {
        let base = type.split(separator: ";", maxSplits: 1).first.map(String.init) ?? type
        return base.trimmingCharacters(in: .whitespaces).lowercased()
    }
}

/// The `index.json` of an OCI image layout.
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
    public var annotations: [String: String]?

    public init(manifests: [Descriptor], annotations: [String: String]? = nil) {
        self.schemaVersion = 2
        self.mediaType = MediaType.ociIndex
        self.manifests = manifests
        self.annotations = annotations
    }
}
