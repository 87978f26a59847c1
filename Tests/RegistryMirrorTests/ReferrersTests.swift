@testable import Mirror
import OCI
@testable import RegistryAPI
import Testing

@Suite struct ReferrersTests {
    @Test func schemeAndCosignTags() throws {
        let subject = try Digest(parsing: "sha256:" + String(repeating: "ab", count: 32))
        #expect(Referrers.schemeTag(for: subject).value == "sha256-" + String(repeating: "ab", count: 32))
        #expect(Referrers.cosignTags(for: subject).map(\.value) == ["sig", "att", "sbom"].map { "sha256-\(String(repeating: "ab", count: 32)).\($0)" })
    }

    @Test func mergeKeepsTheFirstOfEachDigest() throws {
        let a = try Digest(parsing: "sha256:" + String(repeating: "a", count: 64))
        let b = try Digest(parsing: "sha256:" + String(repeating: "b", count: 64))
        let upstream = [Descriptor(mediaType: MediaType.ociManifest, digest: a, size: 1, artifactType: "from/upstream")]
        let cached = [Descriptor(mediaType: MediaType.ociManifest, digest: a, size: 1, artifactType: "from/cache"),
                      Descriptor(mediaType: MediaType.ociManifest, digest: b, size: 2)]
        let merged = Referrers.merge(upstream, cached)
        #expect(merged.map(\.digest) == [a, b])
        #expect(merged.first?.artifactType == "from/upstream")
    }

    @Test func artifactTypeFallsBackToTheConfigMediaType() throws {
        let config = #"{"mediaType":"application/vnd.example.config","digest":"sha256:\#(String(repeating: "c", count: 64))","size":2}"#
        let plain = try ManifestDocument(bytes: Array(#"{"schemaVersion":2,"config":\#(config),"layers":[]}"#.utf8))
        #expect(plain.referrerArtifactType == "application/vnd.example.config")
        let typed = try ManifestDocument(bytes: Array(#"{"schemaVersion":2,"artifactType":"application/x-sbom","config":\#(config),"layers":[]}"#.utf8))
        #expect(typed.referrerArtifactType == "application/x-sbom")
    }

    /// Keys come from request paths; the cache of upstream answers must not grow with them.
    @Test func referrerCacheIsBounded() throws {
        let cache = ReferrerCache(capacity: 4)
        for i in 0..<10 { cache["repo@\(i)"] = [] }
        #expect(cache.count == 4)
        #expect(cache["repo@0"] == nil)
        #expect(cache["repo@9"] != nil)
        cache["repo@9"] = []  // an update is not a new entry
        #expect(cache.count == 4 && cache["repo@6"] != nil)
    }

    /// The distribution spec's table; 5xx have no code there and keep distribution's.
    @Test func everyWireCodeIsTheSpecs() {
        let spec: Set = ["BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
                         "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
                         "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"]
        for code in RegistryError.Code.all {
            if code.status.code < 500 {
                #expect(spec.contains(code.name), "\(code.status.code) \(code.name) is not in the spec's table")
            } else {
                #expect(["UNKNOWN", "UNAVAILABLE"].contains(code.name), "\(code.status.code) \(code.name)")
            }
        }
    }
}
