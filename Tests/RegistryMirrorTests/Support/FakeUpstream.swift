import OCI
import Synchronization
@testable import Upstream

/// An upstream in process: manifests, tags and blobs in memory, every call counted in
/// `calls` (by kind, by `kind repository`, and by `kind reference`). A kind can be made to
/// fail, or held so its calls wait until released: how a test lines up concurrent callers
/// without sleeping.
final class FakeUpstream: UpstreamClient {
    enum Call: String, Sendable { case manifestHead, manifestGet, blobHead, blobGet, blobRange, tags, referrers }

    private struct Manifest {
        let bytes: [UInt8]
        let mediaType: String
    }
    private struct State {
        var manifests: [Digest: Manifest] = [:]
        var blobs: [Digest: [UInt8]] = [:]
        /// What each repository holds, manifests and blobs alike.
        var holdings: [String: Set<Digest>] = [:]
        var tags: [String: [String: Digest]] = [:]
        var failures: [Call: UpstreamError] = [:]
        var held: Set<Call> = []
        var parked: [Call: [CheckedContinuation<Void, Never>]] = [:]
    }

    let name: String
    let calls = EventCounts()
    private let state = Mutex(State())

    init(name: String = "fake.test") { self.name = name }

    var rateLimitRemaining: Int? { nil }
    var ignoresRanges: Bool { false }

    // MARK: Content

    @discardableResult
    func put(blob bytes: [UInt8], in repositories: String...) -> Digest {
        let digest = DigestHasher.digest(of: bytes)
        state.withLock { s in
            s.blobs[digest] = bytes
            for repository in repositories { s.holdings[repository, default: []].insert(digest) }
        }
        return digest
    }

    @discardableResult
    func put(manifest bytes: [UInt8], mediaType: String, in repository: String, tag: String? = nil) -> Digest {
        let digest = DigestHasher.digest(of: bytes)
        state.withLock { s in
            s.manifests[digest] = Manifest(bytes: bytes, mediaType: mediaType)
            s.holdings[repository, default: []].insert(digest)
            if let tag { s.tags[repository, default: [:]][tag] = digest }
        }
        return digest
    }

    // MARK: Faults and holds

    /// Calls of `kind` fail with `code` until `fail(kind, with: nil)`.
    func fail(_ kind: Call, with code: UpstreamError.Code?) {
        state.withLock { $0.failures[kind] = code.map { UpstreamError($0, "the fake upstream was told to fail \(kind)") } }
    }

    /// Calls of `kind` are counted, then wait until `release(kind)`.
    func hold(_ kind: Call) { state.withLock { _ = $0.held.insert(kind) } }

    func release(_ kind: Call) {
        let parked = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.held.remove(kind)
            return s.parked.removeValue(forKey: kind) ?? []
        }
        for continuation in parked { continuation.resume() }
    }

    /// Counts the call, waits while its kind is held, then throws its failure if any.
    private func enter(_ kind: Call, _ repository: RepositoryName, _ reference: String) async throws(UpstreamError) {
        calls.add(kind.rawValue)
        calls.add("\(kind.rawValue) \(repository.value)")
        calls.add("\(kind.rawValue) \(reference)")
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let parked = state.withLock { s -> Bool in
                guard s.held.contains(kind) else { return false }
                s.parked[kind, default: []].append(continuation)
                return true
            }
            if !parked { continuation.resume() }
        }
        if let failure = state.withLock({ $0.failures[kind] }) { throw failure }
    }

    private func holds(_ repository: RepositoryName, _ digest: Digest) -> Bool {
        state.withLock { $0.holdings[repository.value]?.contains(digest) ?? false }
    }

    // MARK: UpstreamClient

    func manifest(_ repository: RepositoryName, _ reference: ManifestReference, head: Bool) async throws(UpstreamError) -> UpstreamManifest {
        try await enter(head ? .manifestHead : .manifestGet, repository, "\(reference)")
        let found = state.withLock { s -> (Digest, Manifest)? in
            let digest: Digest?
            switch reference {
            case .tag(let tag): digest = s.tags[repository.value]?[tag.value]
            case .digest(let wanted): digest = s.holdings[repository.value]?.contains(wanted) == true ? wanted : nil
            }
            return digest.flatMap { d in s.manifests[d].map { (d, $0) } }
        }
        guard let (digest, manifest) = found else { throw UpstreamError(.notFound, "\(repository):\(reference) is not on the fake") }
        return UpstreamManifest(digest: digest, mediaType: manifest.mediaType, size: Int64(manifest.bytes.count), bytes: head ? nil : manifest.bytes)
    }

    func blobSize(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> Int64? {
        try await enter(.blobHead, repository, "\(digest)")
        guard holds(repository, digest) else { return nil }
        return state.withLock { $0.blobs[digest].map { Int64($0.count) } }
    }

    func fetchBlob(_ repository: RepositoryName, _ digest: Digest, sink: any TransferSink, from offset: Int64) async throws(UpstreamError) -> ResponseHead {
        try await enter(.blobGet, repository, "\(digest)")
        guard holds(repository, digest), let bytes = state.withLock({ $0.blobs[digest] }) else {
            throw UpstreamError(.notFound, "\(repository)@\(digest) is not on the fake")
        }
        let body = Array(bytes.dropFirst(Int(offset)))
        let head = ResponseHead(status: 200, headers: [("content-length", "\(body.count)")])
        guard sink.head(head) else { return head }
        do {
            try body.withUnsafeBytes { try sink.body($0) }
        } catch {
            throw UpstreamError(.unavailable, "the sink refused the body: \(error)")
        }
        return head
    }

    func fetchBlobRange(_ repository: RepositoryName, _ digest: Digest, range: String, sink: any TransferSink) async throws(UpstreamError) -> ResponseHead {
        try await enter(.blobRange, repository, "\(digest)")
        throw UpstreamError(.unavailable, "the fake serves no ranges")
    }

    func tags(_ repository: RepositoryName, maxPages: Int) async throws(UpstreamError) -> [String] {
        try await enter(.tags, repository, "")
        return state.withLock { Array(($0.tags[repository.value] ?? [:]).keys) }
    }

    func referrers(_ repository: RepositoryName, _ digest: Digest) async throws(UpstreamError) -> [UInt8]? {
        try await enter(.referrers, repository, "\(digest)")
        return nil
    }
}
