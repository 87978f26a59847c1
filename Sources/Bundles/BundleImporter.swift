import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI

/// Loads an OCI image layout, a directory or a `.tar` of one, into the cache; or a
/// `docker save` archive (see `DockerArchive`). A bundle with both an OCI layout and a
/// `manifest.json`, as docker 25 and later write, is read as the OCI layout.
///
/// Every blob is verified against its digest and its descriptor's size on the way in. The
/// images become visible (tags, repository links) in one index transaction, only after
/// everything they need is stored. On any error, blobs this import wrote are removed again,
/// so a bad bundle leaves nothing behind.
///
/// The store is any `BlobStore`: the data directory's files, or a fleet's bucket, whose
/// writers complete an object only after its digest and size were verified.
public struct BundleImporter: Sendable {
    public struct Options: Sendable {
        /// `[host/]name[:tag]` to import as, overriding the layout's ref-name annotations.
        public var reference: String?
        /// Pin the imported images so eviction never removes them.
        public var pin: Bool
        /// Told about each blob stored; the whole bundle is one "image" in these events.
        public var progress: ProgressHandler?

        public init(reference: String? = nil, pin: Bool = false, progress: ProgressHandler? = nil) {
            self.reference = reference
            self.pin = pin
            self.progress = progress
        }
    }

    /// One image made visible by an import.
    public struct Imported: Sendable {
        public let reference: ImageReference
        public let digest: Digest
        public let mediaType: String
        /// Index children present in the bundle / listed by the index (1/1 for a single image).
        public let platformsPresent: Int
        public let platformsListed: Int
        public let bytes: Int64
    }

    let store: any BlobStore
    let index: any MetadataStore
    let logger: Logger

    public init(store: any BlobStore, index: any MetadataStore, logger: Logger) {
        self.store = store
        self.index = index
        self.logger = logger
    }

