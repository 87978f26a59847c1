/// Manifest media types the mirror knows. Stored manifests keep whatever type the
/// upstream sent; these constants only classify them.
public enum MediaType {
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    /// Schema 1 types are recognised so that they can be refused clearly, never served as something else.
    public static let dockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json"
    public static let dockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    public static let ociLayout = "application/vnd.oci.image.layout.v1+json"
    public static let ociEmpty = "application/vnd.oci.empty.v1+json"

    /// The Accept set a modern puller sends, most preferred first.
    public static let manifestAccept = [ociIndex, ociManifest, dockerManifestList, dockerManifest]

    public static func isIndex(_ type: String) -> Bool { type == ociIndex || type == dockerManifestList }
    public static func isImageManifest(_ type: String) -> Bool { type == ociManifest || type == dockerManifest }
    public static func isSchema1(_ type: String) -> Bool { type == dockerSchema1 || type == dockerSchema1Signed }
    public static func isManifest(_ type: String) -> Bool { isIndex(type) || isImageManifest(type) || isSchema1(type) }
}
