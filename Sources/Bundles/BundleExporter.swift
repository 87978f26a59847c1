import ContentStore
import Foundation
import Logging
import MetadataIndex
import OCI
#if canImport(Glibc)
import Glibc
#endif

/// Writes cached images as an OCI image layout, a directory or a `.tar` of one, for
/// `skopeo copy oci:…` / `oci-archive:…` and `registry-mirror import` on another machine.
///
/// Reads only the cache: the data directory's store, or a fleet's bucket (any `BlobStore`,
/// streamed through its `BlobReader`s). Each image's `index.json` entry carries its full reference
/// (`docker.io/library/alpine:3.20`) as `org.opencontainers.image.ref.name` and
/// `io.containerd.image.name`. Root manifests and indexes are written byte-exact; which
/// instances of an index go along is the `Options.platforms` choice. Every blob is re-hashed
/// while it is copied, so a damaged cached blob fails the export rather than reaching the
/// bundle, and a failed export leaves no output (see `LayoutOutput`).
///
/// What refers to an image goes along (unless `Options.referrers` is off), as entries of
/// their own: cosign's tags under their tag (`…/app:sha256-<hex>.sig`), and cached manifests
/// whose `subject` is the image or one of its written instances under their digest
/// (`…/app@sha256:…`), which the ref-name grammar allows. `import` records those with their
/// subject and no tag. A referrer that is not fully cached is left out, with a notice.
public struct BundleExporter: Sendable {
    public struct Options: Sendable {
        /// Instances of multi-platform images to write. nil: every instance that is fully
        /// cached. `.all` and `.specific` fail when a chosen instance is not fully cached.
        /// Single-platform images are written as they are, whatever this says.
        public var platforms: PlatformSelection?
        public var progress: ProgressHandler?
        /// Also write the images' referrers and cosign tag artifacts.
        public var referrers: Bool

        public init(platforms: PlatformSelection? = nil, progress: ProgressHandler? = nil, referrers: Bool = true) {
            self.platforms = platforms
            self.progress = progress
            self.referrers = referrers
        }
    }

    /// One image written to the bundle.
    public struct Exported: Sendable {
        /// The reference it is named by in `index.json`.
        public let name: String
        public let digest: Digest
        public let mediaType: String
        /// Index instances written / listed (1/1 for a single image).
        public let platformsWritten: Int
        public let platformsListed: Int
        /// Bytes of everything the image needs, shared blobs included.
        public let bytes: Int64
        /// For a referrer or cosign tag artifact: the digest it refers to.
        public let referrerOf: Digest?
    }

    public struct Summary: Sendable {
        public let images: [Exported]
        /// Distinct blobs written, and their bytes (tar framing not counted).
        public let blobs: Int
        public let bytes: Int64
        public let output: String
    }

    public static let containerdNameAnnotation = "io.containerd.image.name"

    let store: any BlobStore
    let index: any MetadataStore
    let logger: Logger

    public init(store: any BlobStore, index: any MetadataStore, logger: Logger) {
        self.store = store
        self.index = index
        self.logger = logger
    }

