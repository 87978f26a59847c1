import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Mirror
import NIOCore
import OCI
@testable import RegistryAPI
import RegistryMirror
import Testing

/// A data directory holding a few imported images, served by the real application.
struct ServedFixture {
    let harness: ImportHarness
    let single: (manifest: Descriptor, blobs: [Descriptor])
    let bigLayer: Descriptor
    let index: Descriptor
    let referrer: Descriptor
    /// A referrer with no `artifactType`: listed under its config's media type.
    let plainReferrer: Descriptor
    let layoutRoot: String

    init() async throws {
        harness = try ImportHarness()
        var layout = try LayoutFixture(root: harness.dir.path + "/layout")
        single = try layout.image(layers: [1000, 3 << 20])
        bigLayer = single.blobs[2]
        let children = try [
            layout.image(layers: [10], platform: .init(os: "linux", architecture: "amd64")),
            layout.image(layers: [20], platform: .init(os: "linux", architecture: "arm64", variant: "v8")),
        ]
        index = try layout.index(children.map(\.manifest))
        referrer = try layout.image(layers: [5], subject: single.manifest, artifactType: "application/vnd.example.sig").manifest
        for tag in ["v1", "v2", "v3", "v4", "v5"] { try layout.add(single.manifest, refName: "docker.io/test/single:\(tag)") }
        try layout.add(referrer, refName: "docker.io/test/single:sig")
        plainReferrer = try layout.image(layers: [6], subject: single.manifest).manifest
        try layout.add(plainReferrer, refName: "docker.io/test/single@\(plainReferrer.digest)")
        try layout.add(index, refName: "docker.io/test/multi:v1")
        layoutRoot = layout.root
        _ = try await harness.importer.importBundle(at: layout.root)
    }

    func bytes(_ d: Descriptor) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: layoutRoot + "/blobs/sha256/" + d.digest.hex))) }

    func app(_ configure: (inout ServeSettings) -> Void = { _ in }) throws -> some ApplicationProtocol {
        var settings = ServeSettings()
        settings.host = "127.0.0.1"
        settings.port = 0
        settings.dataDirectory = harness.dir.path + "/data"
        settings.offline = true  // the serving side alone; pull-through has its own tests
        configure(&settings)
        return try buildApplication(settings, logger: Logger(label: "test"))
    }

    /// Runs `body` against the router harness (buffered file bodies) and a live server (sendfile).
    func test(_ configure: (inout ServeSettings) -> Void = { _ in }, _ body: @escaping @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        for setup in [TestingSetup.router, .live] {
            try await app(configure).test(setup, body)
        }
    }
}

func envelopeCode(_ response: TestResponse) throws -> String? {
    try JSONDecoder().decode(Envelope.self, from: Data(buffer: response.body)).errors.first?.code
}

