import Foundation
import OCI

/// A `docker save` archive (the tar, or the same extracted into a directory), as docker before
/// 25, `podman save` and skopeo's `docker-archive:` write it: `manifest.json` lists each
/// image's config file, `RepoTags` and layer files, by path. (`repositories` repeats the tags
/// for pre-1.10 docker and is not needed.)
///
/// Layer digests are not written anywhere, so reading takes two passes over the data.
/// `hashFiles()` learns each file's digest and, for layers, the digest of its uncompressed
/// content, which `images()` checks against the config's `rootfs.diff_ids` before anything is
/// stored (podman checks the same on pull). `ingest` then streams the files into the store,
/// where the writer verifies them against those digests.
struct DockerArchive {
    struct ManifestEntry: Decodable {
        let config: String
        let repoTags: [String]?
        let layers: [String]

        enum CodingKeys: String, CodingKey {
            case config = "Config"
            case repoTags = "RepoTags"
            case layers = "Layers"
        }
    }

    /// What the first pass learned about one file.
    struct FileFacts {
        let digest: Digest
        let size: Int64
        /// The digest of the uncompressed content: `digest` itself unless the file is gzip.
        let diffID: Digest
        let isGzip: Bool
    }

    /// One image, turned into an OCI manifest.
    struct Image {
        let repoTags: [String]
        let manifest: [UInt8]
        let descriptor: Descriptor
    }

    enum Source {
        case tar(path: String, catalog: TarCatalog)
        case directory(String)
    }

    static let layerType = "application/vnd.oci.image.layer.v1.tar"
    static let gzipLayerType = "application/vnd.oci.image.layer.v1.tar+gzip"
    static let configType = "application/vnd.oci.image.config.v1+json"

    let source: Source
    let entries: [ManifestEntry]
    /// Keyed by the file's own path after links are followed.
    private(set) var files: [String: FileFacts] = [:]
    private var configs: [String: [UInt8]] = [:]

    init(source: Source, manifestJSON: [UInt8]) throws(BundleError) {
        self.source = source
        do {
            entries = try JSONDecoder().decode([ManifestEntry].self, from: Data(manifestJSON))
        } catch {
            throw BundleError("manifest.json is not a docker save manifest: \(error)")
        }
        guard !entries.isEmpty else { throw BundleError("the archive's manifest.json lists no images") }
    }

    // MARK: Paths

    /// The path of the file `name` stands for: links followed, `./` dropped; never outside the archive.
    func resolve(_ name: String) throws(BundleError) -> String {
        var path = try Self.normalize(name, relativeTo: "")
        switch source {
        case .directory(let root):
            try BundleDirectory(root: root).checkInside(path)
            return path  // the file system follows links, within the bundle
        case .tar(_, let catalog):
            for _ in 0..<16 {
                if catalog.regularFiles.contains(path) { return path }
                guard let target = catalog.links[path] else { break }
                path = target
            }
            throw BundleError("the archive's manifest.json names \(name), which the archive does not hold")
        }
    }

    /// Joins `name` to `folder` (for a symlink's target), resolving `.` and `..`; a path that
    /// climbs out of the archive is refused.
    static func normalize(_ name: String, relativeTo folder: String) throws(BundleError) -> String {
        var parts: [Substring] = []
        let components = (name.hasPrefix("/") ? [] : folder.split(separator: "/")) + name.split(separator: "/")
        for part in components {
            switch part {
            case ".": continue
            case "..":
                guard !parts.isEmpty else { throw BundleError("archive path \(name.prefix(200)) leaves the archive") }
                parts.removeLast()
            default: parts.append(part)
            }
        }
        guard !parts.isEmpty else { throw BundleError("empty archive path") }
        return parts.joined(separator: "/")
    }

    private func wantedPaths() throws(BundleError) -> (configs: Set<String>, all: Set<String>) {
        var configs: Set<String> = [], all: Set<String> = []
        for entry in entries {
            let config = try resolve(entry.config)
            configs.insert(config)
            all.insert(config)
            for layer in entry.layers { all.insert(try resolve(layer)) }
        }
        return (configs, all)
    }

    // MARK: First pass

    /// Hashes every config and layer file, and keeps the configs (small) in memory.
    mutating func hashFiles() throws(BundleError) {
        let (configPaths, wanted) = try wantedPaths()
        var learned: [String: FileFacts] = [:]
        var configBytes: [String: [UInt8]] = [:]
        func take(_ path: String, _ size: Int64, _ pump: TarReader.Pump) throws(BundleError) {
            let keep = configPaths.contains(path)
            if keep, size > Int64(ManifestDocument.maxSize) { throw BundleError("image config \(path) is larger than 4 MiB") }
            let hasher = FileHasher()
            var kept: [UInt8] = []
            try pump { (chunk) throws(BundleError) in
                try hasher.update(chunk)
                if keep { kept.append(contentsOf: chunk) }
            }
            learned[path] = try hasher.finish(path)
            if keep { configBytes[path] = kept }
        }
        switch source {
        case .tar(let path, _):
            var reader = try TarReader(path: path)
            defer { reader.close() }
            try reader.forEach { (entry, pump) throws(BundleError) in
                guard entry.isRegularFile, wanted.contains(entry.path), learned[entry.path] == nil else { return }
                try take(entry.path, entry.size, pump)
            }
        case .directory(let root):
            for path in wanted.sorted() {
                let file = root + "/" + path
                try take(path, Self.fileSize(file), fileChunks(file))
            }
        }
        files = learned
        configs = configBytes
    }

