import Foundation
import OCI
import Synchronization
import Upstream

extension PullThroughRegistry {
    /// Referrers of `digest` in `repository`: always an answer, never "unsupported".
    ///
    /// The upstream's referrers API when it has one; else the referrers tag scheme, the
    /// `sha256-<hex>` index on the same repository, fetched like any tag (TTL, revalidation,
    /// stale-if-error). Either way joined with what the cache holds, so a referrer seeded or
    /// imported still shows. When the upstream fails, the last answer (or the cache alone) is
    /// served; only a denial is an error.
    public func referrers(_ repository: RepositoryKey, _ digest: Digest) async throws(MirrorError) -> [Descriptor] {
        try admit(repository)
        if let upstream = upstream(for: repository), upstream.forwardsClientCredentials, !accessRemembered(repository, upstream: upstream) {
            // Nothing cached is listed to a client the upstream has not let read the repository.
            do throws(MirrorError) {
                try await checkAccess(repository, .manifest(.digest(digest)), upstream: upstream)
            } catch where error.code == .manifestUnknown {
                return []
            }
        }
        let cached = try await local.referrers(repository, digest)
        guard let upstream = upstream(for: repository) else { return cached }
        let key = "\(repository)@\(digest)"
        do throws(MirrorError) {
            let remote = try await upstreamReferrers(repository, digest, upstream: upstream)
            referrerCache[key] = remote
            return Referrers.merge(remote, cached)
        } catch where error.isUpstreamFailure || error.code == .invalidContent {
            logger.warning("serving cached referrers: the upstream failed", metadata: [
                "oci.repository": "\(repository)", "oci.digest": "\(digest)", "cache.result": "stale", "error": "\(error.message)"])
            return Referrers.merge(referrerCache[key] ?? [], cached)
        }
    }

    /// The upstream's own list: its referrers API, or the tag scheme when it has none.
    func upstreamReferrers(_ repository: RepositoryKey, _ digest: Digest, upstream: any UpstreamClient) async throws(MirrorError) -> [Descriptor] {
        let bytes: [UInt8]?
        do {
            bytes = try await upstream.referrers(repository.name, digest)
        } catch {
            throw Self.map(error, upstream: upstream, what: "referrers of \(repository)@\(digest)", unknown: .manifestUnknown)
        }
        if let bytes {
            guard let index = try? JSONDecoder().decode(ImageIndex.self, from: Data(bytes)) else {
                throw MirrorError(.invalidContent, "\(upstream.name) sent an unreadable referrers index for \(repository)@\(digest)")
            }
            return index.manifests
        }
        // No referrers API (distribution 2.8, most mirrors of old): the tag scheme.
        let content: ManifestContent
        do throws(MirrorError) {
            content = try await manifest(repository, .tag(Referrers.schemeTag(for: digest)))
        } catch where error.code == .manifestUnknown {
            return []
        }
        guard MediaType.isIndex(content.mediaType),
              let document = try? ManifestDocument(bytes: content.bytes, contentType: content.mediaType) else { return [] }
        return document.manifests
    }
}

/// The last referrers answers per (repository, subject), bounded in entries and forgotten
/// oldest first: keys come from request paths, so an unbounded map is a memory leak any
/// client can drive.
final class ReferrerCache: Sendable {
    private struct State {
        var entries: [String: [Descriptor]] = [:]
        var order: [String] = []
        var head = 0
    }
    private let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = max(1, capacity) }

    var count: Int { state.withLock { $0.entries.count } }

    subscript(key: String) -> [Descriptor]? {
        get { state.withLock { $0.entries[key] } }
        set {
            state.withLock { s in
                guard let newValue else {
                    s.entries[key] = nil
                    return
                }
                if s.entries.updateValue(newValue, forKey: key) == nil { s.order.append(key) }
                while s.entries.count > capacity, s.head < s.order.count {
                    s.entries[s.order[s.head]] = nil
                    s.head += 1
                }
                if s.head > 1024, s.head * 2 > s.order.count {
                    s.order.removeFirst(s.head)
                    s.head = 0
                }
            }
        }
    }
}
