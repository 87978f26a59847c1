import ContentStore
import Foundation
import MetadataIndex
import OCI

/// Re-hashes every stored blob (`registry-mirror verify`) and, with repair, removes the bad
/// ones. A removed blob is fetched again from the upstream on its next request, because the
/// serving path treats a missing file as a miss.
public struct StoreVerifier: Sendable {
    public struct Report: Sendable {
        public var checked = 0
        public var bytes: Int64 = 0
        /// Stored files whose content does not hash to their name, or whose size differs
        /// from the index's.
        public var corrupt: [(digest: Digest, reason: String)] = []
        /// Blobs the index records but the store lacks (with repair: forgotten by the index).
        public var missing: [Digest] = []
        /// Corrupt blobs removed by repair.
        public var removed: [Digest] = []
        public var isClean: Bool { corrupt.isEmpty && missing.isEmpty }
    }

    let store: any BlobStore
    let index: any MetadataStore

    /// `store` is the data directory's or, with `storage.backend: s3`, the bucket.
    public init(store: any BlobStore, index: any MetadataStore) {
        self.store = store
        self.index = index
    }

    public func run(repair: Bool) async throws -> Report {
        var report = Report()
        let recorded = Dictionary(try await index.allBlobs().map { ($0.digest, $0.size) }, uniquingKeysWith: { a, _ in a })
        for digest in try await store.allDigests() {
            report.checked += 1
            var problem: String?
            do {
                let (actual, size) = try await Self.hash(digest, in: store)
                report.bytes += size
                if actual != digest {
                    problem = "content hashes to \(actual)"
                } else if let expected = recorded[digest], expected != size {
                    problem = "file is \(size) bytes, the index says \(expected)"
                }
            } catch {
                problem = "unreadable: \(error)"
            }
            guard let problem else { continue }
            report.corrupt.append((digest, problem))
            if repair {
                try await store.delete(digest)
                report.removed.append(digest)
            }
        }
        var missing: [Digest] = []
        for digest in recorded.keys where !report.removed.contains(digest) {
            if await store.size(of: digest) == nil { missing.append(digest) }
        }
        report.missing = missing.sorted()
        if repair {
            // The index then matches the store; a pull-through fill records them again.
            try await index.forgetBlobs(report.removed + report.missing)
        }
        return report
    }

    /// What a stored blob's bytes hash to, read through the store as a client would get them.
    static func hash(_ digest: Digest, in store: any BlobStore) async throws -> (Digest, Int64) {
        guard let reader = try await store.openBlob(digest) else { throw StoreError(.notFound, "\(digest) is gone") }
        var hasher = DigestHasher(digest.algorithm)
        var size: Int64 = 0
        for try await chunk in reader.chunks(from: 0, length: nil) {
            hasher.update(chunk)
            size += Int64(chunk.count)
        }
        return (hasher.finalize(), size)
    }
}
