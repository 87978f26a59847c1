/// The distribution spec's referrers, and the tags that stand in for them on registries
/// without the referrers API.
///
/// - The referrers tag scheme: `<alg>-<hex>` (`sha256-0123…`) names an OCI index whose
///   `manifests` are the subject's referrers. oras and notation push it where the API is absent.
/// - cosign's tags: `sha256-<hex>.sig`, `.att` and `.sbom` hold a signature, an attestation
///   and an SBOM of the subject, with no `subject` field at all.
public enum Referrers {
    /// Suffixes cosign gives the tags of what it attaches to a digest.
    public static let cosignSuffixes = ["sig", "att", "sbom"]

    /// The referrers-tag-scheme tag of `subject`: `<alg>-<hex>`, the algorithm cut to 32
    /// characters and the hex to 64, as the spec says.
    public static func schemeTag(for subject: Digest) -> Tag {
        // Always valid: lowercase letters, digits and one dash.
        try! Tag(parsing: "\(subject.algorithm.rawValue.prefix(32))-\(subject.hex.prefix(64))")
    }

    /// cosign's tags for `subject`: `sha256-<hex>.sig`, `.att`, `.sbom`.
    public static func cosignTags(for subject: Digest) -> [Tag] {
        let base = schemeTag(for: subject).value
        return cosignSuffixes.map { try! Tag(parsing: "\(base).\($0)") }
    }

    /// The descriptor a referrers index lists for a manifest: its `artifactType`, or the
    /// config's media type when it has none, and its annotations.
    public static func descriptor(digest: Digest, size: Int64, mediaType: String, document: ManifestDocument) -> Descriptor {
        Descriptor(mediaType: mediaType, digest: digest, size: size, annotations: document.annotations,
                   artifactType: document.referrerArtifactType)
    }

    /// Lists in order of trust, joined: the first list's descriptor wins for a digest.
    public static func merge(_ lists: [Descriptor]...) -> [Descriptor] {
        var seen: Set<Digest> = []
        var out: [Descriptor] = []
        for list in lists {
            for descriptor in list where seen.insert(descriptor.digest).inserted { out.append(descriptor) }
        }
        return out
    }
}

extension ManifestDocument {
    /// The `artifactType` a referrers index gives this manifest: its own, else its config's
    /// media type (distribution spec, "Listing Referrers").
    public var referrerArtifactType: String? { artifactType ?? config?.mediaType }
}
