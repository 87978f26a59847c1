import Foundation
import OCI
import Testing

@Suite struct DigestGrammar {
    static let hex64 = String(repeating: "a", count: 64)

    @Test(arguments: [
        "sha256:" + String(repeating: "a", count: 64),
        "sha256:" + String(repeating: "0123456789abcdef", count: 4),
        "sha512:" + String(repeating: "f", count: 128),
    ])
    func accepts(_ text: String) throws {
        let digest = try Digest(parsing: text)
        #expect(digest.description == text)
    }

    @Test(arguments: [
        "", "sha256", "sha256:", "sha256:" + String(repeating: "A", count: 64), "sha256:" + String(repeating: "a", count: 63),
        "sha256:" + String(repeating: "a", count: 65), "md5:" + String(repeating: "a", count: 32),
        "SHA256:" + String(repeating: "a", count: 64), "sha256:" + String(repeating: "g", count: 64),
        "sha512:" + String(repeating: "a", count: 64), "sha256:../../" + String(repeating: "a", count: 58),
    ])
    func rejects(_ text: String) {
        #expect(throws: OCIError.self) { try Digest(parsing: text) }
    }

    @Test func shardedPathUsesOnlyTheParsedValue() throws {
        let d = try Digest(parsing: "sha256:" + Self.hex64)
        #expect(d.shardedPath == "sha256/aa/" + Self.hex64)
    }
}

@Suite struct NameAndTagGrammar {
    @Test(arguments: ["a", "library/alpine", "a-b__c.d/e", "a--b", "x/y/z/0", "a_b"])
    func acceptsNames(_ name: String) throws {
        #expect(try RepositoryName(parsing: name).value == name)
    }

    @Test(arguments: ["", "A", "Alpine", "a/../b", "..", "a//b", "a_", "-a", "a___b", "a/", "/a", "a b", "a%2fb", "%2e%2e", "a:b",
                      String(repeating: "a", count: 256)])
    func rejectsNames(_ name: String) {
        #expect(throws: OCIError.self) { try RepositoryName(parsing: name) }
    }

    @Test func nameLengthCap() throws {
        #expect(try RepositoryName(parsing: String(repeating: "a", count: 255)).value.count == 255)
    }

    @Test(arguments: ["latest", "v1.2.3", "_x", "A-b_c.d", String(repeating: "t", count: 128)])
    func acceptsTags(_ tag: String) throws {
        #expect(try Tag(parsing: tag).value == tag)
    }

    @Test(arguments: ["", "-x", ".x", "a/b", "a:b", "a b", String(repeating: "t", count: 129)])
    func rejectsTags(_ tag: String) {
        #expect(throws: OCIError.self) { try Tag(parsing: tag) }
    }

    @Test func manifestReferenceIsTagOrDigest() throws {
        #expect(try ManifestReference(parsing: "v1") == .tag(Tag(parsing: "v1")))
        let digest = "sha256:" + String(repeating: "b", count: 64)
        #expect(try ManifestReference(parsing: digest) == .digest(Digest(parsing: digest)))
        #expect(throws: OCIError.self) { try ManifestReference(parsing: "sha256:short") }
    }
}

@Suite struct ImageReferences {
    @Test(arguments: [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("ghcr.io/org/app:1.0", "ghcr.io/org/app:1.0"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/test/multi:v1", "127.0.0.1:5000/test/multi:v1"),
        ("quay.io/a/b@sha256:" + String(repeating: "c", count: 64), "quay.io/a/b@sha256:" + String(repeating: "c", count: 64)),
    ])
    func normalizes(_ input: String, _ expected: String) throws {
        #expect(try ImageReference(parsing: input).description == expected)
    }

    @Test(arguments: ["", "UPPER/case", "a/b:bad tag", "ghcr.io/", "x@sha256:zz", ":tag"])
    func rejects(_ input: String) {
        #expect(throws: OCIError.self) { try ImageReference(parsing: input) }
    }
}

@Suite struct Platforms {
    @Test func parsesAndNormalizes() throws {
        #expect(try Platform(parsing: "linux/arm64").normalized == Platform(os: "linux", architecture: "arm64", variant: "v8"))
        #expect(try Platform(parsing: "linux/arm").normalized.variant == "v7")
        #expect(try Platform(parsing: "linux/x86_64").normalized.architecture == "amd64")
        #expect(throws: OCIError.self) { try Platform(parsing: "linux") }
        #expect(throws: OCIError.self) { try Platform(parsing: "linux/arm/v7/x") }
    }

