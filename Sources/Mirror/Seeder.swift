import ContentStore
import Foundation
import MetadataIndex
import OCI
import Upstream

/// Pulls images into the cache through the same pull-through path a client's pull takes,
/// for pre-seeding: every manifest and blob is verified and recorded exactly as when served.
///
/// For an index, the chosen instances are copied (`PlatformSelection`) and the index itself
/// is kept byte-exact; instances not chosen stay absent, so an offline mirror answers 404
/// for them.
///
/// What refers to the image travels with it (unless `referrers` is off): OCI 1.1 referrers of
/// the root and of each copied instance (signatures, SBOMs, attestations with a `subject`),
/// as the mirror's referrers API lists them, and cosign's `sha256-<hex>.sig|.att|.sbom` tags.
/// A site that admits only signed images needs them offline.
public struct Seeder: Sendable {
    public struct Result: Sendable {
        public let digest: Digest
        public let mediaType: String
        /// Instances copied / listed, for an index (1/1 for a single image).
        public let instances: Int
        public let listed: Int
        public let bytes: Int64
        /// Referrers and cosign tag artifacts copied with the image.
        public var referrers = 0
    }

    let registry: PullThroughRegistry
    /// Blob downloads in flight per image.
    let parallelBlobs: Int
    /// Copy referrers and cosign tag artifacts with each image.
    let referrers: Bool

    /// How far signatures of signatures are followed (a signed SBOM of a signed image is 2).
    static let referrerDepth = 3

    public init(registry: PullThroughRegistry, parallelBlobs: Int = 4, referrers: Bool = true) {
        self.registry = registry
        self.parallelBlobs = parallelBlobs
        self.referrers = referrers
    }

    /// Seeds one image; `name` labels progress events. Pins the root when `pin` is set.
    /// `revalidate` asks the upstream for a tag's digest now, whatever its TTL (the watch list).
    public func seed(_ repository: RepositoryKey, _ reference: ManifestReference, platforms: PlatformSelection, pin: Bool,
                     revalidate: Bool = false, name: String, progress: @escaping ProgressHandler) async throws(MirrorError) -> Result {
        try await seed(repository, reference, platforms: platforms, pin: pin, revalidate: revalidate, name: name, withReferrers: referrers, progress: progress)
    }

    func seed(_ repository: RepositoryKey, _ reference: ManifestReference, platforms: PlatformSelection, pin: Bool,
              revalidate: Bool = false, name: String, withReferrers: Bool, progress: @escaping ProgressHandler) async throws(MirrorError) -> Result {
        progress(.imageStarted(image: name))
        let root: ManifestContent
        if revalidate, case .tag(let tag) = reference {
            root = try await registry.revalidate(repository, tag)
        } else {
            root = try await registry.manifest(repository, reference)
        }
        let document = try Self.parse(root)
        var bytes = Int64(root.bytes.count)
        var instances = 1, listed = 1
        var images: [ManifestContent] = []
        if document.isIndex {
            let chosen = platforms.select(document.manifests)
            listed = document.manifests.count
            guard !chosen.isEmpty else {
                let offered = document.manifests.compactMap { $0.platform?.description }.joined(separator: ", ")
                throw MirrorError(.manifestUnknown, "\(name) has no instance for \(platforms); it offers \(offered)")
            }
            instances = chosen.count
            for child in chosen {
                let content = try await manifest(repository, child.digest)
                bytes += Int64(content.bytes.count)
                // A nested index (rare) is kept whole: its own children are all copied.
                if try Self.parse(content).isIndex {
                    let nested = try await seed(repository, .digest(child.digest), platforms: .all, pin: false, name: name,
                                                withReferrers: false, progress: { _ in })
                    bytes += nested.bytes - Int64(content.bytes.count)
                } else {
                    images.append(content)
                }
            }
        } else {
            images.append(root)
        }
        var blobs: [Descriptor] = []
        for image in images {
            for blob in try Self.parse(image).blobs where !blobs.contains(where: { $0.digest == blob.digest }) { blobs.append(blob) }
        }
        bytes += try await copyBlobs(blobs, repository: repository, name: name, progress: progress)
        if pin {
            do {
                try await registry.index.setPinned(root.digest, true)
            } catch {
                throw MirrorError(.internal, "pinning \(name): \(error.description)", cause: error)
            }
        }
        var copied: (count: Int, bytes: Int64) = (0, 0)
        if withReferrers {
            let subjects = [root.digest] + images.map(\.digest).filter { $0 != root.digest }
            copied = try await seedReferrers(of: subjects, repository: repository, pin: pin, name: name, progress: progress)
        }
        return Result(digest: root.digest, mediaType: root.mediaType, instances: instances, listed: listed,
                      bytes: bytes + copied.bytes, referrers: copied.count)
    }