@Suite(.serialized) struct HTTPTests {
    @Test func baseEndpoint() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        try await f.test { client in
            let r = try await client.execute(uri: "/v2/", method: .get)
            #expect(r.status == .ok)
            #expect(r.headers[HTTPField.Name("Docker-Distribution-API-Version")!] == "registry/2.0")
        }
    }

    @Test func manifestsAreServedByteExactWithHeaders() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let manifestBytes = try f.bytes(f.single.manifest)
        let indexBytes = try f.bytes(f.index)
        let digest = f.single.manifest.digest
        try await f.test { client in
            let get = try await client.execute(uri: "/v2/test/single/manifests/v1", method: .get)
            #expect(get.status == .ok)
            #expect(Array(buffer: get.body) == manifestBytes)
            #expect(get.headers[.contentType] == MediaType.ociManifest)
            #expect(get.headers[.contentLength] == String(manifestBytes.count))
            #expect(get.headers[.dockerContentDigest] == digest.description)
            #expect(get.headers[.eTag] == "\"\(digest)\"")
            #expect(get.headers[values: .contentEncoding].isEmpty)

            let head = try await client.execute(uri: "/v2/test/single/manifests/v1", method: .head)
            #expect(head.status == .ok)
            #expect(head.body.readableBytes == 0)
            for name in [HTTPField.Name.contentType, .contentLength, .dockerContentDigest, .eTag] {
                #expect(head.headers[name] == get.headers[name], "HEAD \(name) equals GET")
            }

            let byDigest = try await client.execute(uri: "/v2/test/single/manifests/\(digest)", method: .get)
            #expect(Array(buffer: byDigest.body) == manifestBytes)

            let idx = try await client.execute(uri: "/v2/test/multi/manifests/v1", method: .get)
            #expect(Array(buffer: idx.body) == indexBytes)
            #expect(idx.headers[.contentType] == MediaType.ociIndex)

            let library = try await client.execute(uri: "/v2/docker.io/test/single/manifests/v1", method: .get)
            #expect(library.status == .ok, "a path prefix naming the upstream routes to it")
        }
    }

    @Test func conditionalAndAcceptNegotiation() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let digest = f.single.manifest.digest
        try await f.test { client in
            let cached = try await client.execute(uri: "/v2/test/single/manifests/v1", method: .get, headers: [.ifNoneMatch: "\"\(digest)\""])
            #expect(cached.status == .notModified)
            #expect(cached.body.readableBytes == 0)

            let dockerOnly = try await client.execute(uri: "/v2/test/single/manifests/v1", method: .get,
                                                      headers: [.accept: MediaType.dockerManifest])
            #expect(dockerOnly.status == .notFound)
            #expect(try envelopeCode(dockerOnly) == "MANIFEST_UNKNOWN")

            var twoLines = HTTPFields()
            twoLines.append(HTTPField(name: .accept, value: MediaType.dockerManifest))
            twoLines.append(HTTPField(name: .accept, value: "\(MediaType.dockerManifestList), \(MediaType.ociManifest);q=0.9"))
            let merged = try await client.execute(uri: "/v2/test/single/manifests/v1", method: .get, headers: twoLines)
            #expect(merged.status == .ok)
            #expect(merged.headers[.contentType] == MediaType.ociManifest, "the stored type is served, never converted")
        }
    }

    @Test func blobsWithRangesAndHead() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let small = f.single.blobs[1]
        let smallBytes = try f.bytes(small)
        let bigBytes = try f.bytes(f.bigLayer)
        let big = f.bigLayer
        try await f.test { client in
            let full = try await client.execute(uri: "/v2/test/single/blobs/\(big.digest)", method: .get)
            #expect(full.status == .ok)
            #expect(full.headers[.contentLength] == String(big.size))
            #expect(Array(buffer: full.body) == bigBytes, "a 3 MiB blob arrives intact")
            #expect(full.headers[.dockerContentDigest] == big.digest.description)
            #expect(full.headers[values: .contentEncoding].isEmpty)

            let head = try await client.execute(uri: "/v2/test/single/blobs/\(big.digest)", method: .head)
            #expect(head.status == .ok)
            #expect(head.body.readableBytes == 0)
            #expect(head.headers[.contentLength] == String(big.size))
            #expect(head.headers[.dockerContentDigest] == big.digest.description)

            let ranged = try await client.execute(uri: "/v2/test/single/blobs/\(small.digest)", method: .get, headers: [.range: "bytes=10-19"])
            #expect(ranged.status == .partialContent)
            #expect(ranged.headers[.contentRange] == "bytes 10-19/\(small.size)")
            #expect(ranged.headers[.contentLength] == "10")
            #expect(Array(buffer: ranged.body) == Array(smallBytes[10...19]))

            let resume = try await client.execute(uri: "/v2/test/single/blobs/\(big.digest)", method: .get, headers: [.range: "bytes=3000000-"])
            #expect(resume.status == .partialContent)
            #expect(Array(buffer: resume.body) == Array(bigBytes[3_000_000...]), "a resumed pull gets the tail through sendfile")

            let suffix = try await client.execute(uri: "/v2/test/single/blobs/\(small.digest)", method: .get, headers: [.range: "bytes=-5"])
            #expect(Array(buffer: suffix.body) == Array(smallBytes.suffix(5)))

            let past = try await client.execute(uri: "/v2/test/single/blobs/\(small.digest)", method: .get, headers: [.range: "bytes=\(small.size)-"])
            #expect(past.status == .rangeNotSatisfiable)
            #expect(past.headers[.contentRange] == "bytes */\(small.size)")
            #expect(try envelopeCode(past) == "UNSUPPORTED")

            let multi = try await client.execute(uri: "/v2/test/single/blobs/\(small.digest)", method: .get, headers: [.range: "bytes=0-1,5-6"])
            #expect(multi.status == .ok)
            #expect(Array(buffer: multi.body) == smallBytes)
        }
    }

    @Test func repositoryScopingAndErrors() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let layer = f.single.blobs[1].digest
        let manifest = f.single.manifest.digest
        try await f.test { client in
            let cases: [(String, HTTPRequest.Method, HTTPResponse.Status, String)] = [
                ("/v2/test/multi/blobs/\(layer)", .get, .notFound, "BLOB_UNKNOWN"),
                ("/v2/test/multi/manifests/\(manifest)", .get, .notFound, "MANIFEST_UNKNOWN"),
                ("/v2/test/single/manifests/nope", .get, .notFound, "MANIFEST_UNKNOWN"),
                ("/v2/test/single/manifests/" + String(repeating: "t", count: 129), .get, .notFound, "MANIFEST_UNKNOWN"),
                ("/v2/Test/single/manifests/v1", .get, .badRequest, "NAME_INVALID"),
                ("/v2/test/%2e%2e/single/manifests/v1", .get, .badRequest, "NAME_INVALID"),
                ("/v2/test/single/blobs/sha256:XYZ", .get, .badRequest, "DIGEST_INVALID"),
                ("/v2/test/single/blobs/sha256:" + String(repeating: "A", count: 64), .get, .badRequest, "DIGEST_INVALID"),
                ("/v2/test/single/blobs/md5:abc", .get, .badRequest, "DIGEST_INVALID"),
                ("/v2/unknown/repo/tags/list", .get, .notFound, "NAME_UNKNOWN"),
                ("/v2/test/single/tags/list?n=-1", .get, .badRequest, "UNSUPPORTED"),
                ("/v2/test/single/manifests/v1", .put, .methodNotAllowed, "UNSUPPORTED"),
                ("/v2/test/single/blobs/uploads/", .post, .methodNotAllowed, "UNSUPPORTED"),
                ("/v2/test/single/manifests/v1", .delete, .methodNotAllowed, "UNSUPPORTED"),
                ("/v2/test/single/nothing/here", .get, .notFound, "UNSUPPORTED"),
            ]
            for (uri, method, status, code) in cases {
                let r = try await client.execute(uri: uri, method: method)
                #expect(r.status == status, "\(method) \(uri)")
                #expect(try envelopeCode(r) == code, "\(method) \(uri)")
            }
        }
    }

    @Test func tagListPaginates() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        struct TagList: Decodable { let name: String; let tags: [String] }
        try await f.test { client in
            let all = try await client.execute(uri: "/v2/test/single/tags/list", method: .get)
            let list = try JSONDecoder().decode(TagList.self, from: Data(buffer: all.body))
            #expect(list.tags == ["sig", "v1", "v2", "v3", "v4", "v5"])
            #expect(list.name == "test/single")

            let page = try await client.execute(uri: "/v2/test/single/tags/list?n=2", method: .get)
            #expect(try JSONDecoder().decode(TagList.self, from: Data(buffer: page.body)).tags == ["sig", "v1"])
            #expect(page.headers[.link] == "</v2/test/single/tags/list?n=2&last=v1>; rel=\"next\"")

            let next = try await client.execute(uri: "/v2/test/single/tags/list?n=2&last=v1", method: .get)
            #expect(try JSONDecoder().decode(TagList.self, from: Data(buffer: next.body)).tags == ["v2", "v3"])

            let end = try await client.execute(uri: "/v2/test/single/tags/list?n=10&last=v4", method: .get)
            #expect(try JSONDecoder().decode(TagList.self, from: Data(buffer: end.body)).tags == ["v5"])
            #expect(end.headers[.link] == nil)
        }
    }

    @Test func referrersWithArtifactTypeFilter() async throws {
        let f = try await ServedFixture()
        defer { f.harness.dir.remove() }
        let subject = f.single.manifest.digest
        let referrer = f.referrer
        try await f.test { client in
            let r = try await client.execute(uri: "/v2/test/single/referrers/\(subject)", method: .get)
            #expect(r.status == .ok)
            #expect(r.headers[.contentType] == MediaType.ociIndex)
            let index = try JSONDecoder().decode(ImageIndex.self, from: Data(buffer: r.body))
            #expect(Set(index.manifests.map(\.digest)) == [referrer.digest, f.plainReferrer.digest])
            #expect(index.manifests.first { $0.digest == referrer.digest }?.artifactType == "application/vnd.example.sig")
            #expect(index.manifests.first { $0.digest == f.plainReferrer.digest }?.artifactType == "application/vnd.oci.image.config.v1+json")
            #expect(r.headers[.ociFiltersApplied] == nil)

            let match = try await client.execute(uri: "/v2/test/single/referrers/\(subject)?artifactType=application/vnd.example.sig", method: .get)
            #expect(try JSONDecoder().decode(ImageIndex.self, from: Data(buffer: match.body)).manifests.count == 1)
            #expect(match.headers[.ociFiltersApplied] == "artifactType")

            let none = try await client.execute(uri: "/v2/test/single/referrers/\(subject)?artifactType=other", method: .get)
            #expect(try JSONDecoder().decode(ImageIndex.self, from: Data(buffer: none.body)).manifests.isEmpty)

            let empty = try await client.execute(uri: "/v2/test/multi/referrers/\(subject)", method: .get)
            #expect(empty.status == .ok)
            #expect(try JSONDecoder().decode(ImageIndex.self, from: Data(buffer: empty.body)).manifests.isEmpty)
        }
    }
}