    public func importBundle(at path: String, options: Options = .init()) async throws(BundleError) -> [Imported] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw BundleError("\(path) does not exist")
        }
        let label = path.split(separator: "/").last.map(String.init) ?? path
        var session = IngestSession(store: store, progress: options.progress, label: label)
        options.progress?(.imageStarted(image: label))
        do throws(BundleError) {
            let result: [Imported]
            if isDirectory.boolValue {
                let isOCI = FileManager.default.fileExists(atPath: path + "/oci-layout")
                if !isOCI, let manifest = try BundleDirectory(root: path).contents("manifest.json", limit: ManifestDocument.maxSize) {
                    var archive = try DockerArchive(source: .directory(path), manifestJSON: manifest)
                    result = try await importDockerArchive(&archive, options: options, session: &session)
                } else {
                    let layout = try readDirectoryLayout(path)
                    result = try await load(try roots(of: layout.index, options: options), blobDirectory: layout.blobDirectory,
                                      options: options, session: &session)
                }
            } else {
                let catalog = try TarCatalog(path: path)
                if !catalog.hasOCILayout, let manifest = catalog.dockerManifest {
                    var archive = try DockerArchive(source: .tar(path: path, catalog: catalog), manifestJSON: manifest)
                    result = try await importDockerArchive(&archive, options: options, session: &session)
                } else {
                    let layout = try await readTarLayout(path, catalog: catalog, session: &session)
                    result = try await load(try roots(of: layout.index, options: options), blobDirectory: nil,
                                      options: options, session: &session)
                }
            }
            await session.removeUnreached()
            options.progress?(.imageFinished(image: label, error: nil))
            return result
        } catch {
            await session.rollback()
            options.progress?(.imageFinished(image: label, error: error.message))
            throw error
        }
    }

    // MARK: Reading a layout

    /// The two small files of a layout, and where its blobs come from.
    struct LayoutFiles {
        let index: ImageIndex
        /// The layout to read blobs from on demand; nil when they were already ingested from a tar.
        let blobDirectory: BundleDirectory?
    }

    private func readDirectoryLayout(_ root: String) throws(BundleError) -> LayoutFiles {
        let directory = BundleDirectory(root: root)
        guard let layoutData = try directory.contents("oci-layout", limit: ManifestDocument.maxSize) else {
            throw BundleError("\(root) is not an OCI image layout: it has no oci-layout file")
        }
        try checkLayoutVersion(layoutData)
        guard let indexData = try directory.contents("index.json", limit: ManifestDocument.maxSize) else {
            throw BundleError("\(root) is not an OCI image layout: it has no index.json")
        }
        return LayoutFiles(index: try decodeIndex(indexData), blobDirectory: directory)
    }

    /// Reads a tar's layout files and stores every blob it carries, in archive order, from
    /// where the catalog found each one's data.
    private func readTarLayout(_ path: String, catalog: TarCatalog, session: inout IngestSession) async throws(BundleError) -> LayoutFiles {
        var layoutBytes: [UInt8]?
        var indexBytes: [UInt8]?
        for member in catalog.members {
            let source = tarEntryChunks(path, offset: member.offset, size: member.size, name: member.path)
            switch member.path {
            case "oci-layout": layoutBytes = try readSmall(member, source)
            case "index.json": indexBytes = try readSmall(member, source)
            default:
                guard member.path.hasPrefix("blobs/") else { continue }
                let parts = member.path.split(separator: "/")
                guard parts.count == 3, let digest = try? Digest(parsing: "\(parts[1]):\(parts[2])") else {
                    throw BundleError("bundle has a blob with an invalid name: \(member.path.prefix(200))")
                }
                try await session.ingest(digest, size: member.size, from: source)
            }
        }
        guard let layoutBytes else { throw BundleError("\(path) is not an OCI image layout: it has no oci-layout file") }
        try checkLayoutVersion(layoutBytes)
        guard let indexBytes else { throw BundleError("\(path) is not an OCI image layout: it has no index.json") }
        return LayoutFiles(index: try decodeIndex(indexBytes), blobDirectory: nil)
    }

    private func readSmall(_ member: TarCatalog.Member, _ source: BlobSource) throws(BundleError) -> [UInt8] {
        guard member.size <= Int64(ManifestDocument.maxSize) else { throw BundleError("\(member.path) is too large") }
        var out: [UInt8] = []
        try source { (chunk) throws(BundleError) in out.append(contentsOf: chunk) }
        return out
    }

    private func checkLayoutVersion(_ bytes: [UInt8]) throws(BundleError) {
        struct Layout: Decodable { var imageLayoutVersion: String }
        guard let layout = try? JSONDecoder().decode(Layout.self, from: Data(bytes)), layout.imageLayoutVersion.hasPrefix("1.") else {
            throw BundleError("unsupported oci-layout file (expected imageLayoutVersion 1.x)")
        }
    }

    private func decodeIndex(_ bytes: [UInt8]) throws(BundleError) -> ImageIndex {
        do {
            return try JSONDecoder().decode(ImageIndex.self, from: Data(bytes))
        } catch {
            throw BundleError("index.json is not a valid OCI index: \(error)")
        }
    }

    // MARK: Walking the images

    /// An image to record: its root manifest or index, and the reference to record it as.
    struct Root {
        let descriptor: Descriptor
        let reference: ImageReference
    }

    private func roots(of index: ImageIndex, options: Options) throws(BundleError) -> [Root] {
        guard !index.manifests.isEmpty else { throw BundleError("the bundle's index.json lists no images") }
        var roots: [Root] = []
        for entry in index.manifests {
            roots.append(Root(descriptor: entry, reference: try reference(for: entry, options: options, entries: index.manifests.count)))
        }
        return roots
    }

    /// Walks each root, storing what is not stored yet, then records them all in one transaction.
    func load(_ roots: [Root], blobDirectory: BundleDirectory?, options: Options, session: inout IngestSession) async throws(BundleError) -> [Imported] {
        var results: [Imported] = []
        var batch = ContentBatch()
        for root in roots {
            let entry = root.descriptor, reference = root.reference
            let repository = RepositoryKey(upstream: reference.host, name: reference.repository)
            var walk = Walk()
            try await visit(entry, depth: 0, blobDirectory: blobDirectory, session: &session, walk: &walk, batch: &batch)
            for digest in walk.reached { batch.link(repository, digest) }
            if let tag = reference.tag {
                batch.tag(repository, tag, entry.digest, mediaType: walk.rootMediaType ?? entry.mediaType)
            }
            if options.pin { batch.pinned.insert(entry.digest) }
            results.append(Imported(
                reference: reference, digest: entry.digest, mediaType: walk.rootMediaType ?? entry.mediaType,
                platformsPresent: walk.childrenPresent, platformsListed: walk.childrenListed, bytes: walk.bytes))
        }
        for digest in session.reached.sorted() {
            guard let size = await session.size(of: digest) else { continue }
            batch.addBlob(digest, size: size)
        }
        do {
            try await index.record(batch)
        } catch {
            throw BundleError("recording the import in the index failed: \(error.description)")
        }
        return results
    }

    struct Walk {
        var reached: [Digest] = []
        var rootMediaType: String?
        var childrenPresent = 1
        var childrenListed = 1
        var bytes: Int64 = 0
    }

    private func visit(_ descriptor: Descriptor, depth: Int, blobDirectory: BundleDirectory?, session: inout IngestSession,
                       walk: inout Walk, batch: inout ContentBatch) async throws(BundleError) {
        guard depth < 4 else { throw BundleError("indexes are nested more than 4 deep at \(descriptor.digest)") }
        try await ensure(descriptor, blobDirectory: blobDirectory, session: &session, role: "manifest")
        let bytes: [UInt8]
        do {
            bytes = try await store.read(descriptor.digest, limit: ManifestDocument.maxSize)
        } catch {
            throw BundleError("manifest \(descriptor.digest): \(error.message)")
        }
        let document: ManifestDocument
        do {
            document = try ManifestDocument(bytes: bytes, contentType: descriptor.mediaType)
        } catch {
            throw BundleError("manifest \(descriptor.digest): \(error.message)")
        }
        if MediaType.isSchema1(document.mediaType) {
            throw BundleError("manifest \(descriptor.digest) is Docker schema 1, which this mirror does not serve")
        }
        if depth == 0 { walk.rootMediaType = document.mediaType }
        walk.reached.append(descriptor.digest)
        walk.bytes += descriptor.size
        batch.manifests.append(.init(digest: descriptor.digest, size: Int64(bytes.count), document: document))
        if document.isIndex {
            var present = 0
            for child in document.manifests {
                if await session.size(of: child.digest) == nil, !layoutHas(child.digest, blobDirectory) {
                    logger.info("index child not in bundle; clients asking for it will get 404 offline",
                                metadata: ["oci.digest": "\(child.digest)", "oci.platform": "\(child.platform?.description ?? "-")"])
                    continue
                }
                present += 1
                try await visit(child, depth: depth + 1, blobDirectory: blobDirectory, session: &session, walk: &walk, batch: &batch)
            }
            if depth == 0 {
                walk.childrenPresent = present
                walk.childrenListed = document.manifests.count
            }
        } else {
            for blob in document.blobs {
                try await ensure(blob, blobDirectory: blobDirectory, session: &session, role: "blob of manifest \(descriptor.digest)")
                walk.reached.append(blob.digest)
                walk.bytes += blob.size
            }
        }
    }

    private func layoutHas(_ digest: Digest, _ blobDirectory: BundleDirectory?) -> Bool {
        blobDirectory?.hasEntry(Self.blobPath(digest)) ?? false
    }

    /// Where a layout keeps a blob, relative to its root.
    static func blobPath(_ digest: Digest) -> String { "blobs/\(digest.algorithm.rawValue)/\(digest.hex)" }

    /// Makes sure `descriptor`'s blob is in the store with the descriptor's size, ingesting it
    /// from a layout directory if needed.
    private func ensure(_ descriptor: Descriptor, blobDirectory: BundleDirectory?, session: inout IngestSession, role: String) async throws(BundleError) {
        let digest = descriptor.digest
        if await session.size(of: digest) == nil, let layout = blobDirectory {
            let path = Self.blobPath(digest)
            guard let file = try layout.openRegularFile(path) else {
                throw BundleError("bundle is incomplete: \(role) \(digest) is missing")
            }
            defer { close(file) }
            try await session.ingest(digest, size: descriptor.size, from: descriptorChunks(file, path: layout.root + "/" + path))
        }
        guard let size = await session.size(of: digest) else {
            throw BundleError("bundle is incomplete: \(role) \(digest) is missing")
        }
        guard size == descriptor.size else {
            throw BundleError("bundle is corrupt: \(role) \(digest) is \(size) bytes, its descriptor says \(descriptor.size)")
        }
        session.reached.insert(digest)
    }

    private func reference(for entry: Descriptor, options: Options, entries: Int) throws(BundleError) -> ImageReference {
        var annotated = entry.annotations?[Descriptor.refNameAnnotation]
        // Docker 25+ and containerd give ref.name only the tag, and the full name in this annotation.
        if options.reference == nil, let full = entry.annotations?[BundleExporter.containerdNameAnnotation] { annotated = full }
        do {
            if let given = options.reference {
                let base = try ImageReference(parsing: given)
                // A bare tag in the layout ("3.20", as `oci:dir:3.20` writes) keeps its tag under the given name.
                if let annotated, !annotated.contains("/"), let tag = try? Tag(parsing: annotated), !Self.hasExplicitTag(given) {
                    return ImageReference(host: base.host, repository: base.repository, tag: tag, digest: nil)
                }
                guard entries == 1 else {
                    throw BundleError("--as names one image, but the bundle holds \(entries) and they are not tagged")
                }
                return ImageReference(host: base.host, repository: base.repository, tag: base.tag, digest: nil)
            }
            guard let annotated else {
                throw BundleError("image \(entry.digest) has no \(Descriptor.refNameAnnotation) annotation; name it with --as REF")
            }
            guard annotated.contains("/") || annotated.contains(".") && annotated.contains(":") else {
                throw BundleError("image \(entry.digest) is tagged only \"\(annotated)\", with no repository; name it with --as REPO")
            }
            let parsed = try ImageReference(parsing: annotated)
            return ImageReference(host: parsed.host, repository: parsed.repository, tag: parsed.tag, digest: nil)
        } catch let error as OCIError {
            throw BundleError("bad reference: \(error.message)")
        } catch let error as BundleError {
            throw error
        } catch {
            throw BundleError("\(error)")
        }
    }

    /// True when `reference` names a tag (a `:` after the last `/`, before any `@`).
    static func hasExplicitTag(_ reference: String) -> Bool {
        let withoutDigest = reference.split(separator: "@", maxSplits: 1).first ?? ""
        let last = withoutDigest.split(separator: "/").last ?? ""
        return last.contains(":")
    }
}