    /// The images as OCI manifests, after checking every layer's uncompressed digest against
    /// the config's `rootfs.diff_ids`. Call after `hashFiles()`.
    func images() throws(BundleError) -> [Image] {
        var out: [Image] = []
        for entry in entries {
            let configPath = try resolve(entry.config)
            guard let configFacts = files[configPath], let configBytes = configs[configPath] else {
                throw BundleError("the archive's manifest.json names \(entry.config), which the archive does not hold")
            }
            let name = entry.repoTags?.first ?? "\(configFacts.digest)"
            let diffIDs = try Self.diffIDs(configBytes, image: name)
            guard diffIDs.count == entry.layers.count else {
                throw BundleError("docker archive image \(name): its config lists \(diffIDs.count) layers (rootfs.diff_ids), manifest.json \(entry.layers.count)")
            }
            var layers: [Descriptor] = []
            for (i, layer) in entry.layers.enumerated() {
                let path = try resolve(layer)
                guard let facts = files[path] else { throw BundleError("the archive's manifest.json names \(layer), which the archive does not hold") }
                guard facts.diffID == diffIDs[i] else {
                    throw BundleError("docker archive image \(name): layer \(i + 1) (\(layer)) has uncompressed digest \(facts.diffID), but its config's rootfs.diff_ids says \(diffIDs[i]); the archive is corrupt or was modified")
                }
                layers.append(Descriptor(mediaType: facts.isGzip ? Self.gzipLayerType : Self.layerType, digest: facts.digest, size: facts.size))
            }
            let config = Descriptor(mediaType: Self.configType, digest: configFacts.digest, size: configFacts.size)
            let manifest = Self.manifest(config: config, layers: layers)
            let digest = DigestHasher.digest(of: manifest)
            out.append(Image(repoTags: entry.repoTags ?? [], manifest: manifest,
                             descriptor: Descriptor(mediaType: MediaType.ociManifest, digest: digest, size: Int64(manifest.count))))
        }
        return out
    }

    /// An OCI image manifest, written by hand so the same archive always gives the same digest.
    static func manifest(config: Descriptor, layers: [Descriptor]) -> [UInt8] {
        func json(_ d: Descriptor) -> String { #"{"mediaType":"\#(d.mediaType)","digest":"\#(d.digest)","size":\#(d.size)}"# }
        let text = #"{"schemaVersion":2,"mediaType":"\#(MediaType.ociManifest)","config":\#(json(config)),"layers":[\#(layers.map(json).joined(separator: ","))]}"#
        return Array(text.utf8)
    }

    static func diffIDs(_ config: [UInt8], image: String) throws(BundleError) -> [Digest] {
        struct Config: Decodable {
            struct RootFS: Decodable { var diff_ids: [Digest]? }
            var rootfs: RootFS?
        }
        do {
            return try JSONDecoder().decode(Config.self, from: Data(config)).rootfs?.diff_ids ?? []
        } catch {
            throw BundleError("docker archive image \(image): its config is not a valid image config: \(error)")
        }
    }

    // MARK: Second pass

    /// Streams every config and layer into the store, verified against the first pass's digests.
    func ingest(into session: inout IngestSession) async throws(BundleError) {
        switch source {
        case .tar(let path, let catalog):
            for member in catalog.members {
                guard let facts = files[member.path] else { continue }
                try await session.ingest(facts.digest, size: facts.size,
                                         from: tarEntryChunks(path, offset: member.offset, size: member.size, name: member.path))
            }
        case .directory(let root):
            for (path, facts) in files.sorted(by: { $0.key < $1.key }) {
                try await session.ingest(facts.digest, size: facts.size, from: fileChunks(root + "/" + path))
            }
        }
    }

    // MARK: Files in a directory

    static func fileSize(_ path: String) throws(BundleError) -> Int64 {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path), let size = attributes[.size] as? NSNumber else {
            throw BundleError("the archive's manifest.json names \(path), which does not exist")
        }
        return size.int64Value
    }
}

/// Digest, size, and (for gzip) uncompressed digest of a stream. A class, so a pump's sink
/// can feed it.
final class FileHasher {
    private var hasher: DigestHasher? = DigestHasher()
    private var uncompressed: DigestHasher? = DigestHasher()
    private var inflater: GzipInflater?
    private var size: Int64 = 0

