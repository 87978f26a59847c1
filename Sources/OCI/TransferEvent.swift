/// What a long copy (seed, export, import) reports as it goes, for the CLI's progress
/// display. Events may arrive from several threads at once.
///
/// It lives here, below both of its producers (`Mirror`'s `Seeder` and `Bundles`), so that
/// neither of those depends on the other; it is a plain value and does no I/O.
public enum TransferEvent: Sendable {
    case imageStarted(image: String)
    /// `size` is nil until the upstream says.
    case blobStarted(image: String, digest: Digest, size: Int64?)
    /// Total bytes of the blob copied so far.
    case blobProgress(image: String, digest: Digest, bytes: Int64, size: Int64?)
    /// `cached`: nothing was copied, the blob was already there.
    case blobFinished(image: String, digest: Digest, bytes: Int64, cached: Bool)
    /// `error` is nil on success.
    case imageFinished(image: String, error: String?)
}

/// Receives `TransferEvent`s; must be cheap and thread-safe.
public typealias ProgressHandler = @Sendable (TransferEvent) -> Void
