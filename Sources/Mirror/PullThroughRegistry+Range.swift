import OCI
import Upstream

// Lazy pulling (issue 13): stargz, SOCI and zstd:chunked clients read a few ranges of a
// layer, often its tail first, and start the container. A range of a blob the mirror has
// not fetched is asked of the upstream at once, while the one download of the whole blob
// starts (or goes on) beside it.
extension PullThroughRegistry {
    /// A blob for a request with a `Range`.
    ///
    /// - Cached: the stored blob; the route cuts the range from it (several ranges: a 200).
    /// - Downloading, and the download has reached where a single range starts: the fill,
    ///   which sends it as the bytes arrive (verified, like any reader of a fill).
    /// - Otherwise (not cached, or the download is behind the range, or several ranges): the
    ///   whole-blob download is started or joined, and the upstream is asked for the range
    ///   itself. Its 206 is relayed as it comes and never stored. An upstream that answers
    ///   anything else (200: no range support; 416; an error) leaves the fill to answer, as
    ///   before; one that answered 200 is not asked for ranges again.
    ///
    /// A Range on a download whose size is still unknown (a chunked upstream, and no cached
    /// manifest names it) waits up to `rangeWaitForSize` for the download to end, since a
    /// range needs the size; then it is a 503 with `Retry-After`.
    public func blob(_ repository: RepositoryKey, _ digest: Digest, range: RangeRequest?) async throws(MirrorError) -> BlobContent {
        let content = try await blob(repository, digest)
        guard let range, let fill = content.fill else { return content }
        if let upstream = upstream(for: repository), !upstream.ignoresRanges, !Self.fillHasReached(range, fill.snapshot),
           let relayed = await upstreamRange(repository, digest, range: range, upstream: upstream) {
            return BlobContent(reader: relayed, cacheResult: .miss, relayedRange: relayed.relayed, holding: content) { sent in
                relayed.close()
                content.finished(sent: sent)
            }
        }
        if try await fill.size() == nil, try await fill.completedSize(within: Self.rangeWaitForSize) == nil {
            throw MirrorError(.upstreamUnavailable, "\(digest) is still downloading and its size is not known yet; retry", retryAfter: 5)
        }
        return content
    }

    /// How long a Range for a blob of unknown size (a chunked upstream) waits for its download.
    static var rangeWaitForSize: Duration { .seconds(20) }

    /// The upstream's 206 for `range`, or nil when it answered anything else.
    func upstreamRange(_ repository: RepositoryKey, _ digest: Digest, range: RangeRequest, upstream: any UpstreamClient) async -> UpstreamRange? {
        let relay = RangeRelay()
        // Unstructured, because the transfer outlives this call: it feeds the response body.
        // It ends with the transfer, which `close()` stops when the response is over.
        Task {
            do {
                _ = try await upstream.fetchBlobRange(repository.name, digest, range: range.description, sink: relay)
                relay.finish(.success(()))
            } catch {
                relay.finish(.failure(Self.map(error, upstream: upstream, what: "\(repository)@\(digest) \(range)", unknown: .blobUnknown)))
            }
        }
        guard let head = await relay.acceptedHead() else {
            relay.close()
            logger.debug("the upstream did not answer a range with 206; serving it from the download",
                         metadata: ["oci.repository": "\(repository)", "oci.digest": "\(digest)", "range": "\(range)"])
            return nil
        }
        logger.debug("serving a range from the upstream while the blob downloads",
                     metadata: ["oci.repository": "\(repository)", "oci.digest": "\(digest)", "range": "\(range)", "cache.result": "range"])
        return UpstreamRange(head: head, relay: relay)
    }

    /// Whether a running download already holds where a single range starts, so it can send
    /// the range as soon as (or sooner than) the upstream could.
    static func fillHasReached(_ range: RangeRequest, _ snapshot: (size: Int64?, written: Int64, outcome: BlobFill.Outcome)) -> Bool {
        guard !range.isMultiple, let start = range.specs[0].start(size: snapshot.size) else { return false }
        if case .done = snapshot.outcome { return true }
        return start < snapshot.written
    }
}