    /// Copies what refers to `subjects`: the referrers the mirror lists (the upstream's API or
    /// its tag scheme) and cosign's tags, each with its blobs, then what refers to those, a
    /// few levels deep. A referrer that cannot be fetched fails the image: a site that checks
    /// signatures is better told now than at admission.
    func seedReferrers(of subjects: [Digest], repository: RepositoryKey, pin: Bool, name: String,
                       progress: @escaping ProgressHandler) async throws(MirrorError) -> (count: Int, bytes: Int64) {
        var queue = subjects.map { ($0, 1) }
        var seen = Set(subjects)
        var count = 0
        var bytes: Int64 = 0
        while !queue.isEmpty {
            let (subject, depth) = queue.removeFirst()
            var artifacts: [ManifestContent] = []
            for descriptor in try await registry.referrers(repository, subject) where seen.insert(descriptor.digest).inserted {
                artifacts.append(try await fetch(repository, .digest(descriptor.digest), what: "referrer \(descriptor.digest) of \(subject)"))
            }
            for tag in Referrers.cosignTags(for: subject) {
                do throws(MirrorError) {
                    let artifact = try await registry.manifest(repository, .tag(tag))
                    if seen.insert(artifact.digest).inserted { artifacts.append(artifact) }
                } catch where error.code == .manifestUnknown {
                    continue
                }
            }
            for artifact in artifacts {
                if try Self.parse(artifact).isIndex {
                    let nested = try await seed(repository, .digest(artifact.digest), platforms: .all, pin: false, name: name,
                                                withReferrers: false, progress: { _ in })
                    bytes += nested.bytes
                } else {
                    bytes += Int64(artifact.bytes.count)
                    bytes += try await copyBlobs(try Self.parse(artifact).blobs, repository: repository, name: name, progress: progress)
                }
                if pin {
                    do {
                        try await registry.index.setPinned(artifact.digest, true)
                    } catch {
                        throw MirrorError(.internal, "pinning a referrer of \(name): \(error.description)", cause: error)
                    }
                }
                count += 1
                if depth < Self.referrerDepth { queue.append((artifact.digest, depth + 1)) }
            }
        }
        return (count, bytes)
    }

    /// A manifest by digest, its failure naming what it was for.
    func fetch(_ repository: RepositoryKey, _ reference: ManifestReference, what: String) async throws(MirrorError) -> ManifestContent {
        do {
            return try await registry.manifest(repository, reference)
        } catch {
            throw MirrorError(error.code, "\(what): \(error.message) (seed --no-referrers skips referrers)", retryAfter: error.retryAfter, cause: error)
        }
    }

    /// A child manifest: from the cache when this repository holds it, else through the
    /// pull-through path. Cache reads go around the registry's statistics, so a watch run that
    /// finds everything in place does not pose as clients' hits on the status page.
    func manifest(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> ManifestContent {
        if let cached = try? await registry.local.manifest(repository, .digest(digest)) { return cached }
        return try await registry.manifest(repository, .digest(digest))
    }

    /// Fetches blobs a few at a time, reporting each one's progress. Returns their total size.
    func copyBlobs(_ blobs: [Descriptor], repository: RepositoryKey, name: String, progress: @escaping ProgressHandler) async throws(MirrorError) -> Int64 {
        let registry = self.registry
        let width = parallelBlobs
        do {
            return try await withThrowingTaskGroup(of: Int64.self) { group in
                var total: Int64 = 0
                var next = blobs.makeIterator()
                func start() {
                    guard let blob = next.next() else { return }
                    group.addTask {
                        try await Self.copy(blob, registry: registry, repository: repository, name: name, progress: progress)
                    }
                }
                for _ in 0..<width { start() }
                while let bytes = try await group.next() {
                    total += bytes
                    start()
                }
                return total
            }
        } catch let error as MirrorError {
            throw error
        } catch {
            throw MirrorError(.internal, "\(error)", cause: error)
        }
    }

    static func copy(_ blob: Descriptor, registry: PullThroughRegistry, repository: RepositoryKey, name: String,
                     progress: @escaping ProgressHandler) async throws(MirrorError) -> Int64 {
        let digest = blob.digest
        progress(.blobStarted(image: name, digest: digest, size: blob.size))
        // Stored whole and linked: read around the statistics, as child manifests are.
        if let stored = try? await registry.local.blob(repository, digest),
           let size = try? await LocalRegistry.size(of: stored.reader, digest) {
            progress(.blobFinished(image: name, digest: digest, bytes: size, cached: true))
            return size
        }
        // Only the fill is kept, not a reader of it: a seed waits for the download but streams
        // none of it, so a server that shuts down need not finish it.
        let fill: BlobFill
        do {
            let content = try await registry.blob(repository, digest)
            guard let filling = content.fill else {
                let size = try await LocalRegistry.size(of: content.reader, digest) ?? blob.size
                progress(.blobFinished(image: name, digest: digest, bytes: size, cached: true))
                return size
            }
            fill = filling
        }
        var seen: Int64 = -1
        while true {
            let (sendable, complete) = try await fill.available(beyond: seen)
            if sendable != seen {
                seen = sendable
                progress(.blobProgress(image: name, digest: digest, bytes: sendable, size: fill.snapshot.size ?? blob.size))
            }
            if complete { break }
        }
        // Verified; wait for it to be published too.
        let size = try await fill.completed()
        progress(.blobFinished(image: name, digest: digest, bytes: size, cached: false))
        return size
    }

    static func parse(_ content: ManifestContent) throws(MirrorError) -> ManifestDocument {
        do {
            return try ManifestDocument(bytes: content.bytes, contentType: content.mediaType)
        } catch {
            throw MirrorError(.invalidContent, "manifest \(content.digest): \(error.message)", cause: error)
        }
    }
}
