import Foundation
import OCI

/// Writes small OCI image layouts for tests: blobs, manifests, an optional index, and
/// `index.json` with ref-name annotations.
struct LayoutFixture {
    let root: String
    private(set) var entries: [Descriptor] = []
    private var generator: SeededGenerator

    init(root: String, seed: UInt64 = 1) throws {
        self.root = root
        self.generator = SeededGenerator(seed: seed)
        try FileManager.default.createDirectory(atPath: root + "/blobs/sha256", withIntermediateDirectories: true)
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: root + "/oci-layout"))
    }

    /// Stores bytes as a blob and returns its descriptor.
    @discardableResult
    func blob(_ bytes: [UInt8], mediaType: String) throws -> Descriptor {
        let digest = DigestHasher.digest(of: bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path(of: digest)))
        return Descriptor(mediaType: mediaType, digest: digest, size: Int64(bytes.count))
    }

    func path(of digest: Digest) -> String { root + "/blobs/sha256/" + digest.hex }

    mutating func randomBytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// An image manifest with `layers` random layers, for `platform`.
    mutating func image(layers: [Int], platform: Platform = .init(os: "linux", architecture: "amd64"),
                        mediaType: String = MediaType.ociManifest, subject: Descriptor? = nil,
                        artifactType: String? = nil) throws -> (manifest: Descriptor, blobs: [Descriptor]) {
        var layerDescriptors: [Descriptor] = []
        for size in layers {
            layerDescriptors.append(try blob(randomBytes(size), mediaType: "application/vnd.oci.image.layer.v1.tar"))
        }
        let diffIDs = layerDescriptors.map { "\"\($0.digest)\"" }.joined(separator: ",")
        let variant = platform.variant.map { ",\"variant\":\"\($0)\"" } ?? ""
        let configJSON = #"{"architecture":"\#(platform.architecture)","os":"\#(platform.os)"\#(variant),"rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{}}"#
        let config = try blob(Array(configJSON.utf8), mediaType: "application/vnd.oci.image.config.v1+json")
        let layersJSON = layerDescriptors.map(Self.json).joined(separator: ",")
        var fields = [#""schemaVersion":2"#, #""mediaType":"\#(mediaType)""#, #""config":\#(Self.json(config))"#, #""layers":[\#(layersJSON)]"#]
        if let subject { fields.append(#""subject":\#(Self.json(subject))"#) }
        if let artifactType { fields.append(#""artifactType":"\#(artifactType)""#) }
        let manifest = try blob(Array("{\(fields.joined(separator: ","))}".utf8), mediaType: mediaType)
        var withPlatform = manifest
        withPlatform.platform = platform
        return (withPlatform, [config] + layerDescriptors)
    }

    /// An OCI index over the given manifests.
    func index(_ manifests: [Descriptor]) throws -> Descriptor {
        let body = manifests.map(Self.json).joined(separator: ",")
        return try blob(Array(#"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(body)]}"#.utf8), mediaType: MediaType.ociIndex)
    }

    /// Adds an `index.json` entry for `descriptor` tagged `refName`, and rewrites index.json.
    mutating func add(_ descriptor: Descriptor, refName: String?) throws {
        var entry = descriptor
        entry.platform = nil
        if let refName { entry.annotations = [Descriptor.refNameAnnotation: refName] }
        entries.append(entry)
        let data = try JSONEncoder().encode(ImageIndex(manifests: entries))
        try data.write(to: URL(fileURLWithPath: root + "/index.json"))
    }

    static func json(_ d: Descriptor) -> String {
        var s = #"{"mediaType":"\#(d.mediaType)","digest":"\#(d.digest)","size":\#(d.size)"#
        if let p = d.platform {
            s += #","platform":{"architecture":"\#(p.architecture)","os":"\#(p.os)""#
            if let v = p.variant { s += #","variant":"\#(v)""# }
            s += "}"
        }
        return s + "}"
    }
}

/// A reproducible random source (SplitMix64), so failures can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A fresh temporary directory, removed by `remove()`.
struct TemporaryDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "rm-test-" + UUID().uuidString.lowercased()
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Regular files below a directory, for "nothing was left behind" checks.
func regularFiles(under path: String) -> [String] {
    guard let e = FileManager.default.enumerator(atPath: path) else { return [] }
    var out: [String] = []
    while let item = e.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path + "/" + item, isDirectory: &isDir), !isDir.boolValue { out.append(item) }
    }
    return out
}
