import Foundation
import OCI

/// SplitMix64: small, seedable, good enough for filler bytes.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count + 8)
        while out.count < count {
            withUnsafeBytes(of: next().littleEndian) { out.append(contentsOf: $0) }
        }
        return Array(out.prefix(count))
    }
}

/// A minimal POSIX ustar writer: regular files only, which is all a synthetic layer needs.
enum Ustar {
    static let blockSize = 512

    /// A complete archive (entries, then two zero blocks) holding the given regular files.
    static func archive(_ files: [(name: String, contents: [UInt8])], mtime: Int = 1_700_000_000) -> [UInt8] {
        var out: [UInt8] = []
        for file in files {
            out += header(name: file.name, size: file.contents.count, mtime: mtime)
            out += file.contents
            let remainder = file.contents.count % blockSize
            if remainder != 0 { out += [UInt8](repeating: 0, count: blockSize - remainder) }
        }
        out += [UInt8](repeating: 0, count: 2 * blockSize)
        return out
    }

    static func header(name: String, size: Int, mtime: Int) -> [UInt8] {
        precondition(name.utf8.count < 100, "ustar names here must fit the 100-byte field")
        var block = [UInt8](repeating: 0, count: blockSize)
        func put(_ bytes: [UInt8], at offset: Int) {
            for (i, byte) in bytes.enumerated() { block[offset + i] = byte }
        }
        /// `width - 1` zero-padded octal digits, then NUL.
        func octal(_ value: Int, width: Int) -> [UInt8] {
            let digits = String(value, radix: 8)
            precondition(digits.count <= width - 1)
            return Array((String(repeating: "0", count: width - 1 - digits.count) + digits).utf8) + [0]
        }
        put(Array(name.utf8), at: 0)                  // name[100]
        put(octal(0o644, width: 8), at: 100)          // mode[8]
        put(octal(0, width: 8), at: 108)              // uid[8]
        put(octal(0, width: 8), at: 116)              // gid[8]
        put(octal(size, width: 12), at: 124)          // size[12]
        put(octal(mtime, width: 12), at: 136)         // mtime[12]
        put(Array("        ".utf8), at: 148)          // chksum[8], spaces while summing
        block[156] = UInt8(ascii: "0")                // typeflag: regular file
        put(Array("ustar".utf8) + [0], at: 257)       // magic[6]
        put(Array("00".utf8), at: 263)                // version[2]
        put(Array("root".utf8), at: 265)              // uname[32]
        put(Array("root".utf8), at: 297)              // gname[32]
        let sum = block.reduce(0) { $0 + Int($1) }
        let digits = String(sum, radix: 8)
        put(Array((String(repeating: "0", count: 6 - digits.count) + digits).utf8) + [0, UInt8(ascii: " ")], at: 148)
        return block
    }
}

/// A blob written into a layout: what a descriptor needs.
struct WrittenBlob: Sendable {
    let digest: Digest
    let size: Int
    let mediaType: String

    var descriptorJSON: String {
        #"{"mediaType":"\#(mediaType)","digest":"\#(digest)","size":\#(size)}"#
    }
}

/// What was written for one platform.
struct SyntheticPlatform: Sendable {
    let os: String
    let architecture: String
    let variant: String?
    let manifest: WrittenBlob
    let config: WrittenBlob
    let layers: [WrittenBlob]

    var platformJSON: String {
        var text = #"{"architecture":"\#(architecture)","os":"\#(os)""#
        if let variant { text += #","variant":"\#(variant)""# }
        return text + "}"
    }
}

/// An image written as an OCI image layout directory.
struct SyntheticImage: Sendable {
    let layout: URL
    let tag: String
    /// The blob `index.json` points at: the image index (multi-platform) or the manifest.
    let root: WrittenBlob
    let platforms: [SyntheticPlatform]
}

/// Writes OCI image layouts with random-content, uncompressed, real-tar layers.
struct OCILayoutWriter {
    static let layerType = "application/vnd.oci.image.layer.v1.tar"
    static let configType = "application/vnd.oci.image.config.v1+json"

    let root: URL
    var rng: SeededGenerator

