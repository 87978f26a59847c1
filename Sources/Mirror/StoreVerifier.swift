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

    let store: FileSystemStore
    let index: any MetadataStore

    public init(store: FileSystemStore, index: any MetadataStore) {
        self.store = store
        self.index = index
    }

    public func run(repair: Bool) async throws -> Report {
        var report = Report()
        let recorded = Dictionary(try await index.allBlobs().map { ($0.digest, $0.size) }, uniquingKeysWith: { a, _ in a })
        for digest in try store.allDigests() {
            report.checked += 1
            let path = store.path(of: digest)
            var problem: String?
            do {
                let (actual, size) = try Self.hash(path, algorithm: digest.algorithm)
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
                try store.delete(digest)
                report.removed.append(digest)
            }
        }
        report.missing = recorded.keys.filter { store.size(of: $0) == nil && !report.removed.contains($0) }.sorted()
        if repair {
            // The index then matches the store; a pull-through fill records them again.
            try await index.forgetBlobs(report.removed + report.missing)
        }
        return report
    }

    static func hash(_ path: String, algorithm: Digest.Algorithm) throws -> (Digest, Int64) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw StoreError(.io, "cannot open \(path)") }
        defer { try? handle.close() }
        var hasher = DigestHasher(algorithm)
        var size: Int64 = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            chunk.withUnsafeBytes { hasher.update($0) }
            size += Int64(chunk.count)
        }
        return (hasher.finalize(), size)
    }
}