    /// Exports `references` (`[host/]name[:tag|@digest]`, as they were cached) to `output`.
    public func export(_ references: [String], to output: String, options: Options = .init()) async throws(BundleError) -> Summary {
        guard !references.isEmpty else { throw BundleError("no images to export") }
        var plans: [ImagePlan] = []
        for text in references {
            let plan = try await makePlan(text, selection: options.platforms)
            if !plans.contains(where: { $0.name == plan.name }) { plans.append(plan) }
        }
        if options.referrers {
            for image in plans where image.referrerOf == nil {
                for plan in try await referrerPlans(of: image) where !plans.contains(where: { $0.name == plan.name }) { plans.append(plan) }
            }
        }

        var out = try LayoutOutput(destination: output)
        var written: Set<Digest> = []
        var bytes: Int64 = 0
        do throws(BundleError) {
            try out.addFile("oci-layout", bytes: Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
            for plan in plans {
                options.progress?(.imageStarted(image: plan.name))
                do throws(BundleError) {
                    for blob in plan.blobs where !written.contains(blob.digest) {
                        try await copy(blob, image: plan.name, into: &out, progress: options.progress)
                        written.insert(blob.digest)
                        bytes += blob.size
                    }
                } catch {
                    options.progress?(.imageFinished(image: plan.name, error: error.message))
                    throw error
                }
                options.progress?(.imageFinished(image: plan.name, error: nil))
            }
            try out.addFile("index.json", bytes: try Self.encode(ImageIndex(manifests: plans.map(\.root))))
            try out.publish()
        } catch {
            out.discard()
            throw error
        }
        let images = plans.map {
            Exported(name: $0.name, digest: $0.root.digest, mediaType: $0.root.mediaType, platformsWritten: $0.platformsWritten,
                     platformsListed: $0.platformsListed, bytes: $0.blobs.reduce(0) { $0 + $1.size }, referrerOf: $0.referrerOf)
        }
        return Summary(images: images, blobs: written.count, bytes: bytes, output: out.destination)
    }

    // MARK: Planning: what each image needs, all checked before a byte is written

    struct ImagePlan {
        let name: String
        let root: Descriptor
        let repository: RepositoryKey
        var referrerOf: Digest?
        /// The root and every instance written: what referrers may refer to.
        var subjects: [Digest] = []
        /// Manifests, configs and layers in write order; may repeat across images.
        var blobs: [Descriptor] = []
        var platformsWritten = 1
        var platformsListed = 1
        /// Platforms of the index instances written, for `--platform` checks.
        var writtenPlatforms: [Platform] = []
        var listedPlatforms: [Platform] = []
    }

    private func makePlan(_ text: String, selection: PlatformSelection?) async throws(BundleError) -> ImagePlan {
        let reference: ImageReference
        do {
            reference = try ImageReference(parsing: text)
        } catch {
            throw BundleError("bad reference \(text): \(error.message)")
        }
        let root = try await resolve(reference, as: text)
        let repository = RepositoryKey(upstream: reference.host, name: reference.repository)
        var plan = ImagePlan(name: reference.description, root: root, repository: repository)
        try await walk(root, depth: 0, selection: selection, plan: &plan)
        if MediaType.isIndex(root.mediaType) {
            var required: [Platform] = []
            if case .specific(let list) = selection { required = list }
            if case .system = selection { required = [Platform.current] }
            for platform in required where !plan.writtenPlatforms.contains(where: platform.matches) {
                let listed = plan.listedPlatforms.map(\.description).joined(separator: ", ")
                throw BundleError("\(text) has no image for \(platform) (it lists \(listed.isEmpty ? "no platforms" : listed))")
            }
        }
        return plan
    }

    /// The root descriptor a cached reference names, with its ref-name annotations.
    private func resolve(_ reference: ImageReference, as text: String) async throws(BundleError) -> Descriptor {
        let repository = RepositoryKey(upstream: reference.host, name: reference.repository)
        let found: (digest: Digest, manifest: ManifestRecord)?
        do throws(IndexError) {
            found = try await lookUp(reference, in: repository)
        } catch {
            throw BundleError("reading the index: \(error.description)")
        }
        guard let found else {
            throw BundleError("\(text) is not in the cache (as \(reference)); fetch it first with `registry-mirror seed \(text)`")
        }
        return Self.named(Descriptor(mediaType: found.manifest.mediaType, digest: found.digest, size: found.manifest.size),
                          reference.description)
    }

    /// `descriptor` as an `index.json` entry named `name`.
    static func named(_ descriptor: Descriptor, _ name: String) -> Descriptor {
        var named = descriptor
        named.annotations = [Descriptor.refNameAnnotation: name, containerdNameAnnotation: name]
        return named
    }

    // MARK: Referrers

    /// How far signatures of signatures are followed, as `seed` does.
    static let referrerDepth = 3

    /// Entries for what refers to `image` and is fully cached: cosign's tags of each subject,
    /// then manifests whose `subject` it is, then what refers to those.
    private func referrerPlans(of image: ImagePlan) async throws(BundleError) -> [ImagePlan] {
        let repository = image.repository
        let base = "\(repository.upstream)/\(repository.name.value)"
        var plans: [ImagePlan] = []
        var queue = image.subjects.map { ($0, 1) }
        var seen = Set(image.subjects)
        while !queue.isEmpty {
            let (subject, depth) = queue.removeFirst()
            var found: [(name: String, descriptor: Descriptor)] = []
            do throws(IndexError) {
                for tag in Referrers.cosignTags(for: subject) {
                    guard let tagged = try await index.tag(repository, tag), let record = try await index.manifest(tagged.digest) else { continue }
                    found.append(("\(base):\(tag)", Descriptor(mediaType: record.mediaType, digest: record.digest, size: record.size)))
                }
                for record in try await index.referrers(repository, subject: subject) {
                    found.append(("\(base)@\(record.digest)", Descriptor(mediaType: record.mediaType, digest: record.digest, size: record.size)))
                }
            } catch {
                throw BundleError("reading the index: \(error.description)")
            }
            for (name, descriptor) in found where seen.insert(descriptor.digest).inserted {
                if let missing = try await firstMissing(descriptor, image: name) {
                    logger.notice("not exported: a referrer is not fully cached; seed its image again to fetch it", metadata: [
                        "oci.reference": "\(name)", "oci.subject": "\(subject)", "oci.digest": "\(missing)"])
                    continue
                }
                var plan = ImagePlan(name: name, root: Self.named(descriptor, name), repository: repository, referrerOf: subject)
                try await walk(plan.root, depth: 0, selection: nil, plan: &plan)
                plans.append(plan)
                if depth < Self.referrerDepth { queue.append((descriptor.digest, depth + 1)) }
            }
        }
        return plans
    }

    /// By digest: only if the repository is linked to it, as the registry API would serve it.
    private func lookUp(_ reference: ImageReference, in repository: RepositoryKey) async throws(IndexError) -> (digest: Digest, manifest: ManifestRecord)? {
        let digest: Digest
        if let pinned = reference.digest {
            guard try await index.isLinked(repository, pinned) else { return nil }
            digest = pinned
        } else if let tag = reference.tag, let record = try await index.tag(repository, tag) {
            digest = record.digest
        } else {
            return nil
        }
        return try await index.manifest(digest).map { (digest, $0) }
    }

    private func walk(_ descriptor: Descriptor, depth: Int, selection: PlatformSelection?, plan: inout ImagePlan) async throws(BundleError) {
        guard depth < 4 else { throw BundleError("indexes are nested more than 4 deep at \(descriptor.digest)") }
        let document = try await readManifest(descriptor, image: plan.name)
        plan.blobs.append(descriptor)
        plan.subjects.append(descriptor.digest)
        guard document.isIndex else {
            for blob in document.blobs {
                try await checkStored(blob, image: plan.name, role: "blob of manifest \(descriptor.digest)")
                plan.blobs.append(blob)
            }
            return
        }
        let listed = document.manifests
        var candidates = listed
        if let selection {
            let chosen = selection.select(listed.filter { !MediaType.isIndex($0.mediaType) })
            candidates = listed.filter { MediaType.isIndex($0.mediaType) || chosen.contains($0) }
        }
        var written = 0
        for child in candidates {
            let label = child.platform?.description ?? "instance \(child.digest)"
            if let missing = try await firstMissing(child, image: plan.name) {
                guard selection != nil else {
                    logger.notice("not exported: this instance is not fully cached", metadata: [
                        "oci.reference": "\(plan.name)", "oci.platform": "\(label)", "oci.digest": "\(missing)",
                    ])
                    continue
                }
                let flag = child.platform.map { "--platform \($0)" } ?? "--all-platforms"
                throw BundleError("\(plan.name): \(label) is not fully in the cache (\(missing) is missing); fetch it with `registry-mirror seed \(flag) \(plan.name)`")
            }
            try await walk(child, depth: depth + 1, selection: selection, plan: &plan)
            written += 1
            if let platform = child.platform, !MediaType.isIndex(child.mediaType) { plan.writtenPlatforms.append(platform) }
        }
        plan.listedPlatforms += listed.compactMap(\.platform)
        if depth == 0 {
            plan.platformsWritten = written
            plan.platformsListed = listed.count
            // With a selection, the platform checks in makePlan name what is missing.
            guard written > 0 || selection != nil else {
                throw BundleError("\(plan.name): none of its \(listed.count) platforms is fully in the cache; fetch one with `registry-mirror seed --platform OS/ARCH \(plan.name)`")
            }
        }
    }

    /// The first digest an index instance needs that the store lacks, or nil when it is complete.
    private func firstMissing(_ child: Descriptor, image: String) async throws(BundleError) -> Digest? {
        guard await store.size(of: child.digest) != nil else { return child.digest }
        guard !MediaType.isIndex(child.mediaType) else { return nil }  // its own instances are checked when it is walked
        let document = try await readManifest(child, image: image)
        for blob in document.blobs where await store.size(of: blob.digest) == nil { return blob.digest }
        return nil
    }

    /// Reads a manifest from the store, checking size and digest before trusting its content.
    private func readManifest(_ descriptor: Descriptor, image: String) async throws(BundleError) -> ManifestDocument {
        try await checkStored(descriptor, image: image, role: "manifest")
        let bytes: [UInt8]
        do {
            bytes = try await store.read(descriptor.digest, limit: ManifestDocument.maxSize)
        } catch {
            throw BundleError("reading manifest \(descriptor.digest): \(error.message)")
        }
        let actual = DigestHasher.digest(of: bytes, algorithm: descriptor.digest.algorithm)
        guard actual == descriptor.digest else { throw Self.corrupt(descriptor.digest, "its content hashes to \(actual)") }
        do {
            return try ManifestDocument(bytes: bytes, contentType: descriptor.mediaType)
        } catch {
            throw BundleError("manifest \(descriptor.digest): \(error.message)")
        }
    }

    private func checkStored(_ descriptor: Descriptor, image: String, role: String) async throws(BundleError) {
        guard let size = await store.size(of: descriptor.digest) else {
            throw BundleError("\(image) is not fully in the cache: \(role) \(descriptor.digest) is missing; fetch it again with `registry-mirror seed \(image)`")
        }
        guard size == descriptor.size else {
            throw Self.corrupt(descriptor.digest, "the file is \(size) bytes, its descriptor says \(descriptor.size)")
        }
    }

    static func corrupt(_ digest: Digest, _ reason: String) -> BundleError {
        BundleError("cached blob \(digest) is corrupt: \(reason); run `registry-mirror verify --repair`, then fetch the image again")
    }

    // MARK: Writing

    /// Streams one stored blob into the bundle through the store's reader (a local file, or
    /// ranged GETs of an object), re-hashing it on the way.
    private func copy(_ blob: Descriptor, image: String, into out: inout LayoutOutput, progress: ProgressHandler?) async throws(BundleError) {
        let reader: (any BlobReader)?
        do {
            reader = try await store.openBlob(blob.digest)
        } catch {
            throw BundleError("cannot open \(blob.digest): \(error.message)")
        }
        guard let reader else {
            throw BundleError("\(image) is not fully in the cache: \(blob.digest) is missing; fetch it again with `registry-mirror seed \(image)`")
        }
        let stored: Int64?
        do {
            stored = try await reader.size()
        } catch {
            throw BundleError("reading \(blob.digest): \(error)")
        }
        guard let size = stored, size == blob.size else {
            throw Self.corrupt(blob.digest, "the file is \(stored.map(String.init) ?? "of unknown size") bytes, its descriptor says \(blob.size)")
        }

        progress?(.blobStarted(image: image, digest: blob.digest, size: size))
        try out.beginFile("blobs/\(blob.digest.algorithm.rawValue)/\(blob.digest.hex)", size: size)
        var verifier = DigestVerifier(expected: blob.digest, expectedSize: size)
        var done: Int64 = 0
        var chunks = reader.chunks(from: 0, length: nil).makeAsyncIterator()
        while true {
            let next: [UInt8]?
            do {
                next = try await chunks.next()
            } catch {
                throw BundleError("reading \(blob.digest): \(error)")
            }
            guard let chunk = next else { break }
            try chunk.withUnsafeBytes { raw in
                Result { () throws(BundleError) in
                    do throws(OCIError) {
                        try verifier.update(raw)
                    } catch {
                        throw Self.corrupt(blob.digest, error.message)
                    }
                    try out.append(raw)
                }
            }.get()
            done += Int64(chunk.count)
            progress?(.blobProgress(image: image, digest: blob.digest, bytes: done, size: size))
        }
        do throws(OCIError) {
            try verifier.verify()
        } catch {
            throw Self.corrupt(blob.digest, error.message)
        }
        try out.endFile()
        progress?(.blobFinished(image: image, digest: blob.digest, bytes: size, cached: false))
    }

    static func encode(_ index: ImageIndex) throws(BundleError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return Array(try encoder.encode(index))
        } catch {
            throw BundleError("encoding index.json: \(error)")
        }
    }
}