    func update(_ chunk: UnsafeRawBufferPointer) throws(BundleError) {
        if size == 0, chunk.count >= 2, chunk[0] == 0x1F, chunk[1] == 0x8B {
            inflater = try GzipInflater()
        }
        if size == 0, chunk.count >= 4, Array(chunk[0..<4]) == [0x28, 0xB5, 0x2F, 0xFD] {
            throw BundleError("zstd-compressed layers are not supported in docker archives")
        }
        size += Int64(chunk.count)
        hasher!.update(chunk)
        try inflater?.update(chunk) { uncompressed!.update($0) }
    }

    func finish(_ path: String) throws(BundleError) -> DockerArchive.FileFacts {
        let digest = hasher.take()!.finalize()
        let plain = uncompressed.take()!.finalize()
        guard let inflater else { return .init(digest: digest, size: size, diffID: digest, isGzip: false) }
        do {
            try inflater.finish()
        } catch {
            throw BundleError("\(path): \(error.message)")
        }
        return .init(digest: digest, size: size, diffID: plain, isGzip: true)
    }
}

/// The names in a tar, from its headers alone (data is skipped, not read): which files and
/// links it holds, where each file's data is, and the small files that say what kind of
/// bundle it is.
struct TarCatalog {
    /// A regular file in the archive: its data is `size` bytes at `offset` of the tar file.
    struct Member {
        let path: String
        let offset: Int64
        let size: Int64
    }

    var regularFiles: Set<String> = []
    /// Every regular file, in archive order (a path may repeat).
    var members: [Member] = []
    /// Link path → the path it names, relative to the archive root.
    var links: [String: String] = [:]
    var hasOCILayout = false
    var dockerManifest: [UInt8]?

    init(path: String) throws(BundleError) {
        var reader = try TarReader(path: path)
        defer { reader.close() }
        var catalog = TarCatalog()
        try reader.forEach { (entry, pump) throws(BundleError) in
            if let target = entry.linkTarget {
                let folder = entry.path.contains("/") ? String(entry.path[..<entry.path.lastIndex(of: "/")!]) : ""
                if let resolved = try? DockerArchive.normalize(target, relativeTo: entry.isSymbolicLink ? folder : "") {
                    catalog.links[entry.path] = resolved
                }
                return
            }
            guard entry.isRegularFile else { return }
            catalog.regularFiles.insert(entry.path)
            catalog.members.append(Member(path: entry.path, offset: entry.offset, size: entry.size))
            switch entry.path {
            case "oci-layout", "index.json":
                catalog.hasOCILayout = true
            case "manifest.json":
                guard entry.size <= 16 << 20 else { throw BundleError("manifest.json is too large") }
                var bytes: [UInt8] = []
                try pump { (chunk) throws(BundleError) in bytes.append(contentsOf: chunk) }
                catalog.dockerManifest = bytes
            default:
                break
            }
        }
        self = catalog
    }

    private init() {}
}

extension BundleImporter {
    /// Hashes and checks a docker archive, stores its files and the manifests made for them,
    /// then records its images like a layout's.
    func importDockerArchive(_ archive: inout DockerArchive, options: Options, session: inout IngestSession) async throws(BundleError) -> [Imported] {
        try archive.hashFiles()
        let images = try archive.images()
        var roots: [Root] = []
        for image in images {
            for reference in try references(for: image, options: options, images: images.count) {
                roots.append(Root(descriptor: image.descriptor, reference: reference))
            }
        }
        try await archive.ingest(into: &session)
        for image in images { try await session.ingest(image.manifest, as: image.descriptor.digest) }
        return try await load(roots, blobDirectory: nil, options: options, session: &session)
    }

    /// `RepoTags` (`alpine:3` is `docker.io/library/alpine:3`), or `--as`. A `--as` without a
    /// tag keeps the archive's tags under the given name.
    private func references(for image: DockerArchive.Image, options: Options, images: Int) throws(BundleError) -> [ImageReference] {
        func parse(_ text: String) throws(BundleError) -> ImageReference {
            do {
                return try ImageReference(parsing: text)
            } catch {
                throw BundleError("bad reference \(text): \(error.message)")
            }
        }
        var out: [ImageReference] = []
        if let given = options.reference {
            guard images == 1 else { throw BundleError("--as names one image, but the archive holds \(images)") }
            let base = try parse(given)
            guard !Self.hasExplicitTag(given), !image.repoTags.isEmpty else {
                return [ImageReference(host: base.host, repository: base.repository, tag: base.tag, digest: nil)]
            }
            for text in image.repoTags {
                out.append(ImageReference(host: base.host, repository: base.repository, tag: try parse(text).tag, digest: nil))
            }
        } else {
            guard !image.repoTags.isEmpty else {
                throw BundleError("image \(image.descriptor.digest) in the archive has no RepoTags; name it with --as REF")
            }
            for text in image.repoTags {
                let parsed = try parse(text)
                out.append(ImageReference(host: parsed.host, repository: parsed.repository, tag: parsed.tag, digest: nil))
            }
        }
        var seen: Set<ImageReference> = []
        return out.filter { seen.insert($0).inserted }
    }
}