    init(root: URL, seed: UInt64) throws {
        self.root = root
        self.rng = SeededGenerator(seed: seed)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("blobs/sha256"), withIntermediateDirectories: true)
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: root.appendingPathComponent("oci-layout"))
    }

    @discardableResult
    func writeBlob(_ bytes: [UInt8], mediaType: String) throws -> WrittenBlob {
        let digest = bytes.sha256
        try Data(bytes).write(to: root.appendingPathComponent("blobs/sha256/\(digest.hex)"))
        return WrittenBlob(digest: digest, size: bytes.count, mediaType: mediaType)
    }

    /// A layer: a tar holding one regular file of `size` random bytes (layer ≤ 1 MiB).
    mutating func writeLayer(fileName: String, size: Int) throws -> WrittenBlob {
        precondition(size + 3 * Ustar.blockSize <= 1 << 20, "keep synthetic layers at or under 1 MiB")
        let tar = Ustar.archive([(fileName, rng.bytes(size))])
        return try writeBlob(tar, mediaType: Self.layerType)
    }

    /// Config + manifest for one platform, over `layerSizes` random layers.
    mutating func writeImage(os: String = "linux", architecture: String, variant: String?, layerSizes: [Int], label: String) throws -> SyntheticPlatform {
        var layers: [WrittenBlob] = []
        for (i, size) in layerSizes.enumerated() {
            layers.append(try writeLayer(fileName: "\(label)-layer\(i).bin", size: size))
        }
        // Layers are uncompressed, so each diff_id is the layer's own digest.
        let diffIDs = layers.map { "\"\($0.digest)\"" }.joined(separator: ",")
        var configText = #"{"architecture":"\#(architecture)","os":"\#(os)""#
        if let variant { configText += #","variant":"\#(variant)""# }
        configText += #","rootfs":{"type":"layers","diff_ids":[\#(diffIDs)]},"config":{}}"#
        let config = try writeBlob(Array(configText.utf8), mediaType: Self.configType)
        let manifestText = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":\#(config.descriptorJSON),"layers":[\#(layers.map(\.descriptorJSON).joined(separator: ","))]}"#
        let manifest = try writeBlob(Array(manifestText.utf8), mediaType: MediaType.ociManifest)
        return SyntheticPlatform(os: os, architecture: architecture, variant: variant, manifest: manifest, config: config, layers: layers)
    }

    func writeIndex(_ platforms: [SyntheticPlatform]) throws -> WrittenBlob {
        let entries = platforms.map { platform in
            #"{"mediaType":"\#(platform.manifest.mediaType)","digest":"\#(platform.manifest.digest)","size":\#(platform.manifest.size),"platform":\#(platform.platformJSON)}"#
        }
        let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociIndex)","manifests":[\#(entries.joined(separator: ","))]}"#
        return try writeBlob(Array(text.utf8), mediaType: MediaType.ociIndex)
    }

    /// `index.json`, with one entry tagged `tag` (a bare tag, as skopeo writes it).
    func writeLayoutIndex(root blob: WrittenBlob, tag: String) throws {
        let text = #"{"schemaVersion":2,"manifests":[{"mediaType":"\#(blob.mediaType)","digest":"\#(blob.digest)","size":\#(blob.size),"annotations":{"\#(Descriptor.refNameAnnotation)":"\#(tag)"}}]}"#
        try Data(text.utf8).write(to: root.appendingPathComponent("index.json"))
    }
}

enum SyntheticImages {
    /// A single-platform linux/amd64 image with three layers.
    static func single(at directory: URL, tag: String, seed: UInt64) throws -> SyntheticImage {
        var writer = try OCILayoutWriter(root: directory, seed: seed)
        let platform = try writer.writeImage(architecture: "amd64", variant: nil, layerSizes: [150_000, 300_000, 64_000], label: "single")
        try writer.writeLayoutIndex(root: platform.manifest, tag: tag)
        return SyntheticImage(layout: directory, tag: tag, root: platform.manifest, platforms: [platform])
    }

    /// An image index over linux/amd64, linux/arm64/v8 and linux/arm/v7, each with its own config and layer.
    static func multi(at directory: URL, tag: String, seed: UInt64) throws -> SyntheticImage {
        var writer = try OCILayoutWriter(root: directory, seed: seed)
        let platforms = [
            try writer.writeImage(architecture: "amd64", variant: nil, layerSizes: [200_000], label: "amd64"),
            try writer.writeImage(architecture: "arm64", variant: "v8", layerSizes: [220_000], label: "arm64"),
            try writer.writeImage(architecture: "arm", variant: "v7", layerSizes: [180_000], label: "armv7"),
        ]
        let index = try writer.writeIndex(platforms)
        try writer.writeLayoutIndex(root: index, tag: tag)
        return SyntheticImage(layout: directory, tag: tag, root: index, platforms: platforms)
    }
}