    @Test func matchesIndexEntries() throws {
        let arm64 = try Platform(parsing: "linux/arm64")
        #expect(arm64.matches(Platform(os: "linux", architecture: "arm64", variant: "v8")))
        #expect(arm64.matches(Platform(os: "linux", architecture: "arm64")))
        #expect(!arm64.matches(Platform(os: "linux", architecture: "amd64")))
        #expect(try Platform(parsing: "linux/arm/v7").matches(Platform(os: "linux", architecture: "arm")))
        #expect(!(try Platform(parsing: "linux/arm/v6").matches(Platform(os: "linux", architecture: "arm"))))
    }
}

@Suite struct Hashing {
    @Test func knownVectors() {
        #expect(DigestHasher.digest(of: [UInt8]()).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(DigestHasher.digest(of: Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(DigestHasher.digest(of: Array("abc".utf8), algorithm: .sha512).hex.hasPrefix("ddaf35a193617aba"))
    }

    @Test func incrementalEqualsOneShot() {
        var generator = SeededGenerator(seed: 7)
        let bytes = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var hasher = DigestHasher()
        for chunk in stride(from: 0, to: bytes.count, by: 777) {
            hasher.update(bytes[chunk..<min(chunk + 777, bytes.count)])
        }
        #expect(hasher.finalize() == DigestHasher.digest(of: bytes))
    }

    @Test func verifierChecksDigestAndSize() throws {
        let bytes = Array("hello".utf8)
        let digest = DigestHasher.digest(of: bytes)
        var ok = DigestVerifier(expected: digest, expectedSize: 5)
        try bytes.withUnsafeBytes { try ok.update($0) }
        try ok.verify()

        var short = DigestVerifier(expected: digest, expectedSize: 6)
        try bytes.withUnsafeBytes { try short.update($0) }
        let shortPasses = Self.passes(short)
        #expect(!shortPasses)

        var long = DigestVerifier(expected: digest, expectedSize: 4)
        #expect(throws: OCIError.self) { try bytes.withUnsafeBytes { try long.update($0) } }

        var wrong = DigestVerifier(expected: DigestHasher.digest(of: Array("other".utf8)))
        try bytes.withUnsafeBytes { try wrong.update($0) }
        let wrongPasses = Self.passes(wrong)
        #expect(!wrongPasses)
    }

    static func passes(_ verifier: consuming DigestVerifier) -> Bool {
        do {
            try verifier.verify()
            return true
        } catch {
            return false
        }
    }
}

@Suite struct ManifestDecoding {
    @Test func infersTypes() throws {
        let index = try ManifestDocument(bytes: Array(#"{"schemaVersion":2,"manifests":[]}"#.utf8))
        #expect(index.mediaType == MediaType.ociIndex)
        let digest = "sha256:" + String(repeating: "a", count: 64)
        let manifest = try ManifestDocument(bytes: Array(#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"\#(digest)","size":1},"layers":[]}"#.utf8))
        #expect(manifest.mediaType == MediaType.ociManifest)
        #expect(manifest.blobs.map(\.digest.description) == [digest])
        let docker = try ManifestDocument(bytes: Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.dockerManifestList)","manifests":[]}"#.utf8))
        #expect(docker.isIndex)
    }

    @Test func refusesOversizedAndInvalid() {
        let big = [UInt8](repeating: 0x20, count: ManifestDocument.maxSize + 1)
        #expect(throws: OCIError.self) { try ManifestDocument(bytes: big) }
        #expect(throws: OCIError.self) { try ManifestDocument(bytes: Array("not json".utf8)) }
        #expect(throws: OCIError.self) { try ManifestDocument(bytes: Array(#"{"mediaType":"\#(MediaType.ociManifest)"}"#.utf8)) }
    }
}

@Suite struct MessageAuthentication {
    /// RFC 4231, test cases 1 and 2.
    @Test func hmacSHA256MatchesTheRFCVectors() {
        let one = HMACSHA256.mac(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))
        #expect(HMACSHA256.hex(one) == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        let two = HMACSHA256.mac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))
        #expect(HMACSHA256.hex(two) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(HMACSHA256.equal(one, one))
        #expect(!HMACSHA256.equal(one, two))
        #expect(!HMACSHA256.equal(one, Array(one.dropLast())))
    }
}
