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
public struct Seeder: Sendable {
    public struct Result: Sendable {
        public let digest: Digest
        public let mediaType: String
        /// Instances copied / listed, for an index (1/1 for a single image).
        public let instances: Int
        public let listed: Int
        public let bytes: Int64
    }

    let registry: PullThroughRegistry
    /// Blob downloads in flight per image.
    let parallelBlobs: Int

    public init(registry: PullThroughRegistry, parallelBlobs: Int = 4) {
        self.registry = registry
        self.parallelBlobs = parallelBlobs
    }

    /// Seeds one image; `name` labels progress events. Pins the root when `pin` is set.
    public func seed(_ repository: RepositoryKey, _ reference: ManifestReference, platforms: PlatformSelection, pin: Bool,
                     name: String, progress: @escaping ProgressHandler) async throws(MirrorError) -> Result {
        progress(.imageStarted(image: name))
        let root = try await registry.manifest(repository, reference)
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
                let content = try await registry.manifest(repository, .digest(child.digest))
                bytes += Int64(content.bytes.count)
                // A nested index (rare) is kept whole: its own children are all copied.
                if try Self.parse(content).isIndex {
                    let nested = try await seed(repository, .digest(child.digest), platforms: .all, pin: false, name: name, progress: { _ in })
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
                try registry.index.setPinned(root.digest, true)
            } catch {
                throw MirrorError(.internal, "pinning \(name): \(error.message)")
            }
        }
        return Result(digest: root.digest, mediaType: root.mediaType, instances: instances, listed: listed, bytes: bytes)
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
            throw MirrorError(.internal, "\(error)")
        }
    }

    static func copy(_ blob: Descriptor, registry: PullThroughRegistry, repository: RepositoryKey, name: String,
                     progress: @escaping ProgressHandler) async throws(MirrorError) -> Int64 {
        let digest = blob.digest
        progress(.blobStarted(image: name, digest: digest, size: blob.size))
        switch try await registry.blob(repository, digest) {
        case .stored(let file, _):
            progress(.blobFinished(image: name, digest: digest, bytes: file.size, cached: true))
            return file.size
        case .upstreamRange(let range, _):
            // Only a request with a Range gets one; a seed asks for whole blobs.
            range.close()
            throw MirrorError(.internal, "a seed of \(digest) was answered with a range")
        case .filling(let fill, _):
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
    }

    static func parse(_ content: ManifestContent) throws(MirrorError) -> ManifestDocument {
        do {
            return try ManifestDocument(bytes: content.bytes, contentType: content.mediaType)
        } catch {
            throw MirrorError(.invalidContent, "manifest \(content.digest): \(error.message)")
        }
    }
}