@Suite struct RangeAndAcceptParsing {
    @Test(arguments: [
        (nil, 100, ByteRange.full),
        ("bytes=0-9", 100, .partial(start: 0, end: 9)),
        ("bytes=90-", 100, .partial(start: 90, end: 99)),
        ("bytes=90-1000", 100, .partial(start: 90, end: 99)),
        ("bytes=-10", 100, .partial(start: 90, end: 99)),
        ("bytes=-1000", 100, .partial(start: 0, end: 99)),
        ("bytes=100-", 100, .unsatisfiable),
        ("bytes=9-5", 100, .unsatisfiable),
        ("bytes=abc", 100, .unsatisfiable),
        ("bytes=-0", 100, .unsatisfiable),
        ("bytes=99999999999999999999-", 100, .unsatisfiable),
        ("garbage", 100, .unsatisfiable),
        ("bytes=0-1,3-4", 100, .full),
        ("items=0-1", 100, .full),
        (" bytes=1-2 ", 100, .partial(start: 1, end: 2)),
        ("bytes=0-", 0, .unsatisfiable),
    ] as [(String?, Int64, ByteRange)])
    func range(_ header: String?, _ size: Int64, _ expected: ByteRange) {
        #expect(ByteRange.resolve(header, size: size) == expected)
    }

    @Test func accept() {
        #expect(AcceptNegotiation(headerValues: [String]()).accepts(MediaType.ociIndex))
        #expect(AcceptNegotiation(headerValues: ["*/*"]).accepts(MediaType.ociIndex))
        #expect(AcceptNegotiation(headerValues: ["application/*"]).accepts(MediaType.ociIndex))
        let docker = AcceptNegotiation(headerValues: [MediaType.dockerManifest, "\(MediaType.dockerManifestList) ; q=0.5"])
        #expect(docker.accepts(MediaType.dockerManifestList))
        #expect(!docker.accepts(MediaType.ociIndex))
        let merged = AcceptNegotiation(headerValues: ["\(MediaType.ociManifest),\(MediaType.ociIndex)"])
        #expect(merged.accepts(MediaType.ociIndex) && merged.accepts(MediaType.ociManifest))
        let spaced = AcceptNegotiation(headerValues: ["  Application/VND.OCI.image.index.v1+json ;q=1 ,\ttext/plain , ,"])
        #expect(spaced.types == [MediaType.ociIndex, "text/plain"])
    }
}
